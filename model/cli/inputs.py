"""How the single-series commands (``bpr crop``, ``bpr align``) read their inputs."""

from __future__ import annotations

import sys
from pathlib import Path

from model.reading.load import load_volumes
from model.reading.volume import CTInputError, CTVolume


def one_series(path: Path) -> CTVolume:
    """The one CT series under ``path``; unreadable files only warn on stderr.

    Parameters
    ----------
    path : Path
        NIfTI file, DICOM file or folder.

    Returns
    -------
    CTVolume

    Raises
    ------
    CTInputError
        If ``path`` cannot be read or holds no or several CT series.
    """
    loaded = load_volumes(path)
    for err in loaded.errors:
        print(f"warning: {err}", file=sys.stderr)
    if len(loaded.volumes) != 1:
        raise CTInputError(f"{path}: expected one CT series, found {len(loaded.volumes)}")
    return loaded.volumes[0]
