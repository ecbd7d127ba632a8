"""``fabric cassette stats|verify|dump|compact PATH``: tools for cassette ledgers.

A progress bar is drawn on stderr while a long ledger replays, only when
stderr is a terminal.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import time
from typing import Literal

from . import _core


class ProgressBar:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = min(width, width * done // total)
        rate = done / max(time.monotonic() - self.started, 1e-9) / 1e6
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done // total:3d}% {rate:7.1f} MB/s"
        )
        self.stream.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _open(path: str, recover: Literal["strict", "salvage"] = "strict",
          label: str = "replaying", checkpoint: bool = True):
    bar = ProgressBar(f"{label} {os.path.basename(path)}")
    try:
        return _core.EvalCassette.from_ledger(path, recover=recover, progress=bar,
                                              checkpoint=checkpoint)
    finally:
        bar.done()


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the ledger's statistics: a summary, or every figure as JSON."""
    with _open(args.path, args.recover) as c:
        stats = c.stats()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    ck = stats["checkpoint"]
    writers = stats["writers"]
    lines = [
        f"{args.path}: ledger version {stats['version']}, created by {stats['creator']!r}",
        f"  {stats['keys']} keys in {stats['records']} records, {stats['bytes']} bytes; "
        f"{stats['duplicates']} duplicates, {stats['tombstones']} tombstones",
        f"  checkpoint: {ck['state']}"
        + (f", covers {ck['covered_bytes']} bytes and {ck['keys']} keys; "
           f"{stats['open_replayed']} records replayed after it" if ck["state"] == "used"
           else f"; {stats['open_replayed']} records replayed"),
        "  writers now: " + ("unknown (no /proc/locks)" if writers is None else
                             f"{writers} handle(s) open for writing"),
        f"  torn tail: {stats['torn_bytes']} bytes; salvage skipped "
        f"{stats['salvage_skips']} regions ({stats['salvage_bytes']} bytes)",
        f"  opened in {stats['open_seconds'] * 1e3:.1f} ms, index {stats['index_bytes']} bytes",
    ]
    print("\n".join(lines))
    return 0


def to_json(value):
    """value as JSON where it maps one to one; tagged otherwise: bytes
    {"$bytes": base64}, a set {"$set": [...]}, a map with keys that are not
    strings {"$map": [[k, v], ...]}, a float that JSON lacks {"$float":
    "nan"|"inf"|"-inf"}, anything else {"$repr": repr(value)}."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"$set": [to_json(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    return {"$repr": repr(value)}


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every checksum and decode every reply; exit 1 on any problem."""
    try:
        # every record's checksums, not only those after the checkpoint
        c = _open(args.path, "strict", "verifying", checkpoint=False)
    except (_core.LedgerFormatError, _core.LedgerError) as exc:
        print(f"fabric cassette verify: {exc}", file=sys.stderr)
        return 1
    problems = 0
    with c:
        bar = ProgressBar("decoding")
        n = len(c)
        for i, key in enumerate(c):
            try:
                value = c.get(key)
                if isinstance(value, _core.CassetteStream):
                    for _ in value:
                        pass
            except (_core.DecodeError, _core.LedgerFormatError) as exc:
                problems += 1
                print(f"{key}: {exc}", file=sys.stderr)
            if i % 4096 == 0:
                bar(i, n)
        bar.done()
        stats = c.stats()
    print(
        f"{args.path}: {stats['keys']} keys in {stats['records']} records, "
        f"{stats['bytes']} bytes; torn tail {stats['torn_bytes']} bytes; "
        f"{problems} undecodable replies"
    )
    return 1 if problems else 0


def cmd_dump(args: argparse.Namespace) -> int:
    """Print one line per held key, in ledger order: the key and its reply
    (repr), or with --json one JSON object {"key", "value"} (a stream:
    {"key", "stream": [items]}). --key selects one key, --limit the first N."""
    with _open(args.path, args.recover) as c:
        if args.key:
            try:
                want = _core.ContentKey.parse(args.key)
            except ValueError as exc:
                print(f"fabric cassette dump: --key: {exc}", file=sys.stderr)
                return 2
            pairs = iter([(want, c.get(want))] if want in c else [])
        else:
            pairs = c.items()
        for n, (key, value) in enumerate(pairs):
            if args.limit is not None and n >= args.limit:
                break
            stream = isinstance(value, _core.CassetteStream)
            if stream:
                value = list(value)
            if args.json:
                field = "stream" if stream else "value"
                print(json.dumps({"key": str(key), field: to_json(value)}, sort_keys=True))
            elif stream:
                print(f"{key} stream {value!r}")
            else:
                print(f"{key} {value!r}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Rewrite the ledger without torn, duplicate or bad records.

    In place, other processes may keep the cassette open and appending:
    the compaction copies what is there, then, holding the append lock for
    a moment, what was appended meanwhile, and renames the new file over
    the ledger; the others move to it at their next append, miss or refresh.
    """
    dest = args.output
    left_out = ""
    if dest:
        with _open(args.path, args.recover) as c:
            bar = ProgressBar(f"compacting {os.path.basename(args.path)}")
            try:
                evicted = c.compact(dest, progress=bar, max_bytes=args.max_bytes)
            finally:
                bar.done()
            keys = c.stats()["keys"]
        if args.max_bytes is not None:
            left_out = f", {evicted} oldest left out to fit {args.max_bytes} bytes"
        print(f"{args.path} -> {dest}: {keys - evicted} keys{left_out}")
        return 0
    with _core.EvalCassette(args.path, "a", recover=args.recover) as c:
        before = c.stats()
        bar = ProgressBar(f"compacting {os.path.basename(args.path)}")
        try:
            evicted = c.compact(progress=bar, max_bytes=args.max_bytes)
        finally:
            bar.done()
        keys = len(c)
    after = os.path.getsize(args.path)
    if args.max_bytes is not None:
        left_out = f", {evicted} oldest left out to fit {args.max_bytes} bytes"
    print(f"{args.path}: {before['keys']} -> {keys} keys{left_out}, "
          f"{before['bytes']} -> {after} bytes")
    return 0


def add_parser(sub) -> None:
    """Adds ``cassette`` and its sub-commands to the fabric argument parser."""
    p = sub.add_parser("cassette", help="inspect, verify or compact a cassette ledger")
    csub = p.add_subparsers(dest="cassette_command", metavar="ACTION", required=True)
    for name, func, text in [
        ("stats", cmd_stats, "print statistics as JSON"),
        ("verify", cmd_verify, "check every record; exit status 1 on a problem"),
        ("dump", cmd_dump, "print every key and reply"),
        ("compact", cmd_compact, "rewrite without torn, duplicate or bad records"),
    ]:
        q = csub.add_parser(name, help=text)
        q.add_argument("path", help="the ledger file")
        if name != "verify":
            q.add_argument("--recover", choices=["strict", "salvage"], default="strict",
                           help="salvage: skip corrupt records instead of failing")
        if name == "compact":
            q.add_argument("-o", "--output", help="write here instead of in place")
            q.add_argument("--max-bytes", type=int, metavar="N",
                           help="keep at most N bytes: the oldest recorded keys go first")
        if name in ("stats", "dump"):
            q.add_argument("--json", action="store_true",
                           help="JSON (dump: one object per key and line)")
        if name == "dump":
            q.add_argument("--key", help="only this key (sha256:...)")
            q.add_argument("--limit", type=int, metavar="N", help="only the first N keys")
        q.set_defaults(func=func)
