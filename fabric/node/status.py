"""A node's status: what ``fabric status URL`` prints and ``/metrics`` exports.

``node_status(node)`` gathers, in one plain map (str keys; ints, floats,
strs, bools, nil, lists and maps only, so it travels as canonical msgpack):
the node's identity and uptime, its connections, requests and streams, its
cassette, its holdings, its peers' health as the governor sees it, and every
raw counter. It runs on the node's event loop thread (the status op and the
metrics endpoint both call it there), so it reads one consistent moment.

``answer(node, conn, sid)`` is the server side of the status op
(docs/spec/protocol.md section 9): a ``CONTROL`` ``stats`` on a fresh stream
id is answered on that id like a single reply, the chunks carrying the
status map's canonical bytes. ``format_status(status)`` is the readable
summary the command line prints.

Nothing secret is in a status: no token, no secret value, no file path
(the cassette's path would tell every authenticated peer the layout of the
node's disk); peers are named by the URLs the node was given and their
node ids.

This module imports ``fabric`` and ``fabric.node.protocol`` only; the
server imports it.
"""

from __future__ import annotations

import time
from typing import Any

from .._core import canonical_bytes
from . import protocol as P

__all__ = ["node_status", "answer", "format_status", "STATUS_SOURCE"]

#: The ``source`` a status reply's ``STREAM_START`` metadata names.
STATUS_SOURCE = "status"
_STATUS_START = canonical_bytes({"metadata": {"source": STATUS_SOURCE}})


def _cassette(node: Any) -> dict[str, Any]:
    try:
        st = node.cassette.stats()
    except Exception as exc:  # a closed or failed cassette: say so, do not fail the status
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {k: st[k] for k in ("records", "keys", "bytes", "duplicates", "torn_tails_cut",
                               "failed", "version", "durability") if k in st}


def _peers(node: Any, now: float) -> list[dict[str, Any]]:
    gov = node.fabric.governor
    health = gov.peers() if gov is not None else {}
    out = []
    seen = set()
    for cl in list(node._clients):
        name = cl.node or cl.url
        seen.add(name)
        refused = getattr(cl, "refused", None)  # the governor's lists refuse it
        out.append({"url": cl.url, "node": cl.node,
                    "link": cl.status if refused is None else f"not dialled: {refused}",
                    "health": _health(health.get(name), now),
                    "requests": cl.stats_counters.get("requests", 0),
                    "reconnects": cl.stats_counters.get("reconnects", 0)})
    # Peers the governor heard of that are not links of this node (added to
    # its fabric by hand, say): their health still matters to an operator.
    for name, h in sorted(health.items()):
        if name not in seen:
            out.append({"url": None, "node": name, "link": None, "health": _health(h, now),
                        "requests": 0, "reconnects": 0})
    return out


def _health(h: Any, now: float) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"failures": h.failures, "consecutive": h.consecutive, "down": h.down,
            "last_event": h.last_event,
            "last_ago": None if h.last_at is None else round(max(0.0, now - h.last_at), 3),
            "retry_in": None if h.retry_at is None or h.retry_at <= now
            else round(h.retry_at - now, 3)}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Numbers as they are, lists of names as lists of str (a stats dict of
    a part of the node that may grow: nothing unencodable slips in)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, (list, tuple, set, frozenset)):
            out[str(k)] = sorted(str(x) for x in v)
    return out


