"""The `pcdsl` command.

Exit codes: 0 success, 1 the input has errors (diagnostics printed),
2 usage error, 3 internal error (a bug in pcdsl); 130 interrupted, 141 the reader of
the output went away (a closed pipe, as for commands killed by SIGPIPE).

Each module of this package adds its commands to the parser (``add_parsers``) with a
``handler``; :func:`main` parses, dispatches and turns every failure into an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from pcdsl import __version__
from pcdsl.diagnostics import PcdslError

from . import check, compile, convert, draw, queries, train
from .check import summary
from .common import EXIT_DIAGNOSTICS, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Exit, refused

__all__ = ["EXIT_DIAGNOSTICS", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "main", "summary"]

EXIT_BROKEN_PIPE = 141
# the order commands appear in `pcdsl --help`
_MODULES = (check, draw, compile, queries, train, convert)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pcdsl", description="A compiler and DSL for probabilistic circuits.")
    p.add_argument("--version", action="version", version=f"pcdsl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in _MODULES:
        module.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # --nproc starts workers with these
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except Exit as stop:
        return stop.status
    except PcdslError as exc:  # a refused argument or input, raised anywhere in the command
        return refused(args, exc)
    except KeyboardInterrupt:
        print("pcdsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout stopped (`pcdsl explain --list | head`): not a bug
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 -- a bug, not the user's fault: say so plainly
        print(f"pcdsl: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in pcdsl; please report it with the input that triggered it.", file=sys.stderr)
        if os.environ.get("PCDSL_DEBUG"):
            traceback.print_exc()
        else:
            print("(set PCDSL_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
