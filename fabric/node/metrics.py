"""Prometheus metrics of a node: ``fabric serve --metrics HOST:PORT``.

The exposition is ``prometheus_client``'s (the ``metrics`` extra:
``pip install 'stream-fabric[metrics]'``): ``StatusCollector`` is a custom
collector that turns a node's status map (``fabric.node.status``) into
gauge and counter families at each collection, and ``render(status)``
writes them in the text exposition format (version 0.0.4) with
``generate_latest``. Counters end in ``_total``, gauges do not.

``MetricsServer`` answers ``GET /metrics`` over plain HTTP on the node's
own event loop and calls ``generate_latest`` there, so a scrape reads one
consistent moment of the node and no thread ever reads the node's state
(``prometheus_client``'s own HTTP server would read it from a thread of
its own, unlocked). Nothing else of the library is used: no global
registry, no metric objects mirroring figures the node already keeps.

The endpoint is unauthenticated HTTP, like most exporters: it shows counts,
names of principals and peers, never a token or a value. Binding an
address that is not loopback logs a warning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Iterable, Iterator

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as _exc:  # the metrics extra not installed
    raise ImportError("fabric.node.metrics needs prometheus_client: "
                      "pip install 'stream-fabric[metrics]'") from _exc

from .status import node_status

__all__ = ["render", "families", "StatusCollector", "MetricsServer", "start_metrics",
           "stop_metrics", "CONTENT_TYPE"]

log = logging.getLogger("fabric.node")

#: The Content-Type of the text exposition format ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Sample = tuple[dict[str, str], float]


class _Out:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[_Sample] | float | int) -> None:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        full = f"fabric_node_{name}"
        if isinstance(samples, (int, float)):
            self.metrics.append(cls(full, help_, value=float(samples)))
            return
        rows = list(samples)
        names = sorted(rows[0][0]) if rows else []
        fam = cls(full, help_, labels=names)
        for labels, v in rows:
            if sorted(labels) != names:
                raise ValueError(f"metric {full}: labels {sorted(labels)} where the family "
                                 f"has {names}")
            fam.add_metric([str(labels[k]) for k in names], float(v))
        self.metrics.append(fam)


# Raw counters that are connections the node closed or refused, and why.
_CLOSED = {"refused_connections": "max_connections", "handshake_timeouts": "handshake_timeout",
           "idle_timeouts": "idle_timeout", "disconnected_slow_reader": "slow_reader",
           "internal_errors": "internal_error", "write_stalls": "write_stall",
           "tls_refused": "tls_refused"}


def families(st: dict[str, Any]) -> list[Metric]:
    """The metric families of a node's status map."""
    o = _Out()
    c, r, s, b = st["connections"], st["requests"], st["streams"], st["bytes"]
    f, srv, h, cas = st["fabric"], st["served"], st["holdings"], st["cassette"]
    counters: dict[str, int] = st["counters"]
    o.family("info", "gauge", "The node's identity (always 1).",
             [({"node": st["node"], "version": st["version"],
                "protocol": f"{st['protocol'][0]}.{st['protocol'][1]}"}, 1)])
    o.family("incarnation", "gauge", "Restores from a snapshot so far (0 = fresh).",
             st["incarnation"])
    o.family("uptime_seconds", "gauge", "Seconds since the node started serving.",
             st["uptime"])
    o.family("connections", "gauge", "Connections open now.", c["open"])
    o.family("connections_handshaking", "gauge", "TLS handshakes under way (they count "
             "towards max_connections).", c.get("handshaking", 0))
    o.family("connections_max", "gauge", "The max_connections limit.", c["max"])
    o.family("connections_gossip", "gauge", "Open connections that receive gossip.",
             c["gossip"])
    o.family("connections_accepted_total", "counter", "Connections accepted (refused ones too).",
             c["accepted"])
    closed = [({"reason": why}, counters[k]) for k, why in _CLOSED.items() if k in counters]
    closed += [({"reason": k[len("refused_"):]}, v) for k, v in counters.items()
               if k.startswith("refused_") and k not in _CLOSED]
    o.family("connections_closed_total", "counter",
             "Connections the node refused or closed, by reason.", closed)
    o.family("requests_received_total", "counter", "Requests received.", r["received"])
    o.family("requests_total", "counter", "Requests ended, by outcome.",
             [({"outcome": "replied"}, r["replied"]), ({"outcome": "error"}, r["errors"]),
              ({"outcome": "cancelled"}, r["cancelled"])])
    o.family("requests_denied_compute_total", "counter",
             "Requests for compute from a principal without node.compute.",
             r["denied_compute"])
    o.family("requests_running", "gauge", "Requests running now.", r["running"])
    o.family("requests_queued", "gauge", "Requests waiting for a slot.", r["queued"])
    o.family("hits_total", "counter", "Replies found held, by where.",
             [({"source": "local"}, f.get("local_hits", 0) + srv.get("served", 0)),
              ({"source": "peer"}, f.get("peer_hits", 0))])
    o.family("misses_total", "counter", "Requests not held here, by what followed.",
             [({"outcome": "computed"}, f.get("home_computes", 0)),
              ({"outcome": "not_held"}, srv.get("not_held", 0)),
              ({"outcome": "failed"}, f.get("failures", 0))])
    o.family("bytes_received_total", "counter", "Bytes read from connections.", b["in"])
    o.family("bytes_sent_total", "counter", "Bytes written to connections.", b["out"])
    o.family("bytes_recorded_total", "counter", "Reply bytes recorded in the cassette.",
             f.get("bytes_recorded", 0))
    o.family("streams_open", "gauge", "Reply streams open now.", s["open"])
    o.family("stream_frames_queued", "gauge", "Stream frames waiting for the writer.",
             s["queued_frames"])
    o.family("stream_credit_remaining_bytes", "gauge",
             "Credit left on the open reply streams (bounded windows), in all.",
             s.get("credit_remaining", 0))
    o.family("stream_backpressure_events_total", "counter",
             "Sends on the open reply streams that found no credit.",
             s.get("backpressure_events", 0))
    o.family("stream_evictions_total", "counter",
             "Stream frames evicted over a principal's byte budget.", s["evictions"])
    if "error" not in cas:
        o.family("cassette_records", "gauge", "Records in the cassette.", cas.get("records", 0))
        o.family("cassette_keys", "gauge", "Keys in the cassette.", cas.get("keys", 0))
        o.family("cassette_bytes", "gauge", "Bytes of the cassette's ledger.", cas.get("bytes", 0))
    o.family("cassette_failed", "gauge", "1 when the cassette failed (or is unreadable).",
             1 if "error" in cas or cas.get("failed") else 0)
    o.family("holding_facts", "gauge", "(key, holder) facts in the holding index.", h["facts"])
    o.family("holding_keys", "gauge", "Keys with a known holder.", h["keys"])
    o.family("holding_index_version", "gauge", "The holding index's version (grows).",
             h["version"])
    o.family("holding_index_bytes", "gauge", "Memory of the holding index.", h["memory"])
    o.family("gossip_facts_received_total", "counter", "Holding facts received by gossip.",
             counters.get("gossip_facts_in", 0))
    o.family("gossip_redelivered_total", "counter",
             "Gossip deltas sent again after a restore.", counters.get("gossip_redelivered", 0))
    g = st.get("gossip") or {}
    if g:
        o.family("gossip_members", "gauge", "Fleet members this node knows.", g.get("members", 0))
        o.family("gossip_links", "gauge", "Peers linked and connected now.",
                 len(g.get("links", [])))
        o.family("gossip_messages_total", "counter", "Gossip messages, by direction.",
                 [({"direction": "in"}, g.get("messages_in", 0)),
                  ({"direction": "out"}, g.get("messages_out", 0))])
        o.family("gossip_bytes_sent_total", "counter", "Bytes of gossip sent.",
                 g.get("bytes_out", 0))
        o.family("gossip_facts_total", "counter",
                 "Holding facts gossiped: sent, received, new to this node.",
                 [({"direction": "out"}, g.get("facts_out", 0)),
                  ({"direction": "in"}, g.get("facts_in", 0)),
                  ({"direction": "new"}, g.get("facts_new", 0))])
    le = st.get("leases") or {}
    if le:
        o.family("leases_total", "counter", "Misses under a computing lease, by how they went.",
                 [({"how": k[len("lease_"):]}, v) for k, v in sorted(le.items())
                  if k.startswith("lease_") and isinstance(v, (int, float))])
    peers = st["peers"]
    o.family("peers", "gauge", "Peers this node links to or heard of.", len(peers))
    o.family("peer_connected", "gauge", "1 while the link to the peer is connected.",
             [({"peer": p["node"] or p["url"], "url": p["url"] or ""},
               1 if p["link"] == "connected" else 0) for p in peers])
    hp = [p for p in peers if p["health"] is not None]
    o.family("peer_down", "gauge", "1 when the governor marks the peer down.",
             [({"peer": p["node"] or p["url"]}, 1 if p["health"]["down"] else 0) for p in hp])
    o.family("peer_failures_total", "counter", "The peer's failures so far.",
             [({"peer": p["node"] or p["url"]}, p["health"]["failures"]) for p in hp])
    o.family("peer_consecutive_failures", "gauge", "The peer's failures since its last success.",
             [({"peer": p["node"] or p["url"]}, p["health"]["consecutive"]) for p in hp])
    for key, kind, text in (("peers_down", "gauge", "Peers marked down."),
                            ("peers_backing_off", "gauge", "Peers in backoff now."),
                            ("peer_skips", "counter", "Peers not asked (policy or backoff)."),
                            ("peer_penalties", "counter",
                             "Peers penalised for an answer that failed verification.")):
        if key in f:
            o.family(key + ("_total" if kind == "counter" else ""), kind, text, f[key])
    # Every raw counter as well, so one added to the node shows up here
    # before it has a family of its own.
    o.family("events_total", "counter", "Every raw counter of the node, by name.",
             [({"event": k}, v) for k, v in sorted(counters.items())])
    return o.metrics


