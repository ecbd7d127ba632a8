"""``fabric cassette stats|verify|dump|compact PATH``: tools for cassette ledgers.

A progress bar is drawn on stderr while a long ledger replays, only when
stderr is a terminal.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import math
import os
import sys
from typing import Any, Literal

from . import _core
from .progress import Progress


class ProgressBar(Progress):
    """The cassette tools' progress (``fabric.progress.Progress``): through
    tqdm when it is installed, else a plain line on a terminal, else
    nothing; called as the cassette's ``progress=`` callback with ``(done,
    total)``. ``unit`` is ``"B"`` for bytes replayed or copied."""

    def __init__(self, label: str, unit: str = "B", stream: Any = None) -> None:
        super().__init__(label, unit=unit, stream=stream)

    def done(self) -> None:
        """Ends the bar (a newline after a plain line that was drawn)."""
        self.close()


def _open(path: str, recover: Literal["strict", "salvage"] = "strict",
          label: str = "replaying", checkpoint: bool = True):
    bar = ProgressBar(f"{label} {os.path.basename(path)}")
    try:
        return _core.EvalCassette.from_ledger(path, recover=recover, progress=bar,
                                              checkpoint=checkpoint)
    finally:
        bar.done()


def _existing(path: str) -> str:
    """path, when something is there: compact and rekey open their ledger
    for writing, which would make a new empty one of a mistyped path."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, "no cassette ledger there", path)
    return path


