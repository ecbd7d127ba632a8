"""Content-addressed resolution: a fleet of cassettes presented as one fabric.

``ContentAddressedFabric(node, cassette, peers, home, holders)`` answers a
request from, in order:

1. its own cassette (a *local hit*: no peer is contacted);
2. the peers announced as holders of the request's key in the holding index
   (healthy ones first, then the ones that failed before), then the other
   peers (healthy ones first), one at a time;
3. its home site (which computes).

The first success is recorded in the local cassette and announced in the
holding index, so this node becomes a holder too. Errors are never
recorded. When no peer answers and there is no home (or the request's
``consistency`` is ``"no-home"``), it fails closed with ``NoHolderError``
whose ``.attempts`` lists every peer asked and what it answered.

This module holds the miss: one sans-IO state machine, ``Resolution``,
says which source to ask next and what to make of each answer; the sync
``evaluate``, the async ``aevaluate`` and the ``stream`` drivers of
``ContentAddressedFabric`` do the calling, waiting and recording. The hit
is the C base's (``fabric._core.ContentAddressedFabricCore``), which hands
every miss to ``ContentAddressedFabric._miss``. See docs/architecture.md.

Timeouts. A fabric whose class sets ``honours_timeout = True`` takes
``timeout=`` (seconds) in ``evaluate``, ``stream`` and their async twins and
gives up within it by itself (raising ``DeadlineExceeded``); such a peer is
called with the time left, in the caller's thread. Any other peer that must
answer within a timeout is called on a worker thread of its own small pool:
at most ``max_peer_calls`` (default 8) calls to one peer run at once, and a
peer at that bound is skipped as *busy* (``PeerBusy`` in
``NoHolderError.attempts`` and in ``explain()``), so a hung peer costs only
its own calls. A peer called without a timeout (``peer_timeout=None`` and
no deadline) is called directly, with no thread hand-off.

This module may import ``fabric._core``, ``fabric.fabrics`` and
``fabric.holders``; nothing imports it but the package's ``__init__``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import html
import itertools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from . import _core
from ._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                    EvalRequest, FabricUnavailable, NoHolderError, RemoteError)
from .fabrics import (ContentPeer, _check_cassette, _check_timeout, _FabricBase, _pending,
                      _record_late, _warn_torn)
from .replies import (DIAG, ITEM, AsyncEvalStream, EvalReply, EvalStream, _aevents_from_sync,
                      _close_quietly, _collect, _events_of, _Interrupt, _replay_events,
                      _stream_writer, _under)
from .claims import ClaimRejected, FleetKeys, TrustedKeys, verified_events
from .governor import PeerGovernor, PeerSkipped
from .holders import HoldingIndex
from .ops import Op

__all__ = ["ContentAddressedFabric", "Explanation", "PeerBusy", "Resolution", "Ask", "Plan"]


class PeerBusy(FabricUnavailable):
    """A peer was skipped: as many calls to it as allowed are still running."""


def describe_answer(exc: BaseException) -> str:
    """What a source answered, for ``explain()`` and ``NoHolderError``."""
    if isinstance(exc, ContentNotHeld):
        return "not held"
    if isinstance(exc, PeerBusy):
        return f"busy: {exc}"
    if isinstance(exc, PeerSkipped):
        return f"skipped: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def honours_timeout(fabric: Any) -> bool:
    """Whether ``fabric`` takes ``timeout=`` and gives up within it itself."""
    return getattr(type(fabric), "honours_timeout", False) is True


def _check_home(home: Any) -> None:
    """A ``TypeError`` that says what is wrong when ``home`` is neither None
    nor a fabric (an object with ``evaluate``), before a miss finds out."""
    if home is not None and not callable(getattr(home, "evaluate", None)):
        raise TypeError(f"home must be a fabric (an object with evaluate(), as "
                        f"fabric.LocalFabric() or fabric.connect(url)) or None, "
                        f"not {type(home).__name__}")


def peer_order(key: ContentKey, peers: dict[str, Any],
               holders: HoldingIndex | None) -> list[tuple[str, Any, bool]]:
    """The peers in the order a miss of ``key`` asks them: ``(node, serve,
    announced)`` for the announced holders (as the index sorts them, healthy
    first), then the other peers healthy first, each group in the order given."""
    if holders is None:
        return _peer_order(key, peers, None, None, None)
    return _peer_order(key, peers, holders, holders.holders_of, holders.failures)


def _peer_order(key: ContentKey, peers: dict[str, Any], holders: HoldingIndex | None,
                holders_of: Callable[[ContentKey], list[str]] | None,
                failures_of: Callable[[str], int | None] | None) -> list[tuple[str, Any, bool]]:
    """``peer_order`` over the index's ``holders_of`` and ``failures`` as
    given (a plan's: its fact store's, whose list of two holders or more is
    not sorted yet; the index then sorts it)."""
    if not peers:
        return []
    order = []
    seen: set[str] | tuple[()] = ()
    held_by = holders_of(key) if holders_of is not None else None
    if held_by:
        if len(held_by) > 1:
            held_by = holders.holders_of(key)  # type: ignore[union-attr]
        seen = set()
        for h in held_by:
            serve = peers.get(h)
            if serve is not None and h not in seen:
                order.append((h, serve, True))
                seen.add(h)
    if len(peers) - len(seen) < 2:  # one other peer at most: no order to work out
        for name, serve in peers.items():
            if name not in seen:
                order.append((name, serve, False))
        return order
    late = []
    for name, serve in peers.items():
        if name in seen:
            continue
        if failures_of is not None and failures_of(name):
            late.append((name, serve, False))
        else:
            order.append((name, serve, False))
    return order + late


class Ask(NamedTuple):
    """The next source to ask: ``stage`` is ``"holder"``, ``"peer"`` or
    ``"home"``; ``timeout`` the seconds it may take (None: no limit)."""

    name: str
    stage: str
    target: Any
    timeout: float | None


# The states of a Resolution. _HELD is _DONE after a reply was held (its
# last step, "computed" or "hit", is then read off the source asked).
_OPEN, _ASKING, _HOLDING, _STREAMING, _DONE, _HELD = range(6)
_HOME = ("home", "home", False)
_HOME_HELD = ("home", None, _HOME)  # the trail of a miss that home answered at once
#: The resolution's decisions at DEBUG (which source is asked, why it moved
#: on, where the reply came from); a peer marked failed at WARNING. Records
#: name keys, ops, nodes and what a source answered, never arguments.
log = logging.getLogger("fabric.resolving")
_DEBUG = logging.DEBUG

# An Ask made without NamedTuple's Python-level __new__ (every miss makes one).
_new_ask = tuple.__new__
# Every reply the resolution accepts is one (fabric.EvalReply, or a subclass).
_ReplyBase = _core.EvalReply


class Plan:
    """What every resolution of one fabric shares: this node's id, its peers
    (node id -> serve fabric, in the order given), the holding index, home,
    the per-peer timeout, the governor, the verifier of peers' claims and
    the clock. A fabric keeps one and changes it in place (``add_peer``),
    so a miss copies none of it.

    It also holds what ``ContentAddressedFabric``'s miss reads besides:
    home when there is no peer (``_direct``), the fabric class's ``_hold``
    and the counters' ``add`` (``_count``), and the trails ``explain()``
    shows. A miss reads them here, in slots, rather than off the fabric,
    whose attributes (a subclass of a C type) Python reads the slow way.
    Nothing here refers to the fabric: ``_hold`` is the class's function,
    called with the fabric (``hold(fabric, key, reply, request)``), not a
    method bound to it, so a fabric the user drops is freed at once by
    reference counting (fabric -> plan -> bound method -> fabric was a
    cycle, left to the cyclic collector with the cassette open).
    """

    __slots__ = ("node", "peer_timeout", "governor", "trust", "clock", "_home_ask",
                 "_holders", "_announce", "_holders_of", "_failures_of", "_holds", "_peers",
                 "_lone", "_direct", "_hold", "_count", "_trails", "_trails_old", "_remember",
                 "_home_names")

    _holders: HoldingIndex | None
    _announce: Callable[[ContentKey, str], Any] | None
    _holders_of: Callable[[ContentKey], list[str]] | None
    _failures_of: Callable[[str], int | None] | None
    _holds: Callable[[ContentKey, str], bool] | None
    _lone: tuple[tuple[tuple[str, Any, bool]], tuple[tuple[str, Any, bool]]] | None
    _direct: Any
    _home_names: bool
    _hold: Callable[[Any, ContentKey, EvalReply, EvalRequest], None] | None
    _count: Callable[[str], None] | None
    _trails: dict[ContentKey, tuple]
    _trails_old: dict[ContentKey, tuple]

    def __init__(self, node: str, peers: dict[str, Any], holders: HoldingIndex | None,
                 home: Any, peer_timeout: float | None = None,
                 governor: PeerGovernor | None = None,
                 trust: FleetKeys | TrustedKeys | None = None,
                 clock: Callable[[], float] = time.monotonic, remember: int = 256):
        self.node = node
        self._home_ask = _new_ask(Ask, ("home", "home", None, None))
        self.peers = peers
        self.holders = holders
        self.governor = governor
        self.trust = trust
        self.peer_timeout = peer_timeout
        self.clock = clock
        self.home = home
        self._hold = self._count = None
        # The trails explain() shows, of at least the last `remember`
        # resolutions (at most twice that): two generations of dicts, the
        # newer one replacing the older when it is full. No lock: a trail
        # lost to a race between two threads is only a shorter explain().
        self._remember = max(1, remember)
        self._trails = {}
        self._trails_old = {}

    @property
    def peers(self) -> dict[str, Any]:
        return self._peers

    @peers.setter
    def peers(self, peers: dict[str, Any]) -> None:
        # With one peer the order to ask is that peer, announced as a holder
        # of the key or not: both orders are made once, here.
        self._peers = peers
        if len(peers) == 1:
            ((name, serve),) = peers.items()
            self._lone = (((name, serve, False),), ((name, serve, True),))
        else:
            self._lone = None
        self._direct = None if peers else self._home_ask.target

    @property
    def holders(self) -> HoldingIndex | None:
        return self._holders

    @holders.setter
    def holders(self, holders: HoldingIndex | None) -> None:
        # Every miss announces, and one with peers reads the holders of its
        # key: for a HoldingIndex itself (not a subclass, which may do these
        # its own way) the resolution calls its fact store and reads its
        # failure counts directly, one Python frame fewer each.
        self._holders = holders
        self._holds = None
        if holders is None:
            self._announce = self._holders_of = self._failures_of = None
        elif type(holders) is HoldingIndex:
            store = holders._store
            self._announce = store.add
            self._holders_of = store.holders_of  # sorted by the index only when >= 2
            self._failures_of = holders._failures.get  # (a dict changed in place, never replaced)
            # Whether one holder holds a key: no look at the key at all when
            # the index never heard of that holder.
            self._holds = store.has
        else:
            self._announce = holders.announce
            self._holders_of = holders.holders_of
            self._failures_of = holders.failures

    @property
    def home(self) -> Any:
        return self._home_ask.target

    @home.setter
    def home(self, home: Any) -> None:
        # Asking home without a deadline is the same Ask every time.
        self._home_ask = _new_ask(Ask, ("home", "home", home, None))
        self._direct = None if self._peers else home
        # A home that may pass a miss on to another node in its stead (a
        # node's LeasedHome: the key's lease holder) says which node answered
        # in its reply's source; any other home's reply is "home".
        self._home_names = getattr(type(home), "names_sources", False) is True


class Resolution:
    """One miss being resolved: which source next, and what each answered.

    Sans-IO: it calls no peer and touches no cassette, so the sync, async
    and stream drivers share it. A driver loops::

        ask = res.next()              # or raises the final error
        ... call ask.target within ask.timeout ...
        res.answered(reply)           # a reply to hold (record it), or None: ask next
        res.failed(exc)               # True: raise exc (home's error); False: ask next
        res.busy(n) / res.timed_out() # the source was skipped / did not answer in time

    and, once the reply it got from ``answered`` is recorded, ``held()``
    announces it and gives the reply with its source. A stream's driver
    calls ``started()`` once the source gave its first item, ``check(items)``
    before each event, then ``held()`` at its end or ``broke(exc, items)``.

    ``holders`` is the holding index (read for the order, told of failures
    and of the new holding); ``governor`` a ``PeerGovernor`` (None: every
    peer is asked), which passes over a refused peer (the skip is an
    attempt, reported like an answer) and is told of each peer's failures
    and successes; ``clock`` the monotonic clock (for tests).

    A fabric makes its resolutions with ``Resolution.of(plan, request,
    timeout)`` over the ``Plan`` it keeps. (A ``ContentAddressedFabric``
    with a home and no peer asks home without one when there is nothing to
    resolve: see ``ContentAddressedFabric._miss``.) A miss home answers
    allocates nothing but the resolution itself: the peer
    order is worked out only when there are peers, the list of attempts and
    the steps of ``explain()`` only when a source was passed over, and the
    ``Ask`` for home without a deadline is the plan's.
    """

    __slots__ = ("request", "key", "t_end", "source", "outcome", "_plan", "_attempts",
                 "_steps", "_order", "_idx", "_cur", "_state", "_deadline", "_debug")

    def __init__(self, request: EvalRequest, key: ContentKey, *, node: str,
                 peers: dict[str, Any], holders: HoldingIndex | None, home: Any,
                 peer_timeout: float | None = None, timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 governor: PeerGovernor | None = None,
                 trust: FleetKeys | TrustedKeys | None = None):
        self._start(Plan(node, peers, holders, home, peer_timeout, governor, trust, clock),
                    request, key, timeout)

    @classmethod
    def of(cls, plan: Plan, request: EvalRequest, timeout: float | None) -> Resolution:
        """A resolution of ``request`` over ``plan`` (bounded by ``timeout``
        seconds as well as by the request's deadline)."""
        res = _new_resolution(cls)
        res._start(plan, request, request.key, timeout)
        return res

    @classmethod
    def _asking_home(cls, plan: Plan, request: EvalRequest, key: ContentKey) -> Resolution:
        """A resolution (no deadline) as ``next()`` leaves it when it asks home
        at once, there being no peer: where a miss that called home without
        one (``ContentAddressedFabric._miss``) takes up home's error."""
        res = _new_resolution(cls)
        res._start(plan, request, key, None)
        res._state = _ASKING  # (its source, _cur, is home from the start)
        return res

    def _start(self, plan: Plan, request: EvalRequest, key: ContentKey,
               timeout: float | None) -> None:
        self._plan = plan
        self.request = request
        self.key = key
        deadline = request.deadline
        if timeout is not None and (deadline is None or timeout < deadline):
            deadline = timeout
        self._deadline = deadline
        self.t_end = None if deadline is None else plan.clock() + deadline
        self.source: str | None = None
        self.outcome: str | None = None  # the counter of a success
        self._attempts: list[tuple[str, BaseException]] | None = None
        self._steps: list[tuple[str, str, str]] | None = None  # between "local" and the end
        self._order: Any = None  # the peers in the order to ask them, worked out on first use
        self._idx = 0
        self._cur: tuple[str, str, bool] = _HOME
        self._state = _OPEN
        self._debug = log.isEnabledFor(_DEBUG)

    # -- what it knows -------------------------------------------------------------
    @property
    def node(self) -> str:
        """This node's id."""
        return self._plan.node

    @property
    def home(self) -> Any:
        """The home fabric (None: none)."""
        return self._plan.home

    @property
    def holders(self) -> HoldingIndex | None:
        """The holding index."""
        return self._plan.holders

    @property
    def governor(self) -> PeerGovernor | None:
        """The peer governor (None: every peer is asked)."""
        return self._plan.governor

    @property
    def peer_timeout(self) -> float | None:
        """Seconds each peer call may take (None: no limit but the deadline)."""
        return self._plan.peer_timeout

    @property
    def attempts(self) -> list[tuple[str, BaseException]]:
        """``(peer, what it answered)`` for every peer asked or passed over, in order."""
        if self._attempts is None:
            self._attempts = []
        return self._attempts

    @property
    def steps(self) -> list[tuple[str, str, str]]:
        """The trail ``explain()`` shows: ``(stage, target, outcome)`` each,
        starting with the local miss (a new list each time)."""
        return _trail_steps(self._plan.node, self._trail())

    def _trail(self) -> tuple[str | None, tuple | None, tuple[str, str, bool] | None]:
        """What ``explain()`` keeps of this resolution (the steps, compactly):
        ``(source, steps between the local miss and the end, the source that
        gave the held reply or None)``."""
        steps = self._steps
        return (self.source, tuple(steps) if steps else None,
                self._cur if self._state == _HELD else None)

    def _step(self, stage: str, name: str, outcome: str) -> None:
        if self._steps is None:
            self._steps = [(stage, name, outcome)]
        else:
            self._steps.append((stage, name, outcome))

    def _attempt(self, name: str, exc: BaseException) -> None:
        if self._attempts is None:
            self._attempts = [(name, exc)]
        else:
            self._attempts.append((name, exc))

    # -- asking -----------------------------------------------------------------
    def _expect(self, state: int, what: str) -> None:
        if self._state != state:
            raise RuntimeError(f"Resolution.{what}(): " + {
                _OPEN: "no source is being asked (call next() first)",
                _ASKING: "a source is being asked (report its answer first)",
                _HOLDING: "the reply is being recorded (call held())",
                _STREAMING: "a stream is being relayed",
                _DONE: "the resolution is finished",
                _HELD: "the resolution is finished"}[self._state])

    def _end(self, exc: BaseException) -> BaseException:
        self._state = _DONE
        return exc

    def _with_attempts(self, exc: BaseException) -> BaseException:
        exc.attempts = list(self._attempts or ())  # type: ignore[attr-defined]
        return self._end(exc)

    def _attempts_text(self) -> str:
        if not self._attempts:
            return "; no peer was asked"
        return "; peers asked: " + "; ".join(f"{n}: {describe_answer(e)}"
                                             for n, e in self._attempts)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (the request's or the call's), or None."""
        return None if self.t_end is None else self.t_end - self._plan.clock()

    def _left(self) -> float:
        left = self.t_end - self._plan.clock()  # type: ignore[operator]
        if left <= 0:
            raise self._with_attempts(DeadlineExceeded(
                f"the request's deadline passed while resolving {self.key}"
                + self._attempts_text()))
        return left

    def next(self) -> Ask:
        """The next source to ask, or raises the final error: ``ContentNotHeld``
        (local-only), ``NoHolderError`` (no peer answered, no home to ask) or
        ``DeadlineExceeded``."""
        if self._state != _OPEN:
            self._expect(_OPEN, "next")
        plan = self._plan
        consistency = self.request.consistency
        if consistency == "local-only":
            log.debug("%s %s (%r): not held and the request is local-only", plan.node,
                      self.key, self.request.op)
            self._step("policy", "local-only", "peers and home not asked")
            raise self._end(ContentNotHeld(f"node {plan.node!r} does not hold {self.key} "
                                           f"and the request is local-only"))
        left = None if self.t_end is None else self._left()
        order = self._order
        if order is None:
            lone = plan._lone
            if lone is not None:  # one peer: announced as a holder of the key or not
                holds, holders_of, name = plan._holds, plan._holders_of, lone[0][0][0]
                if holds is not None:
                    announced = holds(self.key, name)
                else:
                    announced = holders_of is not None and name in holders_of(self.key)
                order = lone[1 if announced else 0]
            else:
                order = (_peer_order(self.key, plan._peers, plan._holders, plan._holders_of,
                                     plan._failures_of) if plan._peers else ())
            self._order = order
        if order:
            governor = plan.governor
            while governor is not None and self._idx < len(order):
                name, serve, announced = order[self._idx]
                refused = governor.skip(name)
                if refused is None:
                    break
                self._idx += 1
                self._step("holder" if announced else "peer", name, describe_answer(refused))
                self._attempt(name, refused)
            if self._idx < len(order):
                name, serve, announced = order[self._idx]
                self._idx += 1
                t = plan.peer_timeout
                if left is not None and (t is None or left < t):
                    t = left
                self._cur = (name, "holder" if announced else "peer", announced)
                self._state = _ASKING
                if self._debug:
                    log.debug("%s %s (%r): asking %s %r", plan.node, self.key,
                              self.request.op, self._cur[1], name)
                return _new_ask(Ask, (name, self._cur[1], serve, t))
        home_ask = plan._home_ask
        if home_ask.target is None or consistency == "no-home":
            why = "no home" if home_ask.target is None else "request is no-home"
            log.debug("%s %s (%r): no holder answered and %s", plan.node, self.key,
                      self.request.op, why)
            self._step("home", "-", why)
            raise self._with_attempts(NoHolderError(
                f"no holder answered for {self.key} ({self.request.op!r}) and {why}"
                + self._attempts_text()))
        self._cur = _HOME
        self._state = _ASKING
        if self._debug:
            log.debug("%s %s (%r): asking home %s", plan.node, self.key, self.request.op,
                      type(home_ask.target).__name__)
        if left is None:
            return home_ask
        return _new_ask(Ask, ("home", "home", home_ask.target, left))

    # -- answers ----------------------------------------------------------------
    def failed(self, exc: BaseException) -> bool:
        """The source asked raised ``exc``. A peer's answer is noted (False: ask
        the next); home's ends the resolution (True: raise it, with the peers'
        answers added as a note)."""
        self._expect(_ASKING, "failed")
        if not isinstance(exc, BaseException):
            raise TypeError("Resolution.failed() takes an exception instance")
        plan = self._plan
        name, stage, announced = self._cur
        answer = describe_answer(exc)
        self._step(stage, name, answer)
        if self._debug:
            log.debug("%s %s (%r): %s %r answered %s%s", plan.node, self.key,
                      self.request.op, stage, name, answer,
                      "" if stage == "home" else "; moving on")
        if stage == "home":
            if self._attempts:
                exc.add_note("peers asked first" + self._attempts_text())
            self._end(exc)
            return True
        self._attempt(name, exc)
        # A peer that is not an announced holder may simply not hold the key;
        # an announced holder that does not (stale), or any peer that errs or
        # times out, goes to the back of the queue next time. A busy peer is
        # only skipped: its hung calls time out (and count) on their own.
        benign = isinstance(exc, (ContentNotHeld, CapabilityDenied)) and not announced
        if not benign and not isinstance(exc, PeerBusy):
            if plan.holders is not None:
                log.warning("node %r marked peer %r failed (%s); it is asked last until it "
                            "answers again", plan.node, name, answer)
                plan.holders.mark_failed(name)
            if plan.governor is not None:
                plan.governor.failed(name, answer, penalty=isinstance(exc, ClaimRejected))
        elif benign and plan.governor is not None:
            plan.governor.ok(name)  # it answered: the link and the peer work
        self._state = _OPEN
        return False

    def busy(self, running: int) -> None:
        """The source was skipped: ``running`` calls to it are still running."""
        self.failed(PeerBusy(f"peer {self._cur[0]!r} was skipped: {running} calls to it "
                             f"are still running"))

    def timed_out(self, timeout: float) -> BaseException | None:
        """The source did not answer within ``timeout`` s; like ``failed``,
        but returns the error to raise when it ends the resolution (home's
        ``DeadlineExceeded``), else None (ask the next)."""
        what = "home" if self._cur[1] == "home" else f"peer {self._cur[0]!r}"
        exc = DeadlineExceeded(f"{what} did not answer within {timeout:.3g} s")
        return exc if self.failed(exc) else None

    def answered(self, reply: Any) -> EvalReply | None:
        """The source asked answered ``reply``: the reply to record, or None if
        a peer's reply was refused (one for another key: ask the next)."""
        if self._state != _ASKING:
            self._expect(_ASKING, "answered")
        cur = self._cur
        if cur is not _HOME:
            name = cur[0]
            if isinstance(reply, _ReplyBase):
                rkey = reply.key
                ok = rkey is None or rkey == self.key
            else:
                rkey, ok = getattr(reply, "key", None), False
            if not ok:
                err = RemoteError(f"peer {name!r} answered with a reply for another key "
                                  f"({rkey})")
                err.node = name
                self.failed(err)
                return None
            trust = self._plan.trust
            if trust is not None:
                why = trust.check(getattr(reply, "claim", None), self.key, reply, name)
                if why is not None:
                    rej = ClaimRejected(f"peer {name!r}'s reply for {self.key} was "
                                        f"discarded: {why}")
                    rej.node = name
                    rej.reason = why
                    self.failed(rej)
                    return None
        self._state = _HOLDING
        return reply

    def held(self, reply: EvalReply) -> EvalReply:
        """The reply is recorded (or a stream ended and is held): announce this
        node as a holder; the reply with its source."""
        state = self._state
        if state != _STREAMING and state != _HOLDING:
            self._expect(_HOLDING, "held")
        plan = self._plan
        cur = self._cur
        if cur is _HOME:
            source = self.source = reply.source if plan._home_names else "home"
            self.outcome = "home_computes"
        else:
            name = cur[0]
            source = self.source = "peer:" + name
            self.outcome = "peer_hits"
            failures_of = plan._failures_of
            if failures_of is not None and failures_of(name):
                # (it takes a lock: only when there is a failure to forget)
                plan._holders.mark_ok(name)  # type: ignore[union-attr]
            if plan.governor is not None:
                plan.governor.ok(name)
        if self._debug:
            log.debug("%s %s (%r): answered by %s, recorded and announced", plan.node,
                      self.key, self.request.op, source)
        announce = plan._announce
        if announce is not None and self.request.sharing != "uncacheable":
            announce(self.key, plan.node)  # (an uncacheable reply is not held)
        # A stream's trail already says "streaming"; a single reply's ends
        # with what its source did ("computed" or "hit").
        self._state = _HELD if state == _HOLDING else _DONE
        return reply._with_source(source)

    # -- streams ----------------------------------------------------------------
    def started(self) -> str:
        """The source asked started its stream (gave its first item, or ended):
        from now on it cannot be passed over. Returns the stream's source."""
        self._expect(_ASKING, "started")
        name, stage, _ = self._cur
        self._step(stage, name, "streaming")
        self.source = "home" if stage == "home" else f"peer:{name}"
        self._state = _STREAMING
        return self.source

    def check(self, items: int) -> None:
        """Before each event of a started stream: ``DeadlineExceeded`` once the
        deadline has passed."""
        if self.t_end is not None and self.t_end - self._plan.clock() <= 0:
            self._state = _DONE
            raise DeadlineExceeded(f"the request's deadline of {self._deadline} s passed "
                                   f"after {items} items of the stream for {self.key} from "
                                   f"{self.source}")

    def broke(self, exc: BaseException, items: int) -> tuple[BaseException, str]:
        """A started stream failed after ``items`` items: it cannot restart
        elsewhere and is not held. Returns the error to raise and the message
        of the ``StreamInterrupted`` diagnostic."""
        plan = self._plan
        name, stage, _ = self._cur
        what = describe_answer(exc)
        message = (f"the stream for {self.key} from {self.source} failed after {items} "
                   f"items ({what}); it cannot restart elsewhere and is not recorded")
        self._step(stage, name, f"failed after {items} items: {what}")
        self.source = None
        self._state = _DONE
        if stage == "home" or isinstance(exc, DeadlineExceeded):
            exc.add_note(message)
            return exc, message
        if plan.holders is not None:
            log.warning("node %r marked peer %r failed: %s", plan.node, name, message)
            plan.holders.mark_failed(name)
        if plan.governor is not None:
            plan.governor.failed(name, what, penalty=isinstance(exc, ClaimRejected))
        remote = RemoteError(message)
        remote.node = name
        remote.remote_type = type(exc).__name__
        return remote, message


