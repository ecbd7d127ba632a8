"""``fabric serve`` runs a node; ``fabric status URL`` shows one's health.

Prints one readiness line, ``fabric serve: node ID listening on URL``, on
stdout once it accepts connections (scripts and tests wait for it), logs
through ``logging`` on stderr, and stops cleanly on SIGTERM or SIGINT:
new requests are refused, those in flight (streams too) may finish for up
to ``--drain-timeout`` seconds (default 10), what still runs then ends with
an error frame, connections close, the cassette is closed.

``--metrics HOST:PORT`` also serves the node's Prometheus metrics at
``http://HOST:PORT/metrics`` (``fabric.node.metrics``, through ``prometheus_client``:
the ``metrics`` extra); a second line,
``fabric serve: metrics on URL``, follows the readiness line.

``fabric status URL`` asks a node for its status (the protocol's status op)
and prints one screen: identity and uptime, connections, requests, lookups,
streams, cassette, holdings, peers' health; ``--json`` prints the whole map.
A node it cannot reach is one line on stderr and exit status 2.

A file a flag names (``--cassette``, ``--tokens``, ``--grants``,
``--secrets``, ``--peer-lists``, ``--node-key``, ``--trusted-keys``,
``--fleet-keys``, ``--tls-cert``, ``--tls-key``, ``--tls-ca``,
``--peer-token-file``, ``--token-file``) that cannot be used is one line,
``--FLAG PATH: what is wrong``, and exit status 2, before anything starts.

A token is best given in a file (``--peer-token-file``, ``--token-file``:
the token, surrounding whitespace stripped), not on the command line
(``--peer-token``, ``--token``), where ``ps`` shows it to every user of the
machine; giving both forms of one is refused.

Every node has a peer governor (``fabric.governor``): ``--allow-peer`` and
``--block-peer`` (node ids or URLs, repeatable; no allowlist = every peer;
``--peer-lists FILE`` adds a JSON file's lists, read again on SIGHUP),
``--down-after N`` failures in a row mark a peer down, and a failed peer is
asked again only after a backoff from ``--backoff-base`` doubling to
``--backoff-cap`` seconds, with jitter. ``fabric status`` shows each
peer's health and the governor's settings.

The node's limits (``NodeLimits``) are flags of their own names:
``--max-connections``, ``--handshake-timeout``, ``--idle-timeout``,
``--max-frame``, ``--window``, ``--output-buffer``, ``--max-frame-rate``,
``--max-running``, ``--principal-budget``, ``--principal-max-queued`` (the
requests one principal may have waiting for a slot; one over it is refused
alone, ``LimitExceeded``), ``--drain-timeout`` and ``--write-stall-timeout``
(seconds a connection's output may stay unread, the transport paused,
before it is closed; 0: never); ``--window 0`` is unbounded (the smaller
of the node's and a client's window is in force, 0 counting as none); a
value that is not positive (0 for ``--write-stall-timeout`` and
``--window``) is one line naming the limit.

``--workers N`` makes a ``ReplicaGroup`` of N worker processes the node's
home: requests the node does not hold are computed there, by the ops the
``--import`` modules registered; the workers stop with the node.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from typing import Any, Callable, TypeVar

__all__ = ["add_parser", "cmd_serve", "cmd_status"]

T = TypeVar("T")


def _load(spec: str) -> Any:
    from ..cli import CLIError
    if spec.startswith(("fabric://", "fabrics://")):
        from .client import NodeClient
        return NodeClient(spec, scope="compute")
    module, _, name = spec.partition(":")
    if not module or not name:
        raise CLIError(f"--home is MODULE:OBJECT or a node URL, not {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not hasattr(obj, "evaluate"):
        obj = obj()
    if not hasattr(obj, "evaluate"):
        raise CLIError(f"--home {spec}: {type(obj).__name__} has no fabric interface")
    return obj


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a node until SIGTERM / SIGINT."""
    from ..cli import CLIError
    from .._core import LedgerError, LedgerFormatError
    from .auth import Grants, Tokens, client_tls, server_tls
    from .secrets import SecretStore
    from .server import Node, NodeLimits

    if args.metrics:  # before anything starts: the extra may be missing
        try:
            from .metrics import MetricsServer
        except ImportError as exc:
            raise CLIError(f"--metrics needs prometheus_client ({exc.__cause__}): "
                           "pip install 'stream-fabric[metrics]'") from None
    from .loops import loop_factory
    try:  # before anything starts: uvloop (a dependency) may be missing
        new_loop, _kind = loop_factory(args.loop)  # the node logs it as it listens
    except ImportError as exc:
        raise CLIError(f"--loop {args.loop}: {exc}") from None
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for m in args.imports:
        importlib.import_module(m)
    peer_token = _token_arg(args.peer_token, "--peer-token", args.peer_token_file)
    tokens = _file_arg("--tokens", args.tokens, Tokens)
    grants = _file_arg("--grants", args.grants, Grants)
    secrets = _file_arg("--secrets", args.secrets, SecretStore)
    _check_tls_files(args)
    tls = server_tls(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    peer_tls = client_tls(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    limits = NodeLimits(**{k: v for k, v in (
        ("max_connections", args.max_connections), ("handshake_timeout",
                                                     args.handshake_timeout),
        ("idle_timeout", args.idle_timeout), ("max_frame", args.max_frame),
        ("window", args.window), ("output_buffer", args.output_buffer),
        ("max_frame_rate", args.max_frame_rate), ("max_running", args.max_running),
        ("principal_budget", args.principal_budget),
        ("principal_max_queued", args.principal_max_queued),
        ("drain_timeout", args.drain_timeout),
        ("write_stall_timeout", args.write_stall_timeout)) if v is not None})
    if args.workers is not None and args.home:
        raise CLIError("--workers and --home are two homes: give one")
    from ..governor import PeerGovernor
    try:
        allow, block = _lists(args)
    except ValueError as exc:  # (it names the flag and the file)
        raise CLIError(str(exc)) from None
    try:  # every node has a peer governor; by default it asks every peer
        governor = PeerGovernor(allow=allow, block=block,
                                down_after=args.down_after, backoff_base=args.backoff_base,
                                backoff_cap=args.backoff_cap)
    except ValueError as exc:
        raise CLIError(f"peer governor: {exc}") from None

    def reload_lists() -> None:  # SIGHUP: the --peer-lists file again
        try:
            allow, block = _lists(args)
        except ValueError as exc:
            logging.getLogger("fabric.node").error(
                "node %s: peer lists not reloaded (kept as they were): %s", node.node_id, exc)
            return
        governor.set_lists(allow=allow, block=block)
        logging.getLogger("fabric.node").warning(
            "node %s: peer lists reloaded: allow %s, block %s", node.node_id,
            "all" if allow is None else sorted(allow), sorted(block))
    keys = _claim_keys(args)
    if keys.get("node_key") is not None and args.node_id is None:
        args.node_id = keys["node_key"].node  # the key names its node
    home = _load(args.home) if args.home else _replicas(args, secrets) \
        if args.workers is not None else None
    from .gossip import GossipConfig
    try:
        gossip = GossipConfig(**{k: v for k, v in (
            ("interval", args.gossip_interval), ("fanout", args.fanout),
            ("lease", args.lease)) if v is not None}).check()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        node = Node(args.cassette, node_id=args.node_id, home=home, peers=args.peers,
                    governor=governor,
                    listen=args.listen, tls=tls, tokens=tokens, grants=grants,
                    secrets=args.secrets, limits=limits, insecure=args.insecure,
                    peer_tls=peer_tls, peer_token=peer_token, gossip=gossip,
                    faults=_faults(args.test_faults), loop=args.loop, **keys)
    except (LedgerError, LedgerFormatError) as exc:  # the only ledger is the cassette
        if args.cassette is None:
            raise
        raise CLIError(_file_problem("--cassette", args.cassette, exc)) from None

    metrics = MetricsServer(node, args.metrics) if args.metrics else None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.request_stop, True)  # drain first
        if args.peer_lists:
            loop.add_signal_handler(signal.SIGHUP, reload_lists)
        task = asyncio.create_task(node.serve())
        try:
            try:
                await node.listening()
            except Exception:
                pass  # serve() ended before it listened: awaiting it raises why
            else:
                if metrics is not None:  # up before the readiness line says so
                    await metrics.start()
                print(f"fabric serve: node {node.node_id} listening on {node.url}",
                      flush=True)
                if metrics is not None:
                    print(f"fabric serve: metrics on {metrics.url}", flush=True)
            await task
        finally:
            if metrics is not None:
                await metrics.close()
            if not task.done():  # the metrics address was refused: the node stops too
                node.request_stop()
                await task

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(run())
    finally:
        if args.workers is not None and home is not None:
            home.close()  # the replicas' processes end with the node
    return 0


def _file_problem(flag: str, path: str, exc: Exception, what: str = "") -> str:
    """``FLAG PATH: what is wrong``, the one line for a file a flag names
    that ``exc`` refused. ``what`` says what the file should be, for
    errors that do not (a TLS library's)."""
    import ssl

    from .._core import FabricError
    if isinstance(exc, ssl.SSLError):  # (an OSError, but the file was read)
        why = what or "not usable"
        if exc.reason:  # (without one, OpenSSL's text names only its own source line)
            why += f" ({exc.library or 'SSL'}: {exc.reason.replace('_', ' ').lower()})"
    elif isinstance(exc, OSError) and not isinstance(exc, FabricError):
        why = f"cannot read it: {exc.strerror or exc}"
    elif isinstance(exc, OSError):  # a ledger's: says what it was doing
        why = exc.strerror or str(exc)
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    else:
        why = str(exc)  # many start with the path, or PATH:LINE:
        if why.startswith(f"{path}: "):
            why = why[len(path) + 2:]
        elif why.startswith(f"{path}:"):
            why = f"line {why[len(path) + 1:]}"
    return f"{flag} {path}: {why}"


def _file_arg(flag: str, path: str | None, load: Callable[[str], T], what: str = "") -> T | None:
    """``load(path)`` for the file a flag names (None without one), or a
    CLIError ``FLAG PATH: what is wrong`` (see ``_file_problem``)."""
    from ..cli import CLIError
    if path is None:
        return None
    try:
        return load(path)
    except (OSError, ValueError) as exc:
        raise CLIError(_file_problem(flag, path, exc, what)) from None


def _check_tls_files(args: argparse.Namespace) -> None:
    """``--tls-cert``, ``--tls-key`` and ``--tls-ca`` each readable and what
    it should be (the key the certificate's), else a CLIError naming it."""
    import ssl

    from ..cli import CLIError
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together")

    def certificates(path: str) -> None:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(path)

    def key(path: str) -> None:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(args.tls_cert, path)

    _file_arg("--tls-ca", args.tls_ca, certificates, "holds no PEM certificate")
    _file_arg("--tls-cert", args.tls_cert, certificates, "holds no PEM certificate")
    _file_arg("--tls-key", args.tls_key, key,
              f"not a PEM private key of the --tls-cert {args.tls_cert} certificate")


def _token_file(path: str) -> str:
    """The bearer token a ``--token-file`` holds (``ValueError`` if none)."""
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError("holds no token (it is empty)")
    return token


def _token_arg(token: str | None, flag: str, path: str | None) -> str | None:
    """The token of ``flag`` (``--peer-token``, ``--token``) or of its file
    form ``FLAG-file`` (``path``), None without either; a CLIError when both
    are given or the file holds no token (``--FLAG-file PATH: why``)."""
    from ..cli import CLIError
    if token is not None and path is not None:
        raise CLIError(f"{flag} and {flag}-file are the same token: give one "
                       f"({flag}-file keeps it out of ps)")
    if token is not None:
        return token
    return _file_arg(f"{flag}-file", path, _token_file)


def _lists(args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """The governor's allowlist (None: open) and blocklist: ``--allow-peer``
    and ``--block-peer``, joined by those of the ``--peer-lists`` file (a
    JSON object ``{"allow": [...] or null, "block": [...]}``, both optional).
    ``ValueError`` naming the file when it cannot be read or is malformed."""
    allow = None if args.allow_peers is None else list(args.allow_peers)
    block = list(args.block_peers)
    path = args.peer_lists
    if path is None:
        return allow, block
    from .auth import read_json_file
    try:
        doc = read_json_file(path, "peer lists")
    except (OSError, ValueError) as exc:
        raise ValueError(_file_problem("--peer-lists", path, exc)) from None
    if not isinstance(doc, dict) or not set(doc) <= {"allow", "block"}:
        raise ValueError(f"--peer-lists {path}: a JSON object with \"allow\" and \"block\" "
                         f"lists, not {str(doc)[:60]}")
    for name in ("allow", "block"):
        v = doc.get(name, None if name == "allow" else [])
        if v is None and name == "allow":
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ValueError(f"--peer-lists {path}: \"{name}\" is a list of node ids or "
                             f"URLs{' or null' if name == 'allow' else ''}, not {v!r}"[:200])
    if doc.get("allow") is not None:
        allow = (allow or []) + doc["allow"]
    return allow, block + doc.get("block", [])


def _claim_keys(args: argparse.Namespace) -> dict[str, Any]:
    """``--node-key`` / ``--trusted-keys`` / ``--fleet-keys``: the claim keys
    read from their files (docs/spec/claims.md), a CLIError naming the file."""
    from ..claims import FleetKeys, NodeKey, TrustedKeys
    out: dict[str, Any] = {}
    for opt, name, cls in (("--node-key", "node_key", NodeKey),
                           ("--trusted-keys", "trusted_keys", TrustedKeys),
                           ("--fleet-keys", "fleet_keys", FleetKeys)):
        key = _file_arg(opt, getattr(args, name), cls.from_file)
        if key is not None:
            out[name] = key
    return out


def _faults(specs: list[str]) -> Any:
    """``--test-fault SPEC`` (repeatable): test faults; none by default."""
    if not specs:
        return None
    from ..cli import CLIError
    from .faults import Fault, Faults
    try:
        return Faults(*(Fault.parse(s) for s in specs))
    except ValueError as exc:
        raise CLIError(f"--test-fault: {exc}") from None


def _replicas(args: argparse.Namespace, secrets: Any) -> Any:
    """``--workers N``: a ReplicaGroup of N worker processes running every
    registered op (those the ``--import`` modules registered). Its group
    seed is ``--group-seed`` (64 hex digits), else SHA-256 of the node id,
    so a restarted node's replicas keep their identities. ``secrets``: the
    node's ``SecretStore`` of ``--secrets`` (None: none)."""
    import hashlib

    from ..cli import CLIError
    from ..replicas import ReplicaGroup
    if args.workers <= 0:
        raise CLIError(f"--workers must be at least 1, not {args.workers}")
    if args.group_seed is not None:
        try:
            seed = bytes.fromhex(args.group_seed)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise CLIError(f"--group-seed is 64 hex digits (32 bytes), not {args.group_seed!r}")
    else:
        seed = hashlib.sha256(f"fabric serve {args.node_id or ''}".encode()).digest()
    from .secrets import SecretStore
    # The replicas resolve SecretRefs where the op runs, from the node's store.
    return ReplicaGroup("serve", args.workers, group_seed=seed, lb_strategy=args.lb_strategy,
                        secrets=SecretStore() if secrets is None else secrets)


def cmd_status(args: argparse.Namespace) -> int:
    """Print a node's status (``--json``: the whole map)."""
    import json

    from .._core import FabricError
    from ..cli import CLIError
    from .auth import client_tls
    from .client import connect
    from .status import format_status

    _check_tls_files(args)
    tls = client_tls(args.tls_ca, args.tls_cert, args.tls_key) \
        if args.tls_ca or args.tls_cert else None
    token = _token_arg(args.token, "--token", args.token_file)
    try:
        with connect(args.url, tls=tls, token=token, timeout=args.timeout,
                     reconnect=False) as client:
            st = client.node_status()
    except ValueError:
        raise
    except (FabricError, OSError) as exc:
        raise CLIError(f"cannot get the status of {args.url}: {exc}") from None
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(format_status(st))
    return 0


_WINDOW_HELP = ("NodeLimits.window: the per-stream credit window in bytes of the streams "
                "the node sends, at least --max-frame; 0 = unbounded (a client's own "
                "window still bounds its streams); default 4 MiB (docs/spec/protocol.md)")


def add_parser(sub: Any) -> None:
    """Add ``serve`` and ``status`` to the ``fabric`` command's sub-parsers."""
    p = sub.add_parser("status", help="print a node's health, peers and holdings")
    p.add_argument("url", metavar="URL", help="the node, fabric://HOST:PORT or fabrics://")
    p.add_argument("--json", action="store_true", help="print the whole status as JSON")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the node (default 10)")
    p.add_argument("--token", default=None, help="a bearer token (visible in ps: prefer "
                                                 "--token-file)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="a file holding the bearer token (surrounding whitespace "
                        "stripped; not with --token)")
    p.add_argument("--tls-ca", default=None, help="CA of the node's certificate")
    p.add_argument("--tls-cert", default=None, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default=None, help="client key (mutual TLS)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve", help="run a network node")
    p.add_argument("--listen", default="127.0.0.1:7411", metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1:7411; an IPv6 host in "
                        "brackets, [::1]:7411; port 0 picks one)")
    p.add_argument("--cassette", default=None, metavar="PATH",
                   help="the node's cassette (default: a temporary one in $TMPDIR/fabric-node-<pid>-*, "
                        "removed when the node stops, or by the next node if it was killed)")
    p.add_argument("--node-id", default=None, help="this node's id")
    p.add_argument("--home", default=None, metavar="MODULE:OBJECT",
                   help="a fabric that computes (or a node URL); absent: serve held content")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="compute in a ReplicaGroup of N worker processes (the node's home)")
    p.add_argument("--lb-strategy", default="round-robin",
                   choices=("round-robin", "least-loaded", "consistent-hash", "power-of-two"),
                   help="how --workers routes requests (default round-robin)")
    p.add_argument("--group-seed", default=None, metavar="HEX",
                   help="--workers' group seed, 64 hex digits (default: from the node id)")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   metavar="MODULE", help="import MODULE first (registers ops; repeatable)")
    p.add_argument("--peer", dest="peers", action="append", default=[], metavar="URL",
                   help="a node asked for held content (repeatable)")
    p.add_argument("--allow-peer", dest="allow_peers", action="append", default=None,
                   metavar="NODE", help="ask only these peers (node ids; repeatable; "
                                        "none given: every peer)")
    p.add_argument("--block-peer", dest="block_peers", action="append", default=[],
                   metavar="NODE", help="never ask this peer (a node id; repeatable)")
    p.add_argument("--peer-lists", default=None, metavar="FILE",
                   help="a JSON file {\"allow\": [...] or null, \"block\": [...]} adding to "
                        "--allow-peer / --block-peer; read again on SIGHUP")
    p.add_argument("--down-after", type=int, default=3, metavar="N",
                   help="failures in a row that mark a peer down (default 3)")
    p.add_argument("--backoff-base", type=float, default=0.5, metavar="SECONDS",
                   help="a failed peer's first backoff, doubled per failure (default 0.5)")
    p.add_argument("--backoff-cap", type=float, default=30.0, metavar="SECONDS",
                   help="the longest backoff (default 30)")
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--tls-ca", default=None,
                   help="CA of client certificates (mutual TLS) and of peers")
    p.add_argument("--tokens", default=None, metavar="FILE",
                   help="JSON object principal -> bearer token")
    p.add_argument("--peer-token-file", default=None, metavar="FILE",
                   help="a file holding the token this node presents to peers (surrounding "
                        "whitespace stripped; not with --peer-token)")
    p.add_argument("--peer-token", default=None, metavar="TOKEN",
                   help="the token this node presents to peers (visible in ps: prefer "
                        "--peer-token-file)")
    p.add_argument("--grants", default=None, metavar="FILE",
                   help="JSON object principal -> [capability]")
    p.add_argument("--secrets", default=None, metavar="FILE",
                   help="JSON object secret name -> value, for SecretRef")
    p.add_argument("--node-key", default=None, metavar="FILE",
                   help="this node's Ed25519 key (KEY_ID NODE_ID HEX_SEED): it signs the "
                        "claim of every reply and stream it sends")
    p.add_argument("--trusted-keys", default=None, metavar="FILE",
                   help="public keys (KEY_ID NODE_ID HEX_PUBLIC_KEY lines): record a peer's "
                        "reply only if its signed claim verifies (trust=signatures)")
    p.add_argument("--fleet-keys", default=None, metavar="FILE",
                   help="shared fleet keys (KEY_ID HEX_SECRET lines): sign claims with the "
                        "first, and verify peers' claims (trust=fleet-key) unless "
                        "--trusted-keys is given")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without TLS or tokens")
    p.add_argument("--gossip-interval", type=float, default=None, metavar="SECONDS",
                   help="anti-entropy and membership exchange period (default 2)")
    p.add_argument("--fanout", type=int, default=None, metavar="N",
                   help="links to members learned through gossip, at most (default 3)")
    p.add_argument("--lease", type=float, default=None, metavar="SECONDS",
                   help="how long a miss waits for the key's lease holder (default 30)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="the event loop: uvloop (less CPU per request) or asyncio's "
                        "own; auto (the default) takes uvloop when it imports")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="also serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--test-fault", dest="test_faults", action="append", default=[],
                   metavar="ACTION[:KIND[:NTH[:COUNT]]]",
                   help="for tests only: inject a fault (fabric.node.faults), e.g. "
                        "stall:STREAM_CHUNK:3; repeatable; none by default")
    for name, typ in (("max-connections", int), ("handshake-timeout", float),
                      ("idle-timeout", float), ("max-frame", int), ("window", int),
                      ("output-buffer", int), ("max-frame-rate", int), ("max-running", int),
                      ("principal-budget", int), ("principal-max-queued", int),
                      ("drain-timeout", float), ("write-stall-timeout", float)):
        p.add_argument(f"--{name}", type=typ, default=None,
                       help=_WINDOW_HELP if name == "window" else
                       f"NodeLimits.{name.replace('-', '_')} (docs/spec/protocol.md)")
    p.set_defaults(func=cmd_serve)
