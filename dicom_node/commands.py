"""The node's ``bpr`` commands: their arguments, and their work imported only when they run.

``serve`` and ``index`` are done in :mod:`dicom_node.cli`, ``reprocess`` in
:mod:`dicom_node.reprocess_cli`, ``backfill`` in
:mod:`dicom_node.backfill_cli`, ``adapt`` and ``models`` in :mod:`dicom_node.adapt_cli`.
Registering them imports nothing but :mod:`argparse`, so ``bpr predict`` and the other model
commands start without the node's database, network and web libraries.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

SubParsers = argparse._SubParsersAction  # argparse gives the sub-parsers type no public name
#: A command's work: parsed arguments in, exit status out.
Handler = Callable[[argparse.Namespace], int]
#: ``dicom_node.index.SeriesState`` values (a test keeps them equal), for ``--state``.
SERIES_STATES = ("RECEIVING", "QUEUED", "PROCESSING", "DONE", "FAILED", "SKIPPED")


def later(module: str, name: str) -> Handler:
    """The handler ``module.name``, imported when the command runs."""
    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(module), name)
        return int(handler(args))
    return run


def _config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="node configuration (default: ./config.yaml)")


def add_serve(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the DICOM node")
    _config_argument(p)
    p.add_argument("--role", choices=("all", "receiver", "worker"), default="all",
                   help="all: receive and analyze (default); receiver: receive and queue; "
                        "worker: analyze what receivers queued (no DICOM port)")
    p.set_defaults(func=later("dicom_node.cli", "run_serve"))


def add_index(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="list series with original and corrected BodyPartExamined")
    _config_argument(p)
    p.add_argument("--term", help="corrected BodyPartExamined term (e.g. CHEST)")
    p.add_argument("--state", choices=SERIES_STATES)
    p.add_argument("--since", help="study date from (YYYYMMDD)")
    p.add_argument("--until", help="study date to (YYYYMMDD)")
    p.add_argument("--derived", action="store_true", help="include the SR series we wrote")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=later("dicom_node.cli", "run_index"))


def add_reprocess(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reprocess", help="analyze series again (by SeriesInstanceUID)")
    _config_argument(p)
    p.add_argument("series", nargs="*", help="SeriesInstanceUIDs")
    p.add_argument("--failed", action="store_true", help="all FAILED series")
    p.add_argument("--since", help="series received since this date (YYYYMMDD) that another "
                                   "model version than the active one analyzed")
    p.set_defaults(func=later("dicom_node.reprocess_cli", "run_reprocess"))


def add_backfill(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backfill", help="fetch and analyze the series a peer already holds")
    _config_argument(p)
    p.add_argument("--peer", help="AE title of a configured peer (host and port) to fetch from")
    p.add_argument("--since", help="study date from (YYYYMMDD)")
    p.add_argument("--until", help="study date to (YYYYMMDD)")
    p.add_argument("--modality", default="CT")
    p.add_argument("--rate", type=float, default=None,
                   help="series retrieves started per second (default: backfill.rate)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="series retrieved at once (default: backfill.concurrency)")
    p.add_argument("--max-series", type=int, default=None,
                   help="stop after starting this many retrieves (all runs together)")
    p.add_argument("--status", action="store_true", help="report the jobs and stop")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=later("dicom_node.backfill_cli", "run_backfill"))


def add_adapt(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("adapt", help="fine-tune the model on stored or given CT (guarded)")
    p.add_argument("inputs", nargs="*", type=Path,
                   help="NIfTI files, DICOM files or folders, one series each; none: the "
                        "node's analyzed series (--config)")
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="node configuration (default: ./config.yaml); used without inputs")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (required with inputs; default under storage.root/models)")
    p.add_argument("--base", type=Path, default=None,
                   help="with inputs: weights to start from (default: the shipped model)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-validation", action="store_true",
                   help="with inputs: skip the validation LMSE on ../shared/data")
    p.set_defaults(func=later("dicom_node.adapt_cli", "run_adapt"))


def add_models(sub: SubParsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list, activate or roll back model versions")
    _config_argument(p)
    p.add_argument("action", nargs="?", choices=("list", "activate", "rollback"),
                   default="list")
    p.add_argument("version", nargs="?", help="with activate: the version")
    p.add_argument("--force", action="store_true",
                   help="with activate: also a candidate that was not promoted")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=later("dicom_node.adapt_cli", "run_models"))


#: The node's sub-commands, registered on the ``bpr`` parser by :mod:`bpr.cli`.
NODE_COMMANDS = (add_serve, add_index, add_reprocess, add_backfill, add_adapt, add_models)


def node_error_message(exc: Exception) -> str | None:
    """One line for a set-up error of a node command (configuration, database, storage);
    None for any other exception."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.config import ConfigError

    if isinstance(exc, SQLAlchemyError):
        return f"index database error: {exc.__class__.__name__}: {exc.args[0]}"
    if isinstance(exc, ConfigError | OSError):
        # OSError: storage or database folder missing, unwritable, full.
        return str(exc)
    return None
