"""`pcdsl convert` (circuit file formats, docs/formats.md) and `pcdsl plot` (training curves)."""

from __future__ import annotations

import argparse
import sys

from pcdsl import plot

from .common import EXIT_DIAGNOSTICS, EXIT_OK, EXIT_USAGE


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    convert = sub.add_parser("convert", help="convert a circuit between .pc, .safetensors, .jpc, .psdd, .sdd, .vtree",
                             description="Read any circuit file and write it in the format of OUT's extension "
                             "(.pc, .safetensors, .jpc, .psdd + .vtree, .vtree; .gz for the line formats). "
                             "A .psdd/.sdd/.jpc input uses the .vtree beside it. See docs/formats.md.")
    convert.add_argument("file", metavar="IN")
    convert.add_argument("-o", "--output", required=True, metavar="OUT")
    convert.add_argument("--circuit", metavar="NAME", help="which circuit of a .pc file (default: its first)")
    convert.add_argument("--seed", type=int, default=0, help="for parameters a .pc file leaves out (default 0)")
    convert.set_defaults(handler=run_convert)
    plot.add_command(sub)  # pcdsl plot RUN_DIR... -o curves.png


def run_convert(args: argparse.Namespace) -> int:
    from pcdsl.io.flat import FormatError
    from pcdsl.io.formats import convert

    try:  # a PcdslError goes to main, which reports it as every command does
        written = convert(args.file, args.output, args.circuit, args.seed)
    except (FormatError, KeyError) as exc:
        print(f"pcdsl convert: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    except OSError as exc:
        print(f"pcdsl convert: cannot write '{args.output}': {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_OK
