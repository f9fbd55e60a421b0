"""The model's ``bpr`` commands: train, predict, evaluate, crop and align.

:func:`build_parser` composes the model's commands, one module each (:mod:`model.cli.train`,
:mod:`model.cli.predict`, :mod:`model.cli.evaluate`, :mod:`model.cli.crop`,
:mod:`model.cli.align`), with any extra commands (the node adds serve, index and
reprocess, composed in :mod:`bpr.cli`); :func:`main` parses the arguments and runs the
chosen command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from model import __version__
from model.cli.align import add_align_command
from model.cli.crop import add_crop_command
from model.cli.evaluate import add_evaluate_command
from model.cli.predict import add_predict_command
from model.cli.train import add_train_command

#: What ``bpr --help`` says above the commands.
DESCRIPTION = "Body part regression for CT: score every slice, train and evaluate the model."

#: Adds one sub-command to the ``bpr`` parser (the node adds serve, index and reprocess).
CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: The model's own commands, in the order ``bpr --help`` lists them.
MODEL_COMMANDS: tuple[CommandRegistrar, ...] = (
    add_train_command,
    add_predict_command,
    add_evaluate_command,
    add_crop_command,
    add_align_command,
)


def build_parser(extra_commands: Sequence[CommandRegistrar] = ()) -> argparse.ArgumentParser:
    """The ``bpr`` parser with the model's commands and any ``extra_commands``.

    Parameters
    ----------
    extra_commands : sequence of CommandRegistrar
        Functions that each add one sub-command, after the model's.

    Returns
    -------
    argparse.ArgumentParser
        Every sub-command sets ``func``, its handler, which returns the exit status.
    """
    parser = argparse.ArgumentParser(prog="bpr", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"bpr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (*MODEL_COMMANDS, *extra_commands):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None,
         extra_commands: Sequence[CommandRegistrar] = ()) -> int:
    """Run one ``bpr`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default: ``sys.argv[1:]``.
    extra_commands : sequence of CommandRegistrar
        As for :func:`build_parser`.

    Returns
    -------
    int
        The command's exit status.
    """
    args = build_parser(extra_commands).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
