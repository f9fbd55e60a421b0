"""Entry point of the ``bpr`` console script."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

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


#: Commands after which the process ends at once, without the interpreter's teardown: with
#: torch loaded that teardown took 0.2–0.9 s of a 3 s ``bpr predict`` on this project's
#: machine, and such a command has written and closed its outputs when it returns.
QUICK_EXIT_COMMANDS = frozenset({"predict"})


def run() -> NoReturn:
    """The ``bpr`` console script and ``python -m bpr``: :func:`main`, then exit."""
    status = main()
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in QUICK_EXIT_COMMANDS:
        logging.shutdown()  # flushes and closes log handlers, as a normal exit would
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