# A Resolution made without running __init__ (Resolution.of sets every slot).
_new_resolution = object.__new__


def _trail_steps(node: str, trail: tuple) -> list[tuple[str, str, str]]:
    """The steps of a kept trail (``Resolution._trail()``): the local miss,
    what each source passed over answered, then what the one that gave the
    reply did."""
    source, between, held = trail
    steps = [("local", node, "not held")]
    if between:
        steps.extend(between)
    if held is not None:
        name, stage, _ = held
        if stage != "home":
            steps.append((stage, name, "hit"))
        else:  # home computed, or passed it on to the node the source names
            steps.append((stage, name, "computed" if source == "home" else
                          f"answered by {source}"))
    return steps


class _PeerCalls:
    """The calls in flight to one peer that does not honour timeouts itself.

    Each runs on one of at most ``limit`` daemon worker threads of this peer
    (started when needed, then kept): a call that times out keeps its
    thread, so a hung peer holds at most ``limit`` threads and every other
    peer keeps its own. ``submit`` refuses (None) when ``limit`` calls are
    still running. Daemon threads: a call still hung at interpreter exit is
    abandoned.
    """

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.running = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> concurrent.futures.Future | None:
        with self._lock:
            if self.running >= self.limit:
                return None
            self.running += 1
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fut, fn, args, kwargs))
        if spawn:
            threading.Thread(target=self._work, name=f"fabric-peer-{self.name}",
                             daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            fut, fn, args, kwargs = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the waiting caller
                    fut.set_exception(exc)
            del fut, fn, args, kwargs
            with self._lock:
                self.running -= 1
                self._idle += 1


_BUSY = object()      # a call outcome: the peer was at its bound


class _TimedOut:
    """A call outcome: no answer within the timeout; ``future`` is the call
    still running on the source's worker thread (None: it was cancelled)."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future | None):
        self.future = future


class ContentAddressedFabric(_core.ContentAddressedFabricCore,  # type: ignore[override]
                             _FabricBase):
    """A node's view of a fleet of cassettes, as one fabric.

    ``ContentAddressedFabric(node, cassette, peers=(), home=None, holders=None)``
    answers ``evaluate(request)`` from this node's ``cassette`` when it holds
    the reply (checking the caller's grants first, as on every call), else
    asks the peers announced in ``holders`` as holders of the key, then the
    other ``peers``, then ``home``; the first reply is recorded in the
    cassette and announced, so the next call is a local hit::

        a = ContentAddressedFabric("a", EvalCassette("a.ledger"), home=LocalFabric())
        b = ContentAddressedFabric("b", EvalCassette("b.ledger"),
                                   peers=[ContentPeer("a", ContentServeFabric(a.cassette))],
                                   holders=a.holders)
        a.evaluate(req).source   # "home", then "local"
        b.evaluate(req).source   # "peer:a", then "local"
        b.explain(req)           # where it came from, and what each source said

    ``node`` is this node's id; ``cassette`` its ``EvalCassette``; ``peers``
    ``ContentPeer`` objects; ``home`` any fabric that computes (None: fail
    closed with ``NoHolderError``); ``holders`` a shared ``HoldingIndex`` (a
    new one by default); ``grants`` the default grants of callers that pass
    none. ``governor`` a ``PeerGovernor`` (allowlist, blocklist, health and
    backoff per peer; None: every peer is asked): a peer it refuses is passed
    over, and the skip is reported in ``NoHolderError.attempts`` and
    ``explain()``; its counters join ``stats()``. ``trust="fleet-key"`` (the
    default when ``fleet_keys``, a ``FleetKeys``, is given; else ``"none"``)
    verifies every peer's reply against the claim it carries
    (docs/spec/claims.md) before recording it: a reply that fails is
    discarded (``ClaimRejected`` in the attempts and ``explain()``), the peer
    penalised in the governor, and the next source asked.
    ``trust="signatures"`` (the default when ``trusted_keys``, a
    ``TrustedKeys``, is given) does the same with Ed25519 claims, each
    under the key trusted for the node that made it. A peer's stream is
    checked against its claim when it ends: one that fails is not recorded
    and ends with an error (its items were already given: it cannot fall
    back), the peer penalised.
    ``peer_timeout`` (seconds, None for none) bounds each peer call;
    ``timeout=`` on a call and the request's ``deadline`` bound the whole
    call. ``max_peer_calls`` bounds the calls in flight to a peer that does
    not honour timeouts itself (see the module doc). ``stream``, ``aevaluate``
    and ``astream`` resolve the same way; ``stats()`` counts local hits, peer
    hits, home computes, failures, denials and bytes recorded. ``explain()``
    knows how the last ``remember`` resolutions (at least; at most twice as
    many) went.
    """

    #: This fabric takes ``timeout=`` and gives up within it itself.
    honours_timeout = True

    if TYPE_CHECKING:
        def evaluate(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None,
                     timeout: float | None = None) -> EvalReply: ...

    def __init__(self, node: str, cassette: Any, peers: Iterable[ContentPeer] = (),
                 home: Any = None, holders: HoldingIndex | None = None, *,
                 grants: Iterable[str] = (), peer_timeout: float | None = 10.0,
                 max_peer_calls: int = 8, remember: int = 256,
                 governor: PeerGovernor | None = None, trust: str | None = None,
                 fleet_keys: FleetKeys | None = None, trusted_keys: TrustedKeys | None = None):
        if not isinstance(node, str) or not node:
            raise TypeError(f"node must be a non-empty str, not {node!r}")
        if peer_timeout is not None and not (isinstance(peer_timeout, (int, float))
                                             and peer_timeout > 0):
            raise ValueError(f"peer_timeout must be a positive number of seconds or None, "
                             f"not {peer_timeout!r}")
        if not isinstance(max_peer_calls, int) or max_peer_calls < 1:
            raise ValueError(f"max_peer_calls must be an int >= 1, not {max_peer_calls!r}")
        _check_cassette(cassette, f"node {node!r}")
        _check_home(home)
        # The C base answers hits with cassette.get and hands misses to _miss.
        # call(op, ...) builds an Op's request with Op.request (kept for
        # repeated arguments) and evaluates it in C, unless a subclass
        # overrides evaluate (then every call goes through it):
        # _FabricBase.call takes anything else.
        own = type(self).evaluate is ContentAddressedFabric.evaluate
        _core.ContentAddressedFabricCore.__init__(self, node, cassette, cassette.get,
                                                  type(self)._miss, frozenset(grants),
                                                  op_class=Op if own else None,
                                                  request_of=Op.request,
                                                  general_call=_FabricBase.call)
        if governor is not None and not isinstance(governor, PeerGovernor):
            raise TypeError(f"governor must be a PeerGovernor or None, not "
                            f"{type(governor).__name__}")
        if trust is None:
            trust = ("signatures" if trusted_keys is not None else
                     "fleet-key" if fleet_keys is not None else "none")
        if trust not in ("fleet-key", "signatures", "none"):
            raise ValueError(f"trust must be 'fleet-key', 'signatures' or 'none', not {trust!r}")
        if trust == "fleet-key" and not isinstance(fleet_keys, FleetKeys):
            raise ValueError("trust='fleet-key' needs fleet_keys (a FleetKeys)")
        if trust == "signatures" and not isinstance(trusted_keys, TrustedKeys):
            raise ValueError("trust='signatures' needs trusted_keys (a TrustedKeys)")
        #: "fleet-key" or "signatures" (every peer's reply is verified against
        #: its claim), or "none".
        self.trust = trust
        self._verifier: FleetKeys | TrustedKeys | None = (
            fleet_keys if trust == "fleet-key" else trusted_keys if trust == "signatures"
            else None)
        # What every resolution shares (home, holders, governor, peer_timeout
        # and the peers are read and set through it).
        plan = self._plan = Plan(node, {}, HoldingIndex() if holders is None else holders,
                                 home, peer_timeout, governor, self._verifier,
                                 remember=remember)
        plan._hold = type(self)._hold  # the function: no reference to self (see Plan)
        plan._count = self._stats.add
        _warn_torn(cassette, f"node {node!r}")
        self.max_peer_calls = max_peer_calls
        self._peers: dict[str, ContentPeer] = {}
        for p in peers:
            self.add_peer(p)
        self._calls: dict[str, _PeerCalls] = {}
        self._calls_lock = threading.Lock()

    @property
    def home(self) -> Any:
        """The fabric that computes what no peer holds (None: none)."""
        return self._plan.home

    @home.setter
    def home(self, home: Any) -> None:
        _check_home(home)
        self._plan.home = home

    @property
    def holders(self) -> HoldingIndex:
        """The holding index: who holds which key."""
        return self._plan.holders  # type: ignore[return-value]

    @holders.setter
    def holders(self, holders: HoldingIndex) -> None:
        self._plan.holders = holders

    @property
    def governor(self) -> PeerGovernor | None:
        """The PeerGovernor (None: every peer is asked, in the holders' order)."""
        return self._plan.governor

    @governor.setter
    def governor(self, governor: PeerGovernor | None) -> None:
        self._plan.governor = governor

    @property
    def peer_timeout(self) -> float | None:
        """Seconds each peer call may take (None: no bound but the deadline)."""
        return self._plan.peer_timeout

    @peer_timeout.setter
    def peer_timeout(self, peer_timeout: float | None) -> None:
        self._plan.peer_timeout = peer_timeout

    # -- peers ----------------------------------------------------------------
    @property
    def peers(self) -> list[ContentPeer]:
        """The peers this node may ask, in the order given."""
        return list(self._peers.values())

    def add_peer(self, peer: ContentPeer) -> None:
        """Add (or replace) a peer; this node itself is never its own peer."""
        if not isinstance(peer, ContentPeer):
            raise TypeError(f"peers are ContentPeer objects, not {type(peer).__name__}")
        if peer.node != self.node:
            self._peers[peer.node] = peer
            # A new dict: a resolution under way keeps the order it worked out.
            self._plan.peers = {n: p.serve for n, p in self._peers.items()}

    def remove_peer(self, node: str) -> bool:
        """Remove the peer ``node``; returns whether there was one. A
        resolution under way keeps the peers it planned with."""
        if self._peers.pop(node, None) is None:
            return False
        self._plan.peers = {n: p.serve for n, p in self._peers.items()}
        return True

    def announce_held(self) -> int:
        """Announce every key of the cassette as held by this node (after a
        restart, so peers learn what the ledger replayed). Returns the count
        of new facts. The keys go to the index in one call: packed digests
        when the cassette offers ``keys_packed()``, else its key iterator."""
        packed = getattr(self.cassette, "keys_packed", None)
        keys = packed() if callable(packed) else self.cassette
        return self.holders.announce_keys(keys, self.node)

    # -- the shared parts of the drivers -----------------------------------------
    def _resolution(self, request: EvalRequest, timeout: float | None) -> Resolution:
        return Resolution.of(self._plan, request, timeout)

    def _peer_calls(self, name: str) -> _PeerCalls:
        calls = self._calls.get(name)
        if calls is None:
            with self._calls_lock:
                calls = self._calls.setdefault(name, _PeerCalls(name, self.max_peer_calls))
        return calls

    def _call(self, ask: Ask, fn: Callable[..., Any], request: EvalRequest, g: frozenset) -> Any:
        """``fn(request, grants=g)`` within ``ask.timeout``: directly when there
        is no timeout or the source honours it, else on the source's own
        workers (``_BUSY`` at their bound, a ``_TimedOut`` past the timeout)."""
        if ask.timeout is None:
            return fn(request, grants=g)
        if honours_timeout(ask.target):
            return fn(request, grants=g, timeout=ask.timeout)
        calls = self._peer_calls(ask.name)
        fut = calls.submit(fn, request, grants=g)
        if fut is None:
            return _BUSY
        try:
            return fut.result(timeout=ask.timeout)
        except concurrent.futures.TimeoutError:
            return _TimedOut(fut)
        finally:
            # A failed call's future keeps its exception, whose traceback
            # holds this frame, which holds the future: a cycle (keeping the
            # fabric) only the cyclic collector would free.
            del fut

    # _hold(key, reply): records a reply in the local cassette and counts its
    # bytes (bytes_recorded): the C base's, one call.

    def _end(self, res: Resolution) -> None:
        """A resolution ended (either way): count it and keep its trail.

        Its peers' exceptions are let go (an error raised to the caller keeps
        its own list, ``attempts``): their tracebacks hold the driver's frame,
        which holds the resolution, a cycle that kept the fabric alive until
        the cyclic collector ran."""
        res._attempts = None
        plan = self._plan
        plan._count(res.outcome or "failures")  # type: ignore[misc]
        trails = plan._trails
        steps = res._steps  # res._trail(), written out: every miss ends here
        if steps is None and res._state == _HELD:
            cur = res._cur
            trails[res.key] = (_HOME_HELD if cur is _HOME and res.source == "home"
                               else (res.source, None, cur))
        else:
            trails[res.key] = (res.source, tuple(steps) if steps else None,
                               res._cur if res._state == _HELD else None)
        if len(trails) >= plan._remember:
            plan._trails_old, plan._trails = trails, {}

    def _keep_trail(self, key: ContentKey, trail: tuple) -> None:
        plan = self._plan
        trails = plan._trails
        trails[key] = trail
        if len(trails) >= plan._remember:
            plan._trails_old, plan._trails = trails, {}

    def _trail_of(self, key: ContentKey) -> tuple | None:
        plan = self._plan
        trail = plan._trails.get(key)
        return plan._trails_old.get(key) if trail is None else trail

    def _late(self, res: Resolution, exc: BaseException) -> None:
        """Home stopped waiting for a computation that goes on
        (``pending_reply`` on ``exc``, see ``EvalFabric``): its reply is
        recorded and announced when it comes, for later callers (never an
        uncacheable op's)."""
        if res.request.sharing == "uncacheable":
            return
        key, request = res.key, res.request

        def record(reply: EvalReply) -> None:
            self._hold(key, reply, request)
            if self.holders is not None:
                self.holders.announce(key, self.node)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s (%r): home's late reply recorded and announced", self.node,
                          key, request.op)

        _record_late(exc, record)

    def _home_late(self, res: Resolution, exc: BaseException, out: _TimedOut) -> BaseException:
        """Home did not answer in time and does not bound its own wait: its
        call runs on in a worker thread (``out.future``), which becomes the
        error's ``pending_reply``, recorded when it comes. The error."""
        if out.future is not None:
            _pending(exc, out.future)
            self._late(res, exc)
        return exc

    # -- evaluate: the C base answers hits and calls this on a miss --------------
    def _miss(self, request: EvalRequest, g: frozenset, timeout: float | None) -> EvalReply:
        """evaluate()'s miss (grants already checked): the sync driver."""
        if request.stream:
            return _collect(self.stream(request, grants=g, timeout=timeout), request.key)
        plan = self._plan
        home = plan._direct  # (home, when there is no peer)
        if (home is not None and timeout is None and request.deadline is None
                and request.consistency == "local-first" and not log.isEnabledFor(_DEBUG)):
            # No peer to order, no deadline, no policy: the resolution could
            # only ask home, directly, and hold its reply (the common miss of
            # a node with a home). Its steps are written out here, with the
            # counters and the trail a Resolution would leave
            # (tests/test_resolution.py compares the two); an error re-enters
            # the Resolution where it stands.
            key = request.key
            try:
                reply = home.evaluate(request, grants=g)
            except BaseException as exc:
                res = Resolution._asking_home(plan, request, key)
                try:
                    if isinstance(exc, Exception) and res.failed(exc):
                        self._late(res, exc)
                    raise
                finally:
                    self._end(res)
            held = 0  # 1: recorded (source and outcome known), 2: held and announced
            try:
                if request.sharing != "uncacheable":  # never recorded nor announced
                    hold = plan._hold  # (called through a local: 3.11 then calls it directly)
                    hold(self, key, reply, request)  # type: ignore[misc]
                    held = 1
                    announce = plan._announce
                    if announce is not None:
                        announce(key, plan.node)
                held = 2
                return reply if plan._home_names else reply._with_source("home")
            finally:
                # Resolution.held() and _end(), written out.
                count = plan._count
                count("home_computes" if held else "failures")  # type: ignore[misc]
                trails = plan._trails
                if not held:
                    trails[key] = (None, None, None)
                else:
                    source = reply.source if plan._home_names else "home"
                    trails[key] = ((source, None, None) if held == 1 else
                                   _HOME_HELD if source == "home" else (source, None, _HOME))
                if len(trails) >= plan._remember:
                    plan._trails_old, plan._trails = trails, {}
        res = _new_resolution(Resolution)  # Resolution.of, written out
        res._start(self._plan, request, request.key, timeout)
        try:
            while True:
                ask = res.next()
                target, t = ask.target, ask.timeout
                try:
                    if t is None:  # no deadline: called directly
                        reply = target.evaluate(request, grants=g)
                    elif getattr(type(target), "honours_timeout", False) is True:
                        reply = target.evaluate(request, grants=g, timeout=t)  # gives up in time
                    else:
                        reply = self._call(ask, target.evaluate, request, g)
                except Exception as exc:
                    if res.failed(exc):
                        self._late(res, exc)
                        raise
                    continue
                if reply is _BUSY:
                    res.busy(self._peer_calls(ask.name).running)
                elif type(reply) is _TimedOut:
                    late = res.timed_out(t)  # type: ignore[arg-type]
                    if late is not None:
                        raise self._home_late(res, late, reply)
                elif res.answered(reply) is not None:
                    if request.sharing != "uncacheable":  # never recorded
                        self._hold(res.key, reply, request)
                    return res.held(reply)
        finally:
            self._end(res)

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``.

        A local hit is answered on the loop. A miss asks the same sources in
        the same order, awaiting each one's own ``aevaluate`` when it has one
        (cancelled when its time is up) and running a sync-only one in a
        worker thread; the reply is recorded from a worker thread (recording
        may fsync).
        """
        _check_timeout(timeout)  # (evaluate's, in C, checks it as this does)
        g = _core._as_grants(grants, self.grants)
        reply = self._lookup(request, grants=g)  # the C hit path, grants checked
        if reply is not None:
            return reply  # type: ignore[return-value]
        if request.stream:
            items = []
            s = self.astream(request, grants=g, timeout=timeout)
            async with s:
                async for x in s:
                    items.append(x)
            return EvalReply(items, s.diagnostics, None, request.key, s.source)
        res = self._resolution(request, timeout)
        try:
            while True:
                ask = res.next()
                try:
                    got = await self._acall(ask, request, g)
                except asyncio.CancelledError as exc:
                    if ask.stage == "home":  # the caller left; home may compute on
                        self._late(res, exc)
                    raise
                except Exception as exc:
                    if res.failed(exc):
                        self._late(res, exc)
                        raise
                    continue
                if got is _BUSY:
                    res.busy(self._peer_calls(ask.name).running)
                elif isinstance(got, _TimedOut):
                    late = res.timed_out(ask.timeout)  # type: ignore[arg-type]
                    if late is not None:
                        raise self._home_late(res, late, got)
                elif res.answered(got) is not None:
                    if request.sharing != "uncacheable":  # never recorded
                        await asyncio.to_thread(self._hold, res.key, got, res.request)
                    return res.held(got)
        finally:
            self._end(res)

    async def _acall(self, ask: Ask, request: EvalRequest, g: frozenset) -> Any:
        target, t = ask.target, ask.timeout
        honours = t is not None and honours_timeout(target)
        kw: dict[str, Any] = {"grants": g}
        if honours:
            kw["timeout"] = t
        aevaluate = getattr(target, "aevaluate", None)
        if aevaluate is not None:
            task = asyncio.ensure_future(aevaluate(request, **kw))
        elif t is None or honours:
            task = asyncio.ensure_future(asyncio.to_thread(target.evaluate, request, **kw))
        else:
            fut = self._peer_calls(ask.name).submit(target.evaluate, request, grants=g)
            if fut is None:
                return _BUSY
            task = asyncio.wrap_future(fut)
        try:
            if t is None or honours:
                return await task
            try:
                done, _ = await asyncio.wait((task,), timeout=t)
            except BaseException:
                task.cancel()
                raise
            if not done:
                task.cancel()
                return _TimedOut(fut if aevaluate is None else None)
            return task.result()
        finally:
            # A failed task keeps its exception, whose traceback holds this
            # frame, which holds the task (and the fabric): a cycle only the
            # cyclic collector would free. The frame lets go of the task and
            # of everything else that holds it (the worker's future, the
            # set of done tasks).
            del task
            fut = done = _ = None  # type: ignore[assignment]

    # -- streams ----------------------------------------------------------------
    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream:
        """A stream from the local cassette (replayed lazily), else from the first
        holder, peer or home that starts it; recorded frame by frame as it is
        consumed and held only once it ends normally.

        Sources are tried in the same order as ``evaluate``'s, until one gives
        its first item (or ends cleanly), so a stream nobody holds fails at
        once, and a source that fails before its first item is passed over.
        Once an item has been given to the caller the stream cannot restart
        elsewhere: a source failing after that ends the stream with a
        ``StreamInterrupted`` diagnostic and an error (``RemoteError`` from a
        peer, home's own exception from home), and nothing is recorded. The
        deadline (the request's, or ``timeout``) is checked before every event.
        """
        _check_timeout(timeout)
        g = self._check(request, grants=grants)
        key = request.key
        if key in self.cassette:
            self._stats.add("local_hits")
            return EvalStream(_replay_events(self.cassette, key), key, "local")
        res = self._resolution(request, timeout)
        try:
            while True:
                ask = res.next()
                try:
                    got = self._call(ask, _stream_head_of(ask.target), request, g)
                except Exception as exc:
                    if res.failed(exc):
                        raise
                    continue
                if got is _BUSY:
                    res.busy(self._peer_calls(ask.name).running)
                elif isinstance(got, _TimedOut):
                    late = res.timed_out(ask.timeout)  # type: ignore[arg-type]
                    if late is not None:
                        raise late  # home's stream did not start in time
                else:
                    break
            source = res.started()
        except BaseException:
            self._end(res)
            raise
        res._attempts = None  # (as _end: the stream's relay needs none of them)
        self._keep_trail(key, res._trail())
        head, events, src = got
        if self._verifier is not None and res._cur[1] != "home":
            events = verified_events(itertools.chain(head, events), src, self._verifier, key,
                                     res._cur[0])
            head = []
        return EvalStream(self._relay(res, source, head, events, src,
                                      request.sharing != "uncacheable"),  # never recorded
                          key, source)

    def _relay(self, res: Resolution, source: str, head: list, events: Iterator, src: Any,
               record: bool) -> Iterator:
        """The events of a started stream (``head``, those already pulled,
        then ``events`` of the source's stream ``src``), the deadline checked
        before each, recorded frame by frame when ``record`` and held once they
        end normally. A failure ends the stream with a diagnostic and an error
        (never a restart), and nothing is recorded; so does closing it early.

        Relaying, the deadline and recording are one loop: one Python frame
        per event. (The cassette's writer batches the frames: an ``append``
        encodes one into memory, a batch is written in one call.)
        """
        writer = _stream_writer(self.cassette, res.key, res.request) if record else None
        append = writer.append if writer is not None else None
        t_end = res.t_end
        clock = res._plan.clock
        items = 0
        ok = False
        try:
            for ev in itertools.chain(head, events) if head else events:
                if t_end is not None and clock() >= t_end:
                    res.check(items)
                if ev[0] == ITEM:
                    items += 1
                if append is not None:
                    append([ev[0], ev[1]])  # a frame is [tag, payload] (fabric-records.md)
                yield ev
            ok = True
        except GeneratorExit:
            raise
        except Exception as exc:
            self._stats.add("failures")
            err, message = res.broke(exc, items)
            self._keep_trail(res.key, res._trail())
            yield DIAG, {"kind": "StreamInterrupted", "message": message}
            if err is exc:
                raise
            raise err from exc
        finally:
            if ok:
                if writer is not None:
                    writer.close()
                res.held(EvalReply(None, (), None, res.key, source))
                self._stats.add(res.outcome or "failures")
            else:
                if writer is not None:
                    writer.abort()
                close = getattr(src, "close", None) or getattr(events, "close", None)
                if close is not None:
                    close()

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncEvalStream:
        """Async twin of ``stream``: the same resolution, started and pulled
        from worker threads so the event loop never blocks on a source.

        A consumer that stops (a node's cancel) while a step runs on a
        worker interrupts it when it can (``_aevents_from_sync``): an async
        generator op of a ``LocalFabric`` home is cancelled at its await,
        also before its first item (the start); a sync generator is closed
        once its item is ready, and a stream started after the consumer
        left is closed."""
        _check_timeout(timeout)
        g = self._check(request, grants=grants)

        def close_late(start: asyncio.Future[EvalStream]) -> None:
            if start.cancelled() or start.exception() is not None:
                return  # (exception() retrieved: nothing logged)
            try:
                self._pool().submit(_close_quietly, start.result())
            except FabricUnavailable:  # the pool is closed: close here
                _close_quietly(start.result())

        async def events() -> Any:
            # As asyncio.to_thread, with the start's _Interrupt, and shielded
            # so that a consumer that leaves still sees how the start ended.
            interrupt = _Interrupt()
            call = functools.partial(contextvars.copy_context().run, _under(interrupt, self.stream),
                                     request, grants=g, timeout=timeout)
            start = asyncio.get_running_loop().run_in_executor(None, call)
            try:
                s = await asyncio.shield(start)
            except asyncio.CancelledError:
                if not start.done():
                    interrupt.interrupt()
                    start.add_done_callback(close_late)
                raise
            out.source = s.source
            # Closed here, not left to the loop's finalizer of async generators
            # (a reference cycle may keep it for long): a consumer that stops
            # (a node's cancel) has the producer closed before it goes on.
            events = _aevents_from_sync(s.iter_events(), self._pool())
            try:
                async for ev in events:
                    yield ev
            finally:
                await events.aclose()

        out: AsyncEvalStream[Any] = AsyncEvalStream(events(), request.key, "unresolved")
        return out

    # -- explain and display ----------------------------------------------------------
    def explain(self, request: EvalRequest) -> Explanation:
        """Where ``request`` was (or would be) answered from, and why each step missed."""
        if not isinstance(request, EvalRequest):
            raise TypeError(f"expected an EvalRequest, not {type(request).__name__}")
        key = request.key
        trail = self._trail_of(key)
        if key in self.cassette:
            if trail is None or trail[0] is None:
                return Explanation(key, "local", [("local", self.node, "held")])
            # Resolved here earlier and recorded: say how, then that it is held now.
            steps = _trail_steps(self.node, trail)
            steps.append(("local", self.node, f"held now (first from {trail[0]})"))
            return Explanation(key, "local", steps)
        if trail is not None:
            return Explanation(key, trail[0], _trail_steps(self.node, trail))
        steps = [("local", self.node, "not held")]
        governor = self.governor
        for name, _serve, announced in peer_order(key, self._plan.peers, self.holders):
            why = governor.would_refuse(name) if governor is not None else None
            steps.append(("holder" if announced else "peer", name,
                          "would be asked" if why is None else f"would be skipped: {why}"))
        steps.append(("home", "home" if self.home is not None else "-",
                      "would compute" if self.home is not None else "no home"))
        return Explanation(key, None, steps)

    def stats(self) -> dict[str, int]:
        """Counters of this fabric (a new dict each call), with the governor's
        (``peers_down``, ``peers_backing_off``, ``peer_skips``,
        ``peer_penalties``) when it has one; per-peer health is
        ``governor.peers()``."""
        out = super().stats()
        if self.governor is not None:
            out.update(self.governor.counters())
        return out

    def _describe(self) -> str:
        peers = ", ".join(self._peers)
        home = type(self.home).__name__ if self.home is not None else None
        try:
            held: int | str = len(self.cassette)
        except Exception:
            held = "?"
        return f"node={self.node!r}, held={held}, peers=[{peers}], home={home}"


def _stream_head_of(target: Any) -> Callable[..., tuple[list, Iterator, Any]]:
    """A call that starts ``target``'s stream and pulls its events up to and
    including the first item (all of them if it has none): until then a
    failing source can be passed over. Gives ``(head, events, stream)``:
    the events pulled, the rest, and the stream itself (to close, and whose
    ``.claim`` a verifier reads once it ended). The
    events of an ``EvalStream`` (not of a subclass, which may iterate its
    own way) are taken from it directly: its bookkeeping of items and
    diagnostics is for a consumer, and this relay keeps its own."""

    def start(request: EvalRequest, **kw: Any) -> tuple[list, Iterator, Any]:
        s = target.stream(request, **kw)
        events = s._events if type(s) is EvalStream else _events_of(s)
        head = []
        for ev in events:
            head.append(ev)
            if ev[0] == ITEM:
                break
        return head, events, s

    return start


class Explanation:
    """Why a request resolved where it did: ``key``, ``source`` and ``steps``.

    Each step is ``(stage, target, outcome)``: stage is ``"local"``,
    ``"holder"`` (an announced holder), ``"peer"`` or ``"home"``.
    ``source`` is None when the request has not been resolved here yet (the
    steps then say what would be tried).
    """

    __slots__ = ("key", "source", "steps")

    def __init__(self, key: ContentKey, source: str | None, steps: list[tuple[str, str, str]]):
        self.key = key
        self.source = source
        self.steps = list(steps)

    def __repr__(self) -> str:
        head = f"explain {self.key}: " + (f"from {self.source}" if self.source
                                            else "not resolved here yet")
        lines = [head] + [f"  {stage:<6} {target:<12} {outcome}"
                          for stage, target, outcome in self.steps]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td>"
                       f"<td>{html.escape(c)}</td></tr>" for a, b, c in self.steps)
        src = html.escape(self.source or "not resolved here yet")
        return (f"<b>{html.escape(str(self.key))}</b>: {src}<table><tr><th>stage</th>"
                f"<th>target</th><th>outcome</th></tr>{rows}</table>")
