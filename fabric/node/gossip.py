"""A node's fleet gossip: holding-index deltas in bounded batches, anti-entropy
pulls, membership (who is in the fleet and where), and the link policy.

Owns what a ``fabric.Node`` says and hears in ``GOSSIP`` frames
(docs/spec/protocol.md section 5):

- **Deltas** of this node's holding index, pushed to every gossiping link
  when the index grows, cut into messages of at most ``MAX_FACTS`` facts
  (and never more than one frame). Each carries the index's *epoch* (a
  random number drawn when the node starts), so a receiver's bookmark
  ``(epoch, version)`` of what it has seen from a link survives only as
  long as the version numbering it refers to.
- **Anti-entropy**: a node keeps, per origin node, a bookmark ``(epoch,
  version)`` of that node's index seen contiguously. A link pulls with it
  when it (re)connects (``{"pull": version, "epoch": epoch}``) and the other
  side starts that connection's pushes there (from 0 if the epoch is not
  its own: it restarted). Every ``interval`` seconds a node also pulls on
  one random link: on a live connection that only reports its bookmark
  (what was pushed since is in flight), which a node whose own link to the
  puller reconnects goes back to. Pushes wait a tick while a connection's
  buffer is full, so a peer catching up is never cut off as slow.
- **Membership**: every ``interval`` a node sends one random link a sample
  of at most ``MAX_MEMBERS`` members it knows (``[node id, URL, computes]``,
  itself first); the receiver merges them into its view (at most ``view``
  members, a random one replaced when full) and answers with its own
  sample. A node keeps links to its ``--peer`` URLs and to at most
  ``fanout`` members drawn at random from its view (*learned links*, not
  re-dialled when they fail: the member is forgotten until gossip names it
  again), so a fact crosses a fleet of N nodes in O(log N) relays.

Also here: which replies may leave the node (``shareable``: a ``recorded``
op's replies are neither served to other nodes nor announced), and the
warning for unauthenticated non-loopback links (``link_warning``).

May import ``fabric._core``, ``fabric.holders`` and ``fabric.node.protocol``;
the server calls it, never the other way round (it reaches the node only
through the ``Node`` object it is given).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

from .._core import ContentKey, ContentNotHeld, EvalRequest
from ..frames import FrameKind
from . import protocol as P
from .auth import GOSSIP, Grants

if TYPE_CHECKING:
    from .server import Node

__all__ = ["GossipConfig", "Membership", "Member", "FleetGossip", "MAX_FACTS", "MAX_MEMBERS",
           "check_members", "split_delta", "link_warning", "warn_link", "shareable", "is_loopback"]

log = logging.getLogger("fabric.node")

#: Facts in one delta message at most (40-odd bytes each: ~170 KiB).
MAX_FACTS = 4096
#: Members in one membership message at most.
MAX_MEMBERS = 32
#: The longest node id and URL a membership entry may carry.
MAX_NODE_ID = 128
MAX_URL = 256
# Bytes of a delta message besides its facts, and per fact, at most
# (msgpack map, origin id, ints; bin32 + holder id + array headers).
_DELTA_OVERHEAD = 64 + MAX_NODE_ID
_FACT_OVERHEAD = 8 + 32


class GossipConfig(NamedTuple):
    """How a node gossips.

    ``interval``: seconds between anti-entropy and membership exchanges
    (each with one random link); ``fanout``: learned links at most (beyond
    the ``--peer`` URLs; 0 = none); ``view``: members remembered at most;
    ``lease``: seconds a node waits for a key's lease holder to compute it
    before computing it itself (fabric.node.leases).
    """

    interval: float = 2.0
    fanout: int = 3
    view: int = 256
    lease: float = 30.0

    def check(self) -> "GossipConfig":
        for name in ("interval", "lease"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"GossipConfig.{name} must be a positive number of seconds, "
                                 f"not {v!r}")
        if isinstance(self.fanout, bool) or not isinstance(self.fanout, int) \
                or not 0 <= self.fanout <= 64:
            raise ValueError(f"GossipConfig.fanout must be an int in [0, 64], not "
                             f"{self.fanout!r}")
        if isinstance(self.view, bool) or not isinstance(self.view, int) \
                or not 1 <= self.view <= 65536:
            raise ValueError(f"GossipConfig.view must be an int in [1, 65536], not "
                             f"{self.view!r}")
        return self


class Member(NamedTuple):
    """A fleet member: its node id, the URL it listens on, whether it computes."""

    node: str
    url: str
    computes: bool


def check_members(body: Any) -> list[Member]:
    """The entries of a ``{"members": [...]}`` message, or ``ProtocolError``."""
    entries = body.get("members") if isinstance(body, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_MEMBERS:
        raise P.ProtocolError(f"a GOSSIP members message has at most {MAX_MEMBERS} entries")
    out = []
    for i, e in enumerate(entries):
        if (not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], str)
                or not 0 < len(e[0]) <= MAX_NODE_ID or not isinstance(e[1], str)
                or not 0 < len(e[1]) <= MAX_URL or not isinstance(e[2], bool)):
            raise P.ProtocolError(f"GOSSIP members[{i}] is not [node id (1..{MAX_NODE_ID} "
                                  f"chars), URL (1..{MAX_URL} chars), bool]")
        try:
            P.parse_node_url(e[1])
        except P.NodeURLError as exc:
            raise P.ProtocolError(f"GOSSIP members[{i}]: {exc}") from None
        out.append(Member(e[0], e[1], e[2]))
    return out


def split_delta(origin: str, epoch: int, start: int,
                facts: Iterable[tuple[ContentKey, str]], max_frame: int,
                keep: Callable[[ContentKey, str], bool] | None = None) -> list[dict[str, Any]]:
    """A delta of ``origin``'s index from version ``start`` (``facts`` are
    its facts from there, in order) as messages of at most ``MAX_FACTS``
    facts, each within ``max_frame`` payload bytes. With ``keep``, only the
    facts it keeps travel; the messages' versions still span the others, so
    the last message ends where ``facts`` do."""
    out: list[dict[str, Any]] = []
    batch: list[list[Any]] = []
    size = _DELTA_OVERHEAD
    v0 = pos = start
    for key, holder in facts:
        pos += 1
        if keep is not None and not keep(key, holder):
            continue
        fsize = _FACT_OVERHEAD + len(holder.encode())
        if batch and (len(batch) >= MAX_FACTS or size + fsize > max_frame):
            out.append({"origin": origin, "start": v0, "end": pos - 1, "facts": batch,
                        "epoch": epoch})
            v0 = pos - 1
            batch, size = [], _DELTA_OVERHEAD
        batch.append([key.digest, holder])
        size += fsize
    if batch:
        out.append({"origin": origin, "start": v0, "end": pos, "facts": batch,
                    "epoch": epoch})
    elif out:
        out[-1]["end"] = pos
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def link_warning(host: str, *, tls: bool, token: bool, trust: str = "none",
                 listening: bool = False) -> str | None:
    """The warning a node logs for a link to (or, ``listening``, a socket on)
    ``host`` that crosses the machine's boundary without TLS: with a bearer
    token (it travels in clear: whoever reads it can use it), or
    unauthenticated (no token, and claims not checked: trust ``"none"``).
    None when there is nothing to warn about."""
    if is_loopback(host) or tls:
        return None
    if token:
        if listening:
            return (f"listening on {host} with bearer tokens but without TLS: a client's "
                    f"token crosses the network in clear, and whoever reads it can use it "
                    f"(set up TLS: --tls-cert/--tls-key)")
        return (f"linking to {host} with a bearer token but without TLS: the token crosses "
                f"the network in clear, and whoever reads it can use it (use fabrics:// "
                f"and --tls-ca)")
    if trust != "none":
        return None
    if listening:
        return (f"listening on {host} without TLS or tokens and with trust 'none': anyone "
                f"who can reach it is served, and replies are not authenticated")
    return (f"linking to {host} without TLS or a token and with trust 'none': what this "
            f"node records from it is not authenticated (set up TLS, --peer-token or a "
            f"fleet key)")


def warn_link(url: str, *, tls: bool, token: bool, trust: str = "none",
              node: str = "?") -> str | None:
    """Log (WARNING, logger ``fabric.node``) and return ``link_warning``'s
    text for a link to the node at ``url``; None when it needs none."""
    u = P.parse_node_url(url)
    text = link_warning(u.host, tls=tls or u.tls, token=token, trust=trust)
    if text:
        log.warning("node %s: %s", node, text)
    return text


def shareable(request: EvalRequest, via: Iterable[str]) -> None:
    """Raise ``ContentNotHeld`` if the reply to ``request`` may not go to the
    node(s) in ``via``: a ``recorded`` op's replies (an LLM or tool call)
    are replayed where they were recorded, never served to other nodes."""
    if request.sharing == "recorded" and via:
        raise ContentNotHeld(f"{request.key} ({request.op!r}) is a 'recorded' reply: "
                             f"replayed where it was recorded, never served to other nodes")


def recorded_identity(identity: bytes | None) -> bool:
    """Whether recorded request identity bytes name the ``recorded`` sharing
    class (key scheme 2 puts it last: a fixstr of 8 bytes)."""
    if not identity or not identity.endswith(b"\xa8recorded"):
        return False
    from ..cassette_cli import RequestDecodeError, identity_fields
    try:
        _scheme, fields = identity_fields(identity)
    except RequestDecodeError:
        return False
    return fields.get("sharing") == "recorded"


class Membership:
    """The members a node knows (sans-IO): a bounded view with random
    replacement, samples to send, and candidates for learned links."""

    def __init__(self, me: Member | None, *, view: int = 256, rng: random.Random | None = None):
        self.me = me
        self.view = view
        self.rng = rng or random.Random()
        self.members: dict[str, Member] = {}

    def learn(self, entries: Iterable[Member]) -> list[str]:
        """Merge ``entries``; returns the ids that were new."""
        new = []
        for m in entries:
            if self.me is not None and (m.node == self.me.node or m.url == self.me.url):
                continue
            old = self.members.get(m.node)
            if old == m:
                continue
            if old is None:
                if len(self.members) >= self.view:
                    del self.members[self.rng.choice(list(self.members))]
                new.append(m.node)
            self.members[m.node] = m
        return new

    def forget(self, node: str) -> None:
        self.members.pop(node, None)

    def sample(self, k: int = MAX_MEMBERS) -> list[Member]:
        """This node (when it has a URL) and up to ``k - 1`` members at random."""
        head = [self.me] if self.me is not None else []
        rest = list(self.members.values())
        if len(rest) > k - len(head):
            rest = self.rng.sample(rest, k - len(head))
        return head + rest

    def candidates(self, linked: set[str]) -> list[Member]:
        """Members not linked yet (by node id or URL), in random order."""
        out = [m for m in self.members.values() if m.node not in linked and m.url not in linked]
        self.rng.shuffle(out)
        return out


class FleetGossip:
    """The gossip of one ``Node`` (runs on the node's event loop)."""

    def __init__(self, node: "Node", config: GossipConfig | None = None):
        self.node = node
        if config is not None and not isinstance(config, GossipConfig):
            raise TypeError(f"gossip must be a fabric.node.gossip.GossipConfig, not "
                            f"{type(config).__name__}")
        self.config = (config or GossipConfig()).check()
        self.rng = random.Random()
        #: Changes whenever the holding index's version numbering does (a new process).
        self.epoch = self.rng.getrandbits(62)
        self.members = Membership(None, view=self.config.view, rng=self.rng)
        # Per origin node id: (epoch, version) of its index seen contiguously,
        # on any channel (what this node pulls with).
        self.seen: dict[str, tuple[int, int]] = {}
        # Per node id: the version of this node's index it last reported having.
        self.acked: dict[str, int] = {}
        # Connections (the objects, not their ids: an id is reused once a
        # closed connection is freed) that pulled once
        self._pulled_once: set[Any] = set()
        self._link_sessions: dict[int, int] = {}  # link -> its reconnect count
        self.learned: set[str] = set()  # URLs of learned links
        self._next_tick = 0.0
        self._pulled: set[Any] = set()  # connections whose pull is not answered yet
        #: Bytes a connection's write buffer may hold before pushes wait a tick.
        self.push_buffer = min(8 << 20, node.limits.output_buffer // 4)
        # This node's keys whose request says 'recorded' (never announced),
        # checked for every own fact up to index version _checked.
        self._private: set[ContentKey] = set()
        self._checked = 0
        self._checking = False
        self.counters = {k: 0 for k in (
            "messages_out", "messages_in", "bytes_out", "facts_out", "facts_in",
            "facts_new", "pulls_out", "pulls_in", "members_out", "members_in",
            "links_learned", "links_dropped", "recorded_withheld", "refused_in")}
        # Connections whose GOSSIP was dropped for want of the grant (logged once each).
        self._refused: set[Any] = set()

    # -- lifecycle -------------------------------------------------------------
    def started(self, bound: tuple[str, int], tls: bool) -> None:
        """The node listens on ``bound``; it is advertised to members unless it
        is a wildcard address (0.0.0.0, ::), which no other node can dial."""
        host, port = bound
        if host in ("0.0.0.0", "::", ""):
            self.members.me = None
            return
        h = f"[{host}]" if ":" in host else host
        url = f"{'fabrics' if tls else 'fabric'}://{h}:{port}"
        self.members.me = Member(self.node.node_id, url, self.node.home is not None)

    def stats(self) -> dict[str, Any]:
        """Counters, members known, and the node ids of live links."""
        return {**self.counters, "epoch": self.epoch, "members": len(self.members.members),
                "links": sorted(cl.node for cl in self.node._clients
                                if cl.status == "connected" and cl.node),
                "computing": sorted(self.computing_links())}

    def _count_out(self, data: bytes, kind: str = "") -> None:
        self.counters["messages_out"] += 1
        self.counters["bytes_out"] += len(data)
        if kind:
            self.counters[kind] += 1

    # -- what leaves the node --------------------------------------------------
    def _recorded_in(self, start: int, end: int) -> set[ContentKey]:
        """This node's own facts between index versions ``start`` and ``end``
        whose reply was recorded under the ``recorded`` sharing class (read
        from the request the ledger keeps beside it: ~2 us a key)."""
        me, cassette = self.node.node_id, self.node.cassette
        out = set()
        for k, h in self.node.fabric.holders.delta_since(start).facts[:end - start]:
            if h == me:
                try:
                    if recorded_identity(cassette.request_bytes(k)):
                        out.add(k)
                except (ValueError, OSError, TypeError):
                    pass  # a key without a readable request is shared as before
        return out

    def _check_recorded(self) -> None:
        """Advance ``_checked`` (the index version up to which own facts were
        checked for ``recorded``): inline for a few facts, on a worker thread
        for many (a restart's ledger), so the loop is never held for long.
        Nothing past ``_checked`` is pushed."""
        version = self.node.fabric.holders.version
        start = self._checked
        if start >= version or self._checking:
            return
        if version - start <= 1024:
            self._private |= self._recorded_in(start, version)
            self._checked = version
            return
        self._checking = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self._recorded_in, start, version)

        def done(f: asyncio.Future[set[ContentKey]]) -> None:
            self._checking = False
            if not f.cancelled() and f.exception() is None:
                self._private |= f.result()
                self._checked = version
                if self.node._gossip_wake is not None:
                    self.node._gossip_wake.set()

        fut.add_done_callback(done)

    def _deltas(self, since: int, limit: int, max_frame: int,
                to: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Messages carrying this node's facts between versions ``since`` and
        ``limit`` for node ``to``, and the version they reach. Left out: a
        fact that this node holds a ``recorded`` reply (never announced) and
        ``to``'s own holdings (it knows them); versions still count them, so
        bookmarks hold."""
        all_facts = self.node.fabric.holders.delta_since(since).facts[:limit - since]
        me, private = self.node.node_id, self._private

        def keep(k: ContentKey, h: str) -> bool:
            if h == to:
                return False
            if h == me and k in private:
                self.counters["recorded_withheld"] += 1
                return False
            return True

        return (split_delta(me, self.epoch, since, all_facts, max_frame, keep),
                since + len(all_facts))

    def push(self) -> None:
        """Send every gossiping link and connection what it has not had yet."""
        node = self.node
        self._check_recorded()
        version = self._checked  # what was checked for 'recorded' may go out
        # A node this one links to gets the pushes on that link only, not also
        # on the connection it made here (a pull on it is still answered).
        linked = {cl.node for cl in node._clients if cl.status == "connected" and cl.node}
        for c in list(node._conns):
            if c not in self._pulled_once:
                continue  # its pushes start where its first pull says, not at 0
            if c.remote_node in linked and c not in self._pulled:
                continue
            self._pulled.discard(c)
            if c.gossip and c.gossip_sent < version and not c.closed:
                msgs, end = self._deltas(c.gossip_sent, version, c.max_frame, c.remote_node)
                transport = c.writer.transport
                for body in msgs:
                    if transport.get_write_buffer_size() > self.push_buffer:
                        break  # the rest next tick, once the peer has read some
                    data = c.enc.encode_value(FrameKind.GOSSIP, body)
                    c.send(data)
                    self._count_out(data)
                    self.counters["facts_out"] += len(body["facts"])
                    c.gossip_sent = body["end"]
                else:
                    c.gossip_sent = end
        # What a node has had through the connection it made here also counts
        # for this node's own link to it (the same index, the same versions):
        # a link made later does not start again from 0. So does what it last
        # reported having (its pulls' bookmark, acked), once that connection
        # ended: a link made then starts there, not at 0.
        had: dict[str, int] = dict(self.acked)
        for c in node._conns:
            if c.gossip and c.remote_node:
                had[c.remote_node] = max(had.get(c.remote_node, 0), c.gossip_sent)
        for cl in node._clients:
            sessions = cl.stats_counters["reconnects"]
            if self._link_sessions.setdefault(id(cl), sessions) != sessions:
                # The link reconnected: what went into the old connection may
                # be lost; go back to what the node last reported having.
                self._link_sessions[id(cl)] = sessions
                cl.gossip_sent = min(cl.gossip_sent, self.acked.get(cl.node or "", 0))
            if cl.node in had and cl.gossip_sent < had[cl.node]:
                cl.gossip_sent = had[cl.node]
            if cl.gossip_sent < version and cl.status == "connected":
                msgs, end = self._deltas(cl.gossip_sent, version,
                                         cl._enc.limits.max_frame_payload_bytes, cl.node)
                ok = True
                sent = 0  # the link writes on its own loop: count what this tick queued
                for body in msgs:
                    w = cl._writer
                    if sent > self.push_buffer or (
                            w is not None
                            and w.transport.get_write_buffer_size() > self.push_buffer):
                        ok = False  # the rest next tick, once the peer has read some
                        break
                    ok = cl._send_gossip(body)
                    if not ok:
                        break
                    n = len(node_bytes(body))
                    sent += n
                    self.counters["messages_out"] += 1
                    self.counters["bytes_out"] += n
                    self.counters["facts_out"] += len(body["facts"])
                    cl.gossip_sent = body["end"]
                if ok:
                    cl.gossip_sent = end
                    if node._resume.get(cl.url, (0, False))[1]:
                        # A redelivery goes out as any delta (facts are a set).
                        node._resume.pop(cl.url, None)
                        node._stat("gossip_redelivered")

    # -- what comes in ---------------------------------------------------------
    def _apply(self, body: dict[str, Any], sender: str | None) -> None:
        facts = body["facts"]
        if len(facts) > MAX_FACTS:
            raise P.ProtocolError(f"a GOSSIP delta carries at most {MAX_FACTS} facts, not "
                                  f"{len(facts)}")
        try:
            parsed = [(P.key_of(k), h) for k, h in facts
                      if isinstance(h, str) and 0 < len(h) <= MAX_NODE_ID]
        except (P.ProtocolError, TypeError, ValueError) as exc:
            raise P.ProtocolError(f"a malformed GOSSIP delta: {exc}") from None
        new = self.node.fabric.holders.apply(parsed)
        if log.isEnabledFor(logging.DEBUG):  # one line per delta (bench and tests read it)
            log.debug("node %s: gossip delta from %s: %d fact(s), %d new, %d B",
                      self.node.node_id, sender, len(parsed), new,
                      len(P.canonical_bytes(body)) + 16)  # (+ the frame header)
        self.counters["facts_in"] += len(parsed)
        self.counters["facts_new"] += new
        self.node._stat("gossip_facts_in", len(parsed))
        if new and self.node._gossip_wake is not None:
            self.node._gossip_wake.set()

    @staticmethod
    def _is_delta(body: Any) -> bool:
        return (isinstance(body, dict) and {"origin", "start", "end", "facts"} <= set(body)
                <= {"origin", "start", "end", "facts", "epoch"}
                and isinstance(body["facts"], list) and isinstance(body["start"], int)
                and isinstance(body["end"], int) and isinstance(body.get("epoch", 0), int))

    def on_conn(self, conn: Any, body: Any) -> None:
        """A GOSSIP frame from an accepted connection (a client or a node's
        link). Its principal needs the grant ``node.gossip`` (else it is
        dropped, counted in ``refused_in`` and logged once a connection): a
        members message names addresses this node may link to, presenting
        its peer token there, and deltas steer where it asks for content."""
        if not Grants.allows(conn.grants, GOSSIP):
            # Dropped, not an ERROR: a node linking here as such a principal
            # still gets its content (its link's pull would otherwise cut it).
            self.counters["refused_in"] += 1
            if conn not in self._refused:
                self._refused.add(conn)
                log.warning("node %s: dropping GOSSIP from %s (principal %r): it needs the "
                            "grant %r", self.node.node_id, conn.peer, conn.principal, GOSSIP)
            return
        self.counters["messages_in"] += 1
        if isinstance(body, dict) and "pull" in body and set(body) <= {"pull", "epoch"} \
                and isinstance(body["pull"], int) and not isinstance(body["pull"], bool) \
                and isinstance(body.get("epoch", 0), int):
            self.counters["pulls_in"] += 1
            version = self.node.fabric.holders.version
            v = max(0, min(body["pull"], version))
            if "epoch" in body and body["epoch"] != self.epoch:
                v = 0  # a bookmark of another incarnation's numbering
            if conn.remote_node and "epoch" in body:
                self._note_ack(conn.remote_node, v)
            if conn in self._pulled_once and conn.gossip:
                # A later pull on a live connection reports the puller's
                # bookmark; what was pushed on it since is in flight (TCP
                # delivers it or the connection ends), so nothing is re-sent.
                return
            self._pulled_once.add(conn)
            conn.gossip = True
            conn.gossip_sent = v
            self._pulled.add(conn)
            if self.node._gossip_wake is not None:
                self.node._gossip_wake.set()
        elif self._is_delta(body):
            self._apply(body, conn.remote_node)
            self._note_seen(body)
        elif isinstance(body, dict) and set(body) == {"members"}:
            self.counters["members_in"] += 1
            self.members.learn(check_members(body))
            # answer with this node's own sample (a push-pull exchange)
            data = conn.enc.encode_value(FrameKind.GOSSIP, self._members_body())
            conn.send(data)
            self._count_out(data, "members_out")
        else:
            raise P.ProtocolError("a GOSSIP payload is a delta, a pull or a members list")

    def on_link(self, client: Any, body: Any) -> None:
        """A GOSSIP frame from one of this node's links (the linked node's side)."""
        if client._closed:
            return
        self.counters["messages_in"] += 1
        if self._is_delta(body):
            try:
                self._apply(body, client.node)
            except P.ProtocolError as exc:  # dropped, as a link's junk always is
                log.warning("node %s: link %s sent %s", self.node.node_id, client.url, exc)
                return
            self._note_seen(body)
        elif isinstance(body, dict) and set(body) == {"members"}:
            self.counters["members_in"] += 1
            try:
                self.members.learn(check_members(body))
            except P.ProtocolError as exc:
                log.warning("node %s: link %s sent %s", self.node.node_id, client.url, exc)
        # anything else from a linked node is ignored (the link is ours, not theirs)

    def _note_seen(self, body: dict[str, Any]) -> None:
        """Advance the bookmark of the delta's origin (on whichever channel it
        came): the origin's epoch and the version seen contiguously."""
        origin, epoch = body["origin"], body.get("epoch")
        if not isinstance(origin, str) or epoch is None:
            return
        e, v = self.seen.get(origin, (None, 0))
        if epoch != e:
            v = 0
        if body["start"] <= v:
            v = max(v, body["end"])
        if origin not in self.seen and len(self.seen) >= 4 * self.config.view:
            del self.seen[self.rng.choice(list(self.seen))]
        self.seen[origin] = (epoch, v)

    def _note_ack(self, node: str, v: int) -> None:
        """``node`` reported having this node's index up to version ``v``."""
        if node not in self.acked and len(self.acked) >= 4 * self.config.view:
            del self.acked[self.rng.choice(list(self.acked))]
        self.acked[node] = v

    def pull_body(self, node: str | None) -> dict[str, Any]:
        """What a pull to ``node`` says: the bookmark of its index."""
        epoch, seen = self.seen.get(node or "", (None, 0))
        return {"pull": seen} if epoch is None else {"pull": seen, "epoch": epoch}

    def _members_body(self) -> dict[str, Any]:
        return {"members": [list(m) for m in self.members.sample(MAX_MEMBERS)]}

    # -- the periodic part -----------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Called by the node's gossip pump: push, and every ``interval`` one
        anti-entropy pull and one membership exchange with a random link,
        learned links dropped and dialled."""
        self.push()
        now = time.monotonic() if now is None else now
        if now < self._next_tick:
            return
        self._next_tick = now + self.config.interval * self.rng.uniform(0.75, 1.25)
        node = self.node
        live_conns = set(node._conns)
        self._pulled_once &= live_conns
        self._refused &= live_conns
        self._pulled &= live_conns
        for cl in list(node._clients):  # learned links that ended are dropped
            if cl.url in self.learned and cl.status != "connected" and (
                    cl._closed or cl._task.done()):
                node._clients.remove(cl)
                self._link_sessions.pop(id(cl), None)
                self.learned.discard(cl.url)
                self.counters["links_dropped"] += 1
                if cl.node:
                    self.members.forget(cl.node)
        live = [cl for cl in node._clients if cl.status == "connected"]
        if live:
            cl = self.rng.choice(live)
            for body, kind in ((self._members_body(), "members_out"),
                               (self.pull_body(cl.node), "pulls_out")):
                if cl._send_gossip(body):
                    self._count_out(node_bytes(body), kind)
        self._dial()

    def linked(self) -> set[str]:
        out = set()
        for cl in self.node._clients:
            out.add(cl.url)
            if cl.node:
                out.add(cl.node)
        return out

    def _dial(self) -> None:
        room = self.config.fanout - len(self.learned)
        if room <= 0 or self.node._stop_evt is None or self.node._stop_evt.is_set():
            return
        gov = self.node.fabric.governor
        cands = self.members.candidates(self.linked())
        if gov is not None:  # never dial a refused member, nor one still backing off
            cands = [m for m in cands if gov.policy_refusal(m.node, m.url) is None
                     and gov.wait_time(m.node) <= 0 and gov.wait_time(m.url) <= 0]
        for m in cands[:room]:
            self.learned.add(m.url)
            self.counters["links_learned"] += 1
            self.node._link(m.url, learned=True)

    def computing_links(self) -> dict[str, Any]:
        """Node id -> live link client, for linked members that compute."""
        out = {}
        for cl in self.node._clients:
            m = self.members.members.get(cl.node or "")
            if cl.status == "connected" and m is not None and m.computes:
                out[cl.node] = cl
        return out


def node_bytes(body: dict[str, Any]) -> bytes:
    """The canonical bytes of a message body (its size, for counters)."""
    return P.canonical_bytes(body)
