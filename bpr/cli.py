"""Entry point of the ``bpr`` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dicom_node.adapt_cli import ADAPT_COMMANDS
from dicom_node.backfill_cli import add_backfill
from dicom_node.cli import NODE_COMMANDS, NODE_ERRORS, describe_error
from model.cli import main as model_main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``bpr`` command; a node set-up error is one line on stderr and exit status 2."""
    try:
        return model_main(argv, extra_commands=(*NODE_COMMANDS, add_backfill, *ADAPT_COMMANDS))
    except NODE_ERRORS as exc:
        print(f"bpr: {describe_error(exc)}", file=sys.stderr)
        return 2
