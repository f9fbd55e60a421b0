"""Fixtures of the fuzz tests: quiet loggers, a capped address space, a sandbox, an index.

All are module-scoped: each fuzz module gets its own sandbox (and working directory) and its
own in-memory index, where rows accumulate like on a long-running node.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.index import Index
from tests.fuzz.properties import ADDRESS_SPACE_HEADROOM, Sandbox, address_space


@pytest.fixture(scope="module")
def quiet_pydicom() -> Iterator[None]:
    """pydicom logs each oddity it meets; pytest would keep gigabytes of them for one test."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def bounded_memory(quiet_pydicom: None) -> Iterator[None]:
    """Cap the address space for the module: hostile sizes fail fast instead of swapping."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    current = address_space()
    if current:
        limit = current + ADDRESS_SPACE_HEADROOM
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def sandbox(bounded_memory: None) -> Iterator[Sandbox]:
    """A private tree on tmpfs when there is one (fsync-heavy storage is 3× faster there)."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix="bpr-fuzz-", dir=parent)).resolve()
    box = Sandbox(base, base / "work", base / "inputs")
    box.work.mkdir()
    box.inputs.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # Any write relative to the working directory lands where the checks look.
        patch.chdir(box.work)
        yield box
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    """One in-memory index for all inputs (rows accumulate like on a long-running node)."""
    made = Index("sqlite://")
    yield made
    made.close()


@pytest.fixture(scope="module")
def quiet_logs() -> Iterator[None]:
    """pynetdicom logs every malformed PDU with a traceback, pydicom every odd value."""
    loggers = [logging.getLogger(name) for name in ("pynetdicom", "pydicom")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