def node_status(node: Any) -> dict[str, Any]:
    """The status of ``node`` (a ``fabric.Node``) as one plain map; call it
    on the node's loop thread (or on a stopped node)."""
    from .. import __version__

    stats = node._counters()
    conns = list(node._conns)
    by_principal: dict[str, int] = {}
    for c in conns:
        by_principal[c.principal] = by_principal.get(c.principal, 0) + 1
    credits = [cr for c in conns for cr in list(c.credits.values())]
    gossip = getattr(node, "_gossip", None)
    home_stats = getattr(node.home, "stats", None)
    started = getattr(node, "_started", None)
    gov = node.fabric.governor
    now = gov._clock() if gov is not None else time.monotonic()
    holders = node.fabric.holders
    try:
        url: str | None = node.url
    except Exception:
        url = None
    rq, oq = node._run_q, node._out_q
    return {
        "node": node.node_id,
        "incarnation": node.incarnation,
        "url": url,
        "version": __version__,
        "protocol": list(P.PROTOCOL_VERSION),
        "uptime": 0.0 if started is None else round(time.monotonic() - started, 3),
        "connections": {
            "open": len(conns),
            "handshaking": node._handshaking(),
            "max": node.limits.max_connections,
            "accepted": stats.get("connections_accepted", 0),
            "refused": stats.get("refused_connections", 0),
            "gossip": sum(1 for c in conns if c.gossip),
            "by_principal": dict(sorted(by_principal.items())),
        },
        "requests": {
            "received": stats.get("requests", 0),
            "replied": stats.get("replies", 0),
            "errors": stats.get("errors", 0),
            "cancelled": stats.get("cancels", 0),
            "denied_compute": stats.get("denied_compute", 0),
            "hits_inline": stats.get("hits_inline", 0),
            "running": node._running,
            "queued": len(rq),
            "max_running": node.limits.max_running,
        },
        "streams": {
            "open": len(credits),
            "queued_frames": len(oq),
            "evictions": oq.evictions,
            # 0 for a stream whose window is unbounded (window 0)
            "credit_remaining": sum(max(0, cr.remaining) for cr in credits if cr.window),
            "backpressure_events": sum(cr.backpressure_events for cr in credits),
        },
        "bytes": {
            "in": stats.get("bytes_in", 0) + sum(c.bytes_in for c in conns),
            "out": stats.get("bytes_out", 0) + sum(c.bytes_out for c in conns),
        },
        "cassette": _cassette(node),
        "holdings": {
            "facts": len(holders),
            "keys": holders.key_count,
            "version": holders.version,
            "memory": holders.memory(),
        },
        "fabric": node.fabric.stats(),
        "served": node.serve_held.stats(),
        "gossip": {} if gossip is None else _plain(gossip.stats()),
        "leases": {} if home_stats is None else _plain(home_stats()),
        "governor": None if gov is None else _governor(gov),
        "peers": _peers(node, now),
        "counters": dict(sorted(stats.items())),
    }


def _governor(gov: Any) -> dict[str, Any]:
    return {"allow": None if gov.allow is None else sorted(gov.allow),
            "block": sorted(gov.block), "down_after": gov.down_after,
            "backoff_base": gov.backoff_base, "backoff_cap": gov.backoff_cap,
            "jitter": gov.jitter}


def answer(node: Any, conn: Any, sid: int) -> None:
    """Send ``node``'s status on stream ``sid`` of ``conn``, framed as a
    single reply (``STREAM_START``, chunks, ``STREAM_END``)."""
    if sid == 0 or sid in conn.tasks:
        raise P.ProtocolError(f"stats on stream {sid}: a status is asked on a fresh "
                              f"stream id, never 0 or one in use")
    node._stat("status_requests")
    data = canonical_bytes(node_status(node))
    conn.send(P.reply_frames(conn.enc, sid, _STATUS_START, data,
                             {"bytes": len(data), "truncated": False}, conn.max_frame))


def _dur(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{seconds:.1f}s"


def format_status(st: dict[str, Any]) -> str:
    """A node's status as one screen of text (what ``fabric status`` prints).
    A map not of this form (another node's: another version, or a peer that
    makes one up) is a ``ValueError`` saying what is missing or of a wrong
    type, never a ``KeyError`` out of the middle of it."""
    try:
        return _format_status(st)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"a node status this version cannot print ({what}); `fabric status "
                         f"--json` shows it as it came") from None


def _handshaking(c: dict[str, Any]) -> str:
    """", N in their TLS handshake" when there are some (a node of an older
    version does not say: nothing)."""
    n = c.get("handshaking", 0)
    return f", {n} in their TLS handshake" if n else ""


