"""Which model the node uses: its base model, the candidates adaptation made, the active one.

The ``model_versions`` table (:class:`~dicom_node.index.ModelVersion`) holds one row per
model. The configured base model (``series.model_weights``, or the shipped one) is recorded
on first use and is active until an adaptation run promotes a candidate; a configured base
model the table does not know yet becomes active at once, so an operator's change of
``series.model_weights`` always takes effect. Candidate weights are copied under
``storage.root/models/<version>/`` before their row can become active, atomically (a
temporary folder renamed into place), so an active row never points at half a file.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.index import Index, ModelVersion, Series, SeriesState
from dicom_node.storage import FileStore, fsync_dir
from model.api import weights_version

#: Folder under ``storage.root`` that holds installed model weights and adaptation runs.
MODELS_FOLDER = "models"
#: Versions name folders, so only what our own exporter writes is accepted.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelVersionError(ValueError):
    """A version is unknown, not installable, or cannot be activated."""


def record_base(index: Index, config: NodeConfig) -> str:
    """Record the configured base model (once) and return its version.

    Raises
    ------
    OSError, ValueError
        If the configured weights' JSON is unreadable.
    """
    version = weights_version(config.series.model_weights)
    try:
        with index.session() as session:
            if session.scalar(select(ModelVersion.id).where(ModelVersion.version == version)):
                return version
            session.execute(update(ModelVersion).values(active=False))
            session.add(ModelVersion(version=version, parent_version=None,
                                     created_at=time.time(), weights_path=None, promoted=True,
                                     reason="configured base model", active=True))
    except IntegrityError:
        pass  # another process recorded it first
    return version


def active_row(session: Session) -> ModelVersion | None:
    """The active model's row (None before the base model is recorded)."""
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))
                           .order_by(ModelVersion.id.desc())).first()


def active_weights(index: Index, store: FileStore, config: NodeConfig, base: str
                   ) -> tuple[str, Path | None]:
    """Version and weights of the active model (weights None: the shipped model); ``base``
    is the version :func:`record_base` returned."""
    with index.session() as session:
        row = active_row(session)
        if row is None or row.weights_path is None:
            return (row.version if row else base), config.series.model_weights
        return row.version, store.absolute(row.weights_path)


def activate(session: Session, version: str, *, force: bool = False) -> ModelVersion:
    """Make ``version`` the active model.

    Raises
    ------
    ModelVersionError
        If it is unknown, was not promoted (unless ``force``), or its weights are missing.
    """
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise ModelVersionError(f"no model version {version!r} in the index")
    if not row.promoted and not force:
        raise ModelVersionError(f"{version} was not promoted ({row.reason}); use --force")
    if row.weights_path is None and row.parent_version is not None:
        raise ModelVersionError(f"{version} has no installed weights")
    session.execute(update(ModelVersion).values(active=False))
    row.active = True
    return row


def rollback(session: Session) -> ModelVersion:
    """Activate the parent of the active model.

    Raises
    ------
    ModelVersionError
        If the active model has no parent (the base model).
    """
    row = active_row(session)
    if row is None or row.parent_version is None:
        raise ModelVersionError("the active model is the base model: nothing to roll back to")
    return activate(session, row.parent_version, force=True)


def install_weights(store: FileStore, weights: Path, version: str) -> str:
    """Copy ``weights`` and its JSON to ``models/<version>/`` under the storage root.

    Returns
    -------
    str
        The ``.pt`` path relative to the storage root.
    """
    if not _VERSION.match(version):
        raise ModelVersionError(f"{version!r} is not a model version")
    folder = store.root / MODELS_FOLDER
    final = folder / version
    relative = f"{MODELS_FOLDER}/{version}/{weights.name}"
    if final.is_dir():
        return relative
    partial = folder / f".{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for source in (weights, weights.with_suffix(".json")):
        target = partial / source.name
        shutil.copyfile(source, target)
        with target.open("rb") as fh:
            os.fsync(fh.fileno())
    os.replace(partial, final)
    fsync_dir(folder)
    return relative


def analyses_since_last_run(session: Session) -> int:
    """Series analyzed since the last adaptation run (all of them before the first)."""
    last = session.scalar(select(func.max(ModelVersion.created_at))
                          .where(ModelVersion.parent_version.is_not(None))) or 0.0
    return int(session.scalar(
        select(func.count(Series.id)).where(Series.state == SeriesState.DONE,
                                            Series.is_derived.is_(False),
                                            Series.analyzed_at > last)) or 0)

