"""The ``fabric`` command line: ``fabric demo``, ``fabric key``, ``fabric cassette``,
``fabric serve``, ``fabric status``.

Each command is a small function taking parsed arguments; ``main`` wires
them to ``argparse`` sub-commands. An expected failure (a missing file, bad
JSON, an unknown op, an unreadable cassette) is one line on stderr and exit
status 2, never a traceback; a traceback means a bug in fabric.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from . import _core

__all__ = ["CLIError", "build_parser", "main"]


class CLIError(Exception):
    """An expected command-line failure: printed as one line, exit status 2."""


# What a user's mistake raises, as opposed to a bug in fabric: these end in
# one line and exit status 2. (OSError covers missing files and locked
# cassettes; FabricError every fabric error, ledger errors included.)
_EXPECTED = (CLIError, OSError, ValueError, TypeError, LookupError, ImportError,
             _core.FabricError)


def _json_arg(text: str | None, what: str, kind: type, default: Any) -> Any:
    if not text:
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{what} are not valid JSON ({exc.msg} at column {exc.colno}): "
                       f"{text!r}") from None
    if not isinstance(value, kind):
        raise CLIError(f"{what} must be a JSON {'array' if kind is list else 'object'}, "
                       f"not {type(value).__name__}: {text!r}")
    return value


def _op_version(text: str) -> int | str:
    """``--op-version``: an int when it looks like one, else the string (as
    ``@fabric.op(version="2024-01")`` allows)."""
    try:
        return int(text)
    except ValueError:
        return text


def _find_op(name: str, version: int | str | None) -> Any:
    from .ops import REGISTRY

    found = [o for o in REGISTRY if o.name == name
             and (version is None or o.version == version)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = sorted({o.name for o in REGISTRY})
        raise CLIError(f"op {name!r}"
                       + (f" version {version!r}" if version is not None else "")
                       + " is not registered by the imported modules (registered: "
                       + (", ".join(known) or "none") + ")")
    versions = ", ".join(sorted(repr(o.version) for o in found))
    raise CLIError(f"op {name!r} is registered in several versions ({versions}): "
                   f"choose one with --op-version")


def cmd_key(args: argparse.Namespace) -> int:
    """Print the content key of a request given as JSON arguments."""
    from .ops import Op

    call_args = _json_arg(args.args, "positional arguments", list, [])
    call_kwargs = _json_arg(args.kwargs, "keyword arguments", dict, {})
    version = None if args.op_version is None else _op_version(args.op_version)
    for module in args.imports:
        importlib.import_module(module)
    if args.imports:
        # The registered op fills its version, capabilities, sharing class and
        # stream flag and keeps its ignored keyword arguments out, so the key
        # is the one Python computes for op.request(...).
        request = _find_op(args.op, version).request(*call_args, **call_kwargs)
    else:
        # The same name rules as @fabric.op (validated by building an Op).
        Op(args.op, lambda: None, version=0 if version is None else version,
           capabilities=args.capabilities)
        request = _core.EvalRequest(args.op, call_args, call_kwargs,
                                    version=0 if version is None else version,
                                    required_capabilities=tuple(args.capabilities),
                                    stream=args.stream, sharing=args.sharing)
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
    """The ``fabric`` argument parser with every sub-command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fabric",
        description="stream-fabric: content-addressed distributed evaluation.",
    )
    parser.add_argument("--version", action="version",
                        version=f"stream-fabric {__version__} (key scheme "
                                f"{_core.KEY_SCHEME})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("key", help="print the content key of a request")
    p.add_argument("op", help="operation name")
    p.add_argument("args", nargs="?", help="positional arguments as a JSON array")
    p.add_argument("kwargs", nargs="?", help="keyword arguments as a JSON object")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first and take the op's version, capabilities, "
                        "sharing class, stream flag and ignored keyword arguments from "
                        "its registration (repeatable)")
    p.add_argument("--op-version", "--version", dest="op_version", default=None,
                   metavar="VERSION", help="op version (an int, or a string; default 0, "
                                           "or the registered one with --import)")
    p.add_argument("--capability", dest="capabilities", action="append", default=[],
                   metavar="NAME", help="a capability the op requires (repeatable)")
    p.add_argument("--stream", action="store_true", help="the op is a stream op")
    p.add_argument("--sharing", choices=("pure", "recorded", "uncacheable"), default="pure",
                   help="the op's sharing class (default pure; with --import, the "
                        "registered one)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the identity bytes")
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("demo", help="run a demonstration of the product")
    p.set_defaults(func=cmd_demo)

    from . import cassette_cli

    cassette_cli.add_parser(sub)

    from .node import cli as node_cli

    node_cli.add_parser(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("fabric: interrupted", file=sys.stderr)
        return 130
    except _EXPECTED as exc:
        command = f"fabric {args.command}" if args.command else "fabric"
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            text = f"{exc.strerror}: {exc.filename}"
        name = "" if isinstance(exc, CLIError) else f"{type(exc).__name__}: "
        print(f"{command}: error: {name}{text.splitlines()[0] if text else ''}",
              file=sys.stderr)
        return 2
