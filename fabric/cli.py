"""The ``fabric`` command line: ``fabric demo``, ``fabric key``, ...

Each command is a small function taking parsed arguments; ``main`` wires
them to ``argparse`` sub-commands.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import _core


def cmd_key(args: argparse.Namespace) -> int:
    """Print the content key of a request given as JSON arguments."""
    try:
        call_args = json.loads(args.args) if args.args else []
        call_kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as exc:
        print(f"fabric key: arguments are not valid JSON: {exc}", file=sys.stderr)
        return 2
    request = _core.EvalRequest(args.op, call_args, call_kwargs, version=args.version)
    print(request.key)
    if args.verbose:
        print(request)
        print("identity bytes:", request.identity_bytes().hex())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demonstration (see fabric.demo)."""
    from . import demo

    return demo.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabric",
        description="stream-fabric: content-addressed distributed evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("key", help="print the content key of a request")
    p.add_argument("op", help="operation name")
    p.add_argument("args", nargs="?", help="positional arguments as a JSON array")
    p.add_argument("kwargs", nargs="?", help="keyword arguments as a JSON object")
    p.add_argument("--version", type=int, default=0, help="op version (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the identity bytes")
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("demo", help="run a demonstration of the product")
    p.set_defaults(func=cmd_demo)

    from . import cassette_cli

    cassette_cli.add_parser(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
