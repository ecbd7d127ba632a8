"""``fabric cassette stats|verify|dump|compact PATH``: tools for cassette ledgers.

A progress bar is drawn on stderr while a long ledger replays, only when
stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
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
    """Print the ledger's statistics as JSON."""
    with _open(args.path, args.recover) as c:
        stats = c.stats()
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


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
    """Print one line per held key: the key and its reply (repr), in ledger order."""
    with _open(args.path, args.recover) as c:
        for key, value in c.items():
            if isinstance(value, _core.CassetteStream):
                value = list(value)
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
    if dest:
        with _open(args.path, args.recover) as c:
            bar = ProgressBar(f"compacting {os.path.basename(args.path)}")
            try:
                c.compact(dest, progress=bar)
            finally:
                bar.done()
            stats = c.stats()
        print(f"{args.path} -> {dest}: {stats['keys']} keys")
        return 0
    with _core.EvalCassette(args.path, "a", recover=args.recover) as c:
        before = c.stats()
        bar = ProgressBar(f"compacting {os.path.basename(args.path)}")
        try:
            c.compact(progress=bar)
        finally:
            bar.done()
    after = os.path.getsize(args.path)
    print(f"{args.path}: {before['keys']} keys, {before['bytes']} -> {after} bytes")
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
        q.set_defaults(func=func)