def _count(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {n}")
    return n


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
    except (_core.LedgerFormatError, _core.LedgerCorruptionError) as exc:
        # What verify is for: the file is not a sound ledger (exit 1). Any
        # other failure (a missing file, ...) is the usual one line, exit 2.
        print(f"fabric cassette verify: {exc}", file=sys.stderr)
        return 1
    problems = 0
    with c:
        bar = ProgressBar("decoding", unit="key")
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


def _request_json(c: Any, key: Any) -> dict[str, Any]:
    """What a record's request bytes say, as JSON fields: ``op``, ``args``,
    ``kwargs`` and ``version`` (empty without request bytes, or when they are
    of an unknown scheme)."""
    ident = c.request_bytes(key)
    if ident is None:
        return {}
    try:
        _scheme, f = identity_fields(ident)
    except RequestDecodeError:
        return {}
    return {"op": f["op"], "version": to_json(f["version"]), "args": to_json(f["args"]),
            "kwargs": to_json(f["kwargs"])}


def cmd_dump(args: argparse.Namespace) -> int:
    """Print one line per held key, in ledger order: the key and its reply
    (repr), or with --json one JSON object per record: ``key``, the request's
    ``op``, ``version``, ``args`` and ``kwargs`` when the record keeps its
    request (records since request records exist), and ``value`` (a stream:
    ``stream``, its items), as JSON where they map and tagged otherwise.
    --key selects one key, --op the records of one op, --limit the first N."""
    with _open(args.path, args.recover) as c:
        if args.key:
            try:
                want = _core.ContentKey.parse(args.key)
            except ValueError as exc:
                raise ValueError(f"--key: {exc}") from None
            pairs = iter([(want, c.get(want))] if want in c else [])
        elif args.op:
            pairs = ((k, c.get(k)) for k, _ident in c.requests(op=args.op) if k in c)
        else:
            pairs = c.items()
        for n, (key, value) in enumerate(pairs):
            if args.limit is not None and n >= args.limit:
                break
            stream = isinstance(value, _core.CassetteStream)
            if stream:
                value = list(value)
            if args.json:
                row: dict[str, Any] = {"key": str(key)}
                row.update(_request_json(c, key))
                row["stream" if stream else "value"] = to_json(value)
                print(json.dumps(row, sort_keys=True))
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
    with _core.EvalCassette(_existing(args.path), "a", recover=args.recover) as c:
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


# The identity array's fields after the scheme tag, per key scheme
# (docs/spec/content-key.md): schemes 1 and 2 share one layout.
_IDENTITY_FIELDS = ("op", "version", "args", "kwargs", "required_capabilities", "mode",
                    "answer_limit", "stream_buffer", "stream", "trace")
# Scheme 2 added the sharing class as a 12th element.
_LAYOUTS = {"fabric.key/1": _IDENTITY_FIELDS, "fabric.key/2": _IDENTITY_FIELDS + ("sharing",)}


class RequestDecodeError(ValueError):
    """Recorded request bytes that do not give back a request."""


def identity_scheme(identity: bytes) -> str | None:
    """The key scheme tag that recorded identity bytes start with, or None
    when they are not an identity array."""
    try:
        fields = _core.unpack(identity)
    except (ValueError, TypeError):
        return None
    if isinstance(fields, list) and fields and isinstance(fields[0], str):
        return fields[0]
    return None


def identity_fields(identity: bytes) -> tuple[str, dict]:
    """(scheme tag, {field: value}) of recorded identity bytes, decoded
    (tuples come back as lists); ``RequestDecodeError`` when they are not
    the identity array of a known scheme."""
    try:
        fields = _core.unpack(identity)
    except (ValueError, TypeError) as e:
        raise RequestDecodeError(f"the request bytes do not decode: {e}") from None
    if not (isinstance(fields, list) and fields and isinstance(fields[0], str)):
        raise RequestDecodeError("the request bytes are not an identity array")
    scheme = fields[0]
    layout = _LAYOUTS.get(scheme)
    if layout is None or len(fields) != len(layout) + 1:
        raise RequestDecodeError(f"unknown key scheme {scheme!r} ({len(fields)} fields)")
    return scheme, dict(zip(layout, fields[1:]))


def request_from_identity(identity: bytes) -> tuple[str, _core.EvalRequest]:
    """(scheme tag, EvalRequest) rebuilt from identity bytes recorded under
    that scheme, keyed under the current one. ``RequestDecodeError`` when
    the bytes cannot be rebuilt into the same request: when the rebuilt
    request, encoded again under the old tag, does not give back the same
    bytes (a value that does not decode to what it was)."""
    scheme, f = identity_fields(identity)
    try:
        req = _core.EvalRequest(
            f["op"], tuple(f["args"]), f["kwargs"], version=f["version"],
            required_capabilities=f["required_capabilities"], mode=f["mode"],
            answer_limit=f["answer_limit"], stream_buffer=f["stream_buffer"],
            stream=f["stream"], trace=f["trace"], sharing=f.get("sharing", "pure"))
    except (TypeError, ValueError) as e:
        raise RequestDecodeError(f"the request does not rebuild: {e}") from None
    # The rebuilt request's identity, in the old scheme's layout and tag,
    # must be the recorded bytes again.
    fields = _core.unpack(req.identity_bytes())
    again = _core.canonical_bytes([scheme] + list(fields[1:1 + len(_LAYOUTS[scheme])]))
    if again != identity:
        raise RequestDecodeError("the request's values do not decode to the same request")
    return scheme, req


def rekey(path: str, *, drop_unkeyed: bool = False) -> dict[str, int]:
    """Rewrite the cassette at path with every key under the current key
    scheme, computed from the request recorded beside each reply, and
    return counts: ``rekeyed``, ``unchanged`` (already current), ``merged``
    (a new key another record already took: first wins), ``unkeyed``
    (recorded without request bytes), ``unreadable`` (request bytes that do
    not give back a request) and ``dropped``. Records without a usable
    request keep their old key, unless ``drop_unkeyed``, which leaves them
    out. The new file is written beside the ledger, synced and renamed over
    it (atomic); the ledger must not be open elsewhere meanwhile
    (``LedgerLockedError``). Expiry times are not carried over. A path
    with no file is ``FileNotFoundError`` (no new ledger is made).
    """
    counts = dict.fromkeys(("rekeyed", "unchanged", "merged", "unkeyed", "unreadable",
                            "dropped"), 0)
    _existing(path)
    tmp = f"{path}.rekey.tmp.{os.getpid()}"
    if os.path.exists(tmp):
        os.unlink(tmp)
    with _core.EvalCassette(path, "a", "os", exclusive=True) as src, \
            _core.EvalCassette(tmp, "a", "os", exclusive=True, checkpoint=False) as dst:
        try:
            for key in src:
                ident = src.request_bytes(key)
                req = None
                if ident is None:
                    counts["unkeyed"] += 1
                else:
                    try:
                        scheme, req = request_from_identity(ident)
                    except RequestDecodeError:
                        counts["unreadable"] += 1
                if req is None and drop_unkeyed:
                    counts["dropped"] += 1
                    continue
                new_key = req.key if req is not None else key
                request: _core.EvalRequest | bytes | None = req if req is not None else ident
                value = src.get(key)
                if isinstance(value, _core.CassetteStream):
                    writer = dst.record_stream(new_key, request=request)
                    new = not writer.held
                    with writer:
                        for item in value:
                            writer.append(item)
                else:
                    new = dst.record(new_key, value, request=request)
                if req is not None:
                    which = "unchanged" if scheme == _core.KEY_SCHEME else "rekeyed"
                    counts[which if new else "merged"] += 1
            dst.sync()
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, path)
    try:
        os.unlink(path + ".ckpt")  # describes the old file (it would be ignored)
    except FileNotFoundError:
        pass
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return counts


def cmd_rekey(args: argparse.Namespace) -> int:
    """Re-key a cassette under the current key scheme (see ``rekey``)."""
    counts = rekey(args.path, drop_unkeyed=args.drop_unkeyed)
    if args.json:
        print(json.dumps(counts))
    else:
        kept = "dropped" if args.drop_unkeyed else "kept under their old keys"
        print(f"{args.path}: {counts['rekeyed']} re-keyed to {_core.KEY_SCHEME}, "
              f"{counts['unchanged']} already current, {counts['merged']} merged; "
              f"{counts['unkeyed']} without request bytes and {counts['unreadable']} "
              f"unreadable {kept}")
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
        ("rekey", cmd_rekey, "rewrite the keys under the current key scheme from the "
                             "recorded requests"),
    ]:
        q = csub.add_parser(name, help=text)
        q.add_argument("path", help="the ledger file")
        if name == "rekey":
            q.add_argument("--drop-unkeyed", action="store_true",
                           help="leave out records without usable request bytes "
                                "(default: keep them under their old keys)")
            q.add_argument("--json", action="store_true", help="the counts as JSON")
        if name not in ("verify", "rekey"):
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
            q.add_argument("--limit", type=_count, metavar="N", help="only the first N keys")
            q.add_argument("--op", help="only the records of this op (records that keep "
                                        "their request)")
        q.set_defaults(func=func)
