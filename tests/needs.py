"""What a test needs from outside the repository, and the rule for when it is not there.

Real peers (DCMTK, Orthanc, dciodvfy, PostgreSQL, openssl) and the real CT data beside the
checkout are found here. Where one is missing a test skips with the reason, except when the
environment variable ``CI`` is set (to anything but ``""``, ``0``, ``false`` or ``no``): there
a skipped real-peer test would pass unnoticed, so it fails instead.

Use :func:`require_tool` (or the ``requires_tool`` marker, which calls it before the test runs)
for a program, :func:`missing` for anything else a test cannot run without.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

#: Where each tool comes from, for the skip reason.
PACKAGES = {
    "storescu": "DCMTK (Debian package 'dcmtk')",
    "storescp": "DCMTK (Debian package 'dcmtk')",
    "findscu": "DCMTK (Debian package 'dcmtk')",
    "movescu": "DCMTK (Debian package 'dcmtk')",
    "echoscu": "DCMTK (Debian package 'dcmtk')",
    "Orthanc": "Orthanc (Debian package 'orthanc')",
    "dciodvfy": "dicom3tools (Debian package 'dicom3tools')",
    "initdb": "PostgreSQL (Debian package 'postgresql')",
    "pg_ctl": "PostgreSQL (Debian package 'postgresql')",
    "openssl": "OpenSSL (Debian package 'openssl')",
}
#: Searched after PATH: Debian installs Orthanc in /usr/sbin, often not on a user's PATH.
EXTRA_PATH = "/usr/sbin:/usr/local/sbin"


def in_ci() -> bool:
    """Whether ``CI`` is set: then a missing real peer fails the run instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip the running test for ``reason``, or fail it when :func:`in_ci`."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a real-peer test may not skip)", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """The path of program ``name`` on PATH or in :data:`EXTRA_PATH`, None when absent."""
    return shutil.which(name) or shutil.which(name, path=EXTRA_PATH)


def require_tool(name: str) -> str:
    """The path of program ``name``; :func:`missing` when it is not installed."""
    path = find_tool(name)
    if path is None:
        missing(f"{name} not installed: {PACKAGES.get(name, 'not on PATH')}")
    return path
