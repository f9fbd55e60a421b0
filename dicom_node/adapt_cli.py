"""The adaptation commands of ``bpr``: ``adapt`` and ``models``.

``bpr adapt`` fine-tunes the active model on the node's analyzed series (``--config``, the
default) or on CT given as inputs (NIfTI files, DICOM files or folders, one series each), and
judges the candidate on a patient hold-out (:mod:`dicom_node.adaptation`). ``bpr models``
lists the model versions of the index, activates one or rolls back to the parent of the
active one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from datetime import UTC
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from dicom_node.adaptation import limit_this_process, run_adaptation
from dicom_node.cli import load_node_config, print_table
from dicom_node.config import ConfigError
from dicom_node.index import Index, ModelVersion
from dicom_node.model_versions import ModelVersionError, activate, record_base, rollback
from dicom_node.storage import FileStore
from model.api import AdaptError, AdaptReport, AdaptSeries, AdaptSettings, adapt_model


def run_adapt(args: argparse.Namespace) -> int:
    try:
        report = _adapt_inputs(args) if args.inputs else _adapt_node(args)
    except AdaptError as exc:
        print(f"bpr adapt: {exc}", file=sys.stderr)
        return 2
    print(f"candidate {report.version} (from {report.parent_version}) on {report.n_series} "
          f"series of {report.n_patients} patients: "
          f"{'promoted' if report.promoted else 'not promoted'}: {report.reason}")
    print(f"report: {report.run_dir / 'report.json'}")
    return 0


def _adapt_node(args: argparse.Namespace) -> AdaptReport:
    config = load_node_config(args.config)
    applied = limit_this_process(config.adaptation)
    print(f"bpr adapt: {applied}", flush=True)
    index = Index(config.database.url)
    store = FileStore(config.storage.root, config.storage.min_free_bytes)
    try:
        return run_adaptation(index, store, config, out_dir=args.out, steps=args.steps,
                              threads=args.threads)
    finally:
        index.close()


def _adapt_inputs(args: argparse.Namespace) -> AdaptReport:
    if args.out is None:
        raise ConfigError("bpr adapt with inputs needs --out RUN")
    defaults = AdaptSettings()
    settings = AdaptSettings(steps=args.steps or defaults.steps,
                             threads=args.threads or defaults.threads,
                             validate_on_shared_data=not args.no_validation)
    return adapt_model([_input_series(p) for p in args.inputs], args.out,
                       base_weights=args.base, settings=settings, progress=sys.stderr.isatty())


def _input_series(path: Path) -> AdaptSeries:
    """One input as one series; its patient is the DICOM PatientID, else the input itself."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    patient = str(path)
    for f in files[:1]:
        try:
            header = dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"])
        except (InvalidDicomError, OSError, ValueError):
            break
        patient = str(header.get("PatientID", "")) or patient
    return AdaptSeries(key=str(path), patient=patient, paths=(path,))


def run_models(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    index = Index(config.database.url)
    record_base(index, config)
    try:
        with index.session() as session:
            if args.action == "activate":
                if not args.version:
                    print("bpr models activate: name a version", file=sys.stderr)
                    return 2
                print(f"active: {activate(session, args.version, force=args.force).version}")
            elif args.action == "rollback":
                print(f"active: {rollback(session).version}")
            else:
                rows = [_row(m) for m in session.scalars(select(ModelVersion)
                                                         .order_by(ModelVersion.created_at))]
                _print_models(rows, args.format)
    except ModelVersionError as exc:
        print(f"bpr models: {exc}", file=sys.stderr)
        return 1
    finally:
        index.close()
    return 0


def _row(m: ModelVersion) -> dict[str, object]:
    return {"version": m.version, "parent": m.parent_version,
            "created": dt.datetime.fromtimestamp(m.created_at, UTC).strftime(
                "%Y-%m-%d %H:%M"),
            "series": m.n_series, "patients": m.n_patients, "promoted": m.promoted,
            "active": m.active, "reason": m.reason,
            "guards": json.loads(m.guard_json) if m.guard_json else None}



def _print_models(rows: list[dict[str, object]], fmt: str) -> None:
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=1, allow_nan=False)
        print()
        return
    print_table([{**r, "active": "*" if r["active"] else ""} for r in rows],
                ("active", "version", "parent", "created", "series", "patients", "promoted",
                 "reason"))