class StatusCollector:
    """A ``prometheus_client`` collector of a node's figures: each
    ``collect()`` calls ``status()`` (a status map, ``node_status``) and
    yields its families. Call it where reading the node is safe: on the
    node's loop (``MetricsServer`` does)."""

    def __init__(self, status: Callable[[], dict[str, Any]]):
        self.status = status

    def collect(self) -> Iterator[Metric]:
        yield from families(self.status())

    def describe(self) -> list[Metric]:
        # Nothing up front: a registry then never collects at registration
        # (from whatever thread registers it).
        return []


def _registry(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status))
    return reg


def render(st: dict[str, Any]) -> str:
    """The Prometheus text exposition (0.0.4) of a node's status map."""
    return generate_latest(_registry(lambda: st)).decode()


class MetricsServer:
    """``GET /metrics`` over HTTP on the node's event loop.

    ``MetricsServer(node, listen="127.0.0.1:9411")``; ``await start()`` on
    the loop the node serves on (``start_metrics`` does it for a node run
    with ``node.start()``); ``address`` once listening; ``await close()``,
    or it closes when the node stops.
    One request per connection, a request head of at most 8 KiB read within
    10 s, at most 16 connections at once (more are closed unanswered).
    """

    max_head = 8192
    head_timeout = 10.0
    max_clients = 16

    def __init__(self, node: Any, listen: str = "127.0.0.1:9411"):
        from .server import _loopback, _split_listen
        self.node = node
        self.host, self.port = _split_listen(listen)
        if not _loopback(self.host):
            log.warning("metrics of node %s on %s: plain HTTP, no authentication "
                        "(counts and names only)", node.node_id, self.host)
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Future[None] | None = None
        self._clients = 0
        self.address: tuple[str, int] | None = None
        self.scrapes = 0
        self._registry = _registry(lambda: node_status(self.node))

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` once listening."""
        if self.address is None:
            raise RuntimeError("the metrics server is not listening yet")
        h, p = self.address
        return f"http://{'[' + h + ']' if ':' in h else h}:{p}/metrics"

    async def start(self) -> "MetricsServer":
        """Listen (on the running loop, the node's)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=self.max_head)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        self._watch = asyncio.ensure_future(self._close_with_node())
        log.info("node %s: metrics on %s", self.node.node_id, self.url)
        return self

    async def close(self) -> None:
        """Stop listening."""
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        self._watch = None
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def _close_with_node(self) -> None:
        # The endpoint lives as long as the node serves: it closes when the
        # node is asked to stop, or when the node's loop cancels its tasks.
        evt = getattr(self.node, "_stop_evt", None)
        try:
            if evt is not None:
                await evt.wait()
            else:
                await asyncio.get_running_loop().create_future()
        finally:
            if self._server is not None:
                self._server.close()
                self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= self.max_clients:
            writer.transport.abort()
            return
        self._clients += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ConnectionError):
                self._reply(writer, 400, "Bad Request", "a request head of at most "
                            f"{self.max_head} bytes, within {self.head_timeout} s\n")
                return
            if len(head) > self.max_head:
                self._reply(writer, 431, "Request Header Fields Too Large", "too long\n")
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(line) != 3 or not line[2].startswith("HTTP/1."):
                self._reply(writer, 400, "Bad Request", "not an HTTP/1.x request line\n")
                return
            method, target = line[0], line[1].split("?", 1)[0]
            if target != "/metrics":
                self._reply(writer, 404, "Not Found", "the metrics are at /metrics\n")
                return
            if method not in ("GET", "HEAD"):
                self._reply(writer, 405, "Method Not Allowed", "GET or HEAD\n",
                            extra="Allow: GET, HEAD\r\n")
                return
            self.scrapes += 1
            body = generate_latest(self._registry)  # here, on the node's loop
            self._reply(writer, 200, "OK", body, ctype=CONTENT_TYPE, head_only=method == "HEAD")
        finally:
            self._clients -= 1
            try:
                await asyncio.wait_for(writer.drain(), self.head_timeout)
                writer.close()
            except Exception:
                writer.transport.abort()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, code: int, reason: str, body: str | bytes, *,
               ctype: str = "text/plain; charset=utf-8", extra: str = "",
               head_only: bool = False) -> None:
        data = body.encode() if isinstance(body, str) else body
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
                     .encode("latin-1") + (b"" if head_only else data))


def start_metrics(node: Any, listen: str = "127.0.0.1:9411",
                  timeout: float = 30.0) -> MetricsServer:
    """A ``MetricsServer`` for ``node`` listening on its loop; for a node run
    by ``node.start()`` (a background thread), called from another thread.
    It stops with the node, or earlier with ``stop_metrics``."""
    loop = node._loop
    if loop is None or loop.is_closed() or threading.current_thread() is node._thread:
        raise RuntimeError("start_metrics needs a node started with node.start(), called "
                           "from another thread; on the node's loop, await "
                           "MetricsServer(node, listen).start()")
    ms = MetricsServer(node, listen)
    return asyncio.run_coroutine_threadsafe(ms.start(), loop).result(timeout)


def stop_metrics(ms: MetricsServer, timeout: float = 30.0) -> None:
    """Stop a server ``start_metrics`` made (from another thread)."""
    loop = ms.node._loop
    if loop is not None and not loop.is_closed():
        try:
            asyncio.run_coroutine_threadsafe(ms.close(), loop).result(timeout)
        except RuntimeError:  # the loop ended in between: the server ended with it
            pass

