"""The volumes to evaluate: rows of the shared data's ``manifest.csv`` and their region groups.

:func:`read_manifest` turns the manifest into :class:`EvalItem` objects (CT, optional label
map, split, body regions); :func:`region_group` sorts a volume into one of
:data:`REGION_GROUPS` for the per-group LMSE (rule: :data:`REGION_GROUP_RULE`).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.paths import shared_data_dir

#: Region groups of the per-group LMSE.
REGION_GROUPS: tuple[str, ...] = ("head-neck", "chest", "abdomen-pelvis", "limbs", "other")
#: How :func:`region_group` picks a volume's group, for the model card.
REGION_GROUP_RULE = (
    "From the manifest body_regions, first match wins: HEAD → head-neck; CHEST without both "
    "ABDOMEN and PELVIS → chest (neck-chest, chest and chest-abdomen scans, whose "
    "landmarks are the lungs); ABDOMEN → abdomen-pelvis; LEG or ARM → limbs (IBSI "
    "crops, also those reaching the hip); PELVIS → abdomen-pelvis; else other."
)


@dataclass(frozen=True)
class EvalItem:
    """One volume to evaluate."""

    name: str
    split: str
    ct_path: Path
    label_path: Path | None
    body_regions: tuple[str, ...]


def read_manifest(manifest: Path) -> list[EvalItem]:
    """Items of the shared data's ``manifest.csv``.

    Parameters
    ----------
    manifest : Path
        CSV with columns ``id``, ``file`` (relative to the CSV's folder), ``split``,
        ``has_labels`` and ``body_regions``; label maps are ``labels/<id>.nii.gz`` beside it.

    Returns
    -------
    list of EvalItem
        One per row, in file order.
    """
    base = manifest.parent
    items = []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            label = base / "labels" / f"{row['id']}.nii.gz"
            has_labels = row.get("has_labels", "").strip().lower() == "true"
            regions = tuple(r for r in row.get("body_regions", "").split(";") if r)
            items.append(EvalItem(
                name=row["id"], split=row.get("split") or "train", ct_path=base / row["file"],
                label_path=label if has_labels else None, body_regions=regions,
            ))
    return items


def region_group(body_regions: Iterable[str]) -> str:
    """Region group of a volume (rule: :data:`REGION_GROUP_RULE`)."""
    r = {x.strip().upper() for x in body_regions}
    if "HEAD" in r:
        return "head-neck"
    if "CHEST" in r and not {"ABDOMEN", "PELVIS"} <= r:
        return "chest"
    if "ABDOMEN" in r:
        return "abdomen-pelvis"
    if r & {"LEG", "ARM"}:
        return "limbs"
    if "PELVIS" in r:
        return "abdomen-pelvis"
    return "other"


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split``, ``--manifest``, ``--markdown`` and ``--weights`` of the per-volume
    benchmarks."""
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="default: ../shared/data/manifest.csv")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--weights", type=Path, default=None,
                        help="model to measure (.pt beside its calibrated .json; default: the"
                             " shipped model)")


def selected_items(args: argparse.Namespace) -> list[EvalItem]:
    """Manifest rows of the split that :func:`add_split_arguments` chose."""
    manifest = args.manifest or shared_data_dir() / "manifest.csv"
    return [i for i in read_manifest(manifest) if args.split in ("all", i.split)]


def emit_report(text: str, args: argparse.Namespace) -> None:
    """Print a benchmark's report and also write it to ``--markdown`` when given."""
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