def _format_status(st: dict[str, Any]) -> str:
    c, r, s, b = st["connections"], st["requests"], st["streams"], st["bytes"]
    cas, h, f, srv = st["cassette"], st["holdings"], st["fabric"], st["served"]
    lines = [
        f"node {st['node']} (incarnation {st['incarnation']}) at {st['url']}",
        f"  stream-fabric {st['version']}, protocol {st['protocol'][0]}.{st['protocol'][1]},"
        f" up {_dur(st['uptime'])}",
        f"connections  {c['open']} open{_handshaking(c)} (max {c['max']}), "
        f"{c['accepted']} accepted, {c['refused']} refused, {c['gossip']} gossiping",
    ]
    if c["by_principal"]:
        lines.append("  by principal: " + ", ".join(f"{p} {n}"
                                                   for p, n in c["by_principal"].items()))
    lines += [
        f"requests     {r['received']} received: {r['replied']} replied, {r['errors']} "
        f"failed, {r['cancelled']} cancelled; {r['running']} running "
        f"(max {r['max_running']}), {r['queued']} queued",
        f"lookups      {f.get('local_hits', 0) + srv.get('served', 0)} local hits, "
        f"{f.get('peer_hits', 0)} peer hits, {f.get('home_computes', 0)} computed, "
        f"{srv.get('not_held', 0)} not held, {f.get('failures', 0)} failed",
        f"streams      {s['open']} open, {s['queued_frames']} frames queued, "
        f"{s['evictions']} evicted, {s.get('credit_remaining', 0)} bytes of credit left",
        f"bytes        {b['in']} in, {b['out']} out",
    ]
    if "error" in cas:
        lines.append(f"cassette     unreadable: {cas['error']}")
    else:
        lines.append(f"cassette     {cas.get('records', 0)} records, {cas.get('keys', 0)} keys, "
                     f"{cas.get('bytes', 0)} bytes"
                     + (" (FAILED)" if cas.get("failed") else ""))
    lines.append(f"holdings     {h['facts']} facts on {h['keys']} keys "
                 f"(index version {h['version']}, {h['memory']} bytes)")
    g = st.get("gossip") or {}
    if g:
        lines.append(f"gossip       {g.get('members', 0)} members, {len(g.get('links', []))} "
                     f"links, epoch {g.get('epoch', 0)}; {g.get('messages_in', 0)} messages in, "
                     f"{g.get('messages_out', 0)} out; facts {g.get('facts_in', 0)} in "
                     f"({g.get('facts_new', 0)} new), {g.get('facts_out', 0)} out")
    le = st.get("leases") or {}
    if le:
        lines.append(f"leases       {le.get('lease_local', 0)} computed here, "
                     f"{le.get('lease_forwarded', 0)} forwarded, {le.get('lease_joined', 0)} "
                     f"joined, {le.get('lease_fallbacks', 0)} fallbacks")
    gv = st.get("governor")
    if gv:
        asked = "open" if gv["allow"] is None else "allowlist " + ", ".join(gv["allow"])
        lines.append(f"governor     {asked}"
                     + (f", blocklist {', '.join(gv['block'])}" if gv["block"] else "")
                     + f"; down after {gv['down_after']} failures in a row; backoff "
                     f"{gv['backoff_base']:g} s doubling to {gv['backoff_cap']:g} s")
    peers = st["peers"]
    if not peers:
        lines.append("peers        none")
    else:
        lines.append(f"peers        {len(peers)}")
        for p in peers:
            hl = p["health"]
            if hl is None:
                health = "no events yet"
            elif hl["down"]:
                health = f"DOWN after {hl['consecutive']} failures in a row"
            elif hl["consecutive"]:
                health = f"{hl['consecutive']} failure(s) in a row"
            else:
                health = "healthy"
            if hl is not None and hl["retry_in"] is not None:
                health += f", next try in {hl['retry_in']:.3g} s"
            if hl is not None and hl["last_event"]:
                health += f"; last: {hl['last_event']}"
            where = p["url"] or "-"
            lines.append(f"  {p['node'] or '?'} {where} [{p['link'] or 'not linked'}] "
                         f"{health}")
    return "\n".join(lines)
