"""The ``ragrt`` command line: one subcommand per stage, each a module of ``ragrt.cli``.

Subcommand modules import their heavy dependencies inside their handlers, so ``ragrt --help``
stays instant. Every :class:`~ragrt.errors.RagrtError` becomes ``error: <message>`` on stderr
and exit code 2 - never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import import_module

from ragrt import __version__
from ragrt.errors import RagrtError

# module name under ragrt.cli, in the order shown by --help
COMMANDS = ("export", "index", "ask", "eval", "triton", "serve", "bench", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragrt",
        description="ragrt: fast retrieval-augmented generation on ONNX Runtime, FAISS and Triton.",
    )
    parser.add_argument("--version", action="version", version=f"ragrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = import_module(f"ragrt.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ragrt.cli.{name}":
                continue  # command not part of this build
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except RagrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    try:
        sys.stdout.flush()  # a reader that went away shows up here, too
    except BrokenPipeError:
        return _closed_pipe()
    return int(rc or 0)


def _closed_pipe() -> int:
    """``ragrt index info | head``: the reader stopped reading. Not an error of ours; exit
    quietly, as ``cat`` does (status 141 = 128 + SIGPIPE), without Python's flush-at-exit
    complaining about the same closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in tests)
        pass
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
