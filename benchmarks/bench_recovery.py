"""Start-up storage recovery time against the number of stored files.

Run: ``python -m benchmarks.bench_recovery [--files 100000] [--days 50]``

Builds a store of ``--files`` small files spread over ``--days`` day folders, each with its
index row, then times, in the same run:

- the baseline: walk every file of the store for ``.part`` leftovers and for files without
  an index row, against the set of all indexed paths (what the node did before the
  recovery watermark);
- :func:`dicom_node.recovery.recover_storage` with no watermark (first start: every day
  folder is scanned, each against its own range of the index);
- the same after a clean run (watermark present, one day folder written since).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import insert, select

from dicom_node.config import config_from_dict
from dicom_node.index import Instance, Series, Study
from dicom_node.recovery import recover_storage
from dicom_node.server import Node

DAY_S = 24 * 3600.0
T = TypeVar("T")


def _populate(node: Node, n_files: int, n_days: int) -> list[Path]:
    with node.index.session() as session:
        study = Study(study_instance_uid="1.2.3", patient_id="", patient_name="")
        series = Series(series_instance_uid="1.2.3.4", study=study, modality="CT",
                        first_received_at=time.time(), last_received_at=time.time())
        session.add(series)
        session.flush()
        series_pk = series.id
    now = time.time()
    folders, rows = [], []
    for day in range(n_days):
        relative_folder = f"2025/{1 + day // 28:02d}/{1 + day % 28:02d}"
        folder = node.store.root / relative_folder
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder)
        for _ in range(n_files // n_days):
            name = f"{relative_folder}/{uuid.uuid4().hex}.dcm"
            (node.store.root / name).write_bytes(b"x")
            rows.append({"sop_instance_uid": f"2.25.{uuid.uuid4().int}", "sop_class_uid": "1.2",
                         "series_pk": series_pk, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                         "path": name, "size_bytes": 1, "received_at": now,
                         "source_ae": ""})
    with node.index.session() as session:
        session.execute(insert(Instance), rows)
    for folder in folders:  # written on earlier days
        os.utime(folder, (now - 3 * DAY_S, now - 3 * DAY_S))
    return folders


def _baseline(node: Node) -> int:
    """The former full scan: every file, against every indexed path."""
    root = node.store.root
    for path in root.rglob("*.part"):
        path.unlink(missing_ok=True)
    with node.index.session() as session:
        known = set(session.scalars(select(Instance.path)))
    return sum(1 for path in root.rglob("*.dcm")
               if path.relative_to(root).as_posix() not in known)


def _timed(call: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    result = call()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bpr-recovery-") as tmp:
        base = Path(tmp)
        config = config_from_dict({"storage": {"root": "storage", "min_free_bytes": 0},
                                   "database": {"url": f"sqlite:///{base / 'index.sqlite'}"},
                                   "peers": [{"ae_title": "PACS"}]}, base)
        node = Node(config)
        try:
            t0 = time.perf_counter()
            folders = _populate(node, args.files, args.days)
            print(f"store: {args.files:,} files in {args.days} day folders "
                  f"(built in {time.perf_counter() - t0:.0f} s)")
            baseline_s, orphans = _timed(lambda: _baseline(node))
            first_s, first = _timed(lambda: recover_storage(node.index, node.store, node.config))
            (folders[-1] / f"{uuid.uuid4().hex}.dcm.part").write_bytes(b"x")  # today's write
            later_s, later = _timed(lambda: recover_storage(node.index, node.store, node.config))
        finally:
            node.index.close()
    assert orphans == 0
    print(f"baseline full walk, all paths in memory: {baseline_s:8.3f} s")
    print(f"recover_storage, first start:            {first_s:8.3f} s  "
          f"({first['folders_scanned']} folders, {baseline_s / first_s:.1f}× the baseline speed)")
    print(f"recover_storage, after a clean run:      {later_s:8.3f} s  "
          f"({later['folders_scanned']} folder, {baseline_s / later_s:.0f}× the baseline speed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
