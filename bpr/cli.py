"""Entry point of the ``bpr`` console script."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dicom_node.commands import NODE_COMMANDS, node_error_message
from model.cli import main as model_main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``bpr`` command; a node set-up error is one line on stderr and exit status 2."""
    try:
        return model_main(argv, extra_commands=NODE_COMMANDS)
    except Exception as exc:
        message = node_error_message(exc)
        if message is None:
            raise
        print(f"bpr: {message}", file=sys.stderr)
        return 2
