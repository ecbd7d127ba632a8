"""The resolution of a miss: order, timeouts, busy peers, and the drivers.

Peers are in-process objects over real cassette files. Hung peers block on
an Event the test releases at its end; the only waits are the timeouts
themselves, never a sleep.
"""

import asyncio
import threading

import pytest

import fabric
from fabric import (CapabilityDenied, ContentAddressedFabric, ContentNotHeld, ContentPeer,
                    ContentServeFabric, DeadlineExceeded, HoldingIndex, LocalFabric,
                    NoHolderError, OpRegistry)
from fabric.resolving import PeerBusy, Resolution


@pytest.fixture
def reg():
    r = OpRegistry()

    @fabric.op("embed", version=1, registry=r)
    def embed(text):
        return [float(len(text))]

    @fabric.op("tokens", registry=r)
    def tokens(text):
        yield from text.split()

    return r


class Hung:
    """A peer that never answers until released (and does not honour timeouts)."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def evaluate(self, request, *, grants=None):
        with self.lock:
            self.calls += 1
        self.release.wait(60)
        raise ConnectionResetError("late")

    def stream(self, request, *, grants=None):
        return self.evaluate(request, grants=grants)


class Serving:
    """A sync-only peer over a cassette that records who called it and how."""

    def __init__(self, name, cassette, log):
        self.name, self.inner, self.log = name, ContentServeFabric(cassette, node=name), log

    def evaluate(self, request, *, grants=None):
        self.log.append((self.name, threading.get_ident()))
        return self.inner.evaluate(request, grants=grants)

    def stream(self, request, *, grants=None):
        self.log.append((self.name, threading.get_ident()))
        return self.inner.stream(request, grants=grants)


class Honouring(Serving):
    """The same, declaring that it honours timeouts (so it is called with one)."""

    honours_timeout = True

    def evaluate(self, request, *, grants=None, timeout=None):
        self.log.append((self.name, threading.get_ident(), timeout))
        return self.inner.evaluate(request, grants=grants)


def held_by(cassette_factory, name, reg, *texts):
    """A cassette holding the replies for embed(text) of each text."""
    cas = cassette_factory(name)
    home = ContentAddressedFabric(name + "-maker", cas, home=LocalFabric(reg))
    for t in texts:
        home.evaluate(fabric.EvalRequest("embed", (t,), version=1))
    return cas


def test_a_hung_peer_costs_only_its_own_calls(reg, cassette_factory):
    # Defect 1: with one process-wide pool of 64 threads, 64 timed-out calls
    # to a hung peer left no thread for anyone. Now each peer has its own.
    hung = Hung()
    try:
        b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("h", hung)],
                                   peer_timeout=0.01, max_peer_calls=65)
        for i in range(65):
            with pytest.raises(NoHolderError) as ei:
                b.evaluate(fabric.EvalRequest("embed", (f"miss{i}",), version=1))
            (name, exc), = ei.value.attempts
            assert name == "h" and isinstance(exc, DeadlineExceeded)
        assert hung.calls == 65
        log = []
        b.add_peer(ContentPeer("a", Serving("a", held_by(cassette_factory, "a", reg, "x"), log)))
        got = b.evaluate(fabric.EvalRequest("embed", ("x",), version=1))
        assert got.source == "peer:a" and got.value == [1.0]
        # The healthy peer was asked first (the hung one has failed) and answered.
        assert [n for n, _ in log] == ["a"] and hung.calls == 65
    finally:
        hung.release.set()


def test_a_peer_at_its_bound_is_skipped_as_busy(reg, cassette_factory):
    hung = Hung()
    try:
        b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("h", hung)],
                                   peer_timeout=0.01, max_peer_calls=2)
        for i in range(2):
            with pytest.raises(NoHolderError):
                b.evaluate(fabric.EvalRequest("embed", (f"t{i}",), version=1))
        req = fabric.EvalRequest("embed", ("busy",), version=1)
        with pytest.raises(NoHolderError, match="busy") as ei:
            b.evaluate(req)
        (name, exc), = ei.value.attempts
        assert name == "h" and isinstance(exc, PeerBusy) and hung.calls == 2
        assert ("peer", "h", "busy: peer 'h' was skipped: 2 calls to it are still running") \
            in b.explain(req).steps
        # Busy is not a failure of the peer's: its failure count is its timeouts'.
        assert b.holders.failures("h") == 2
    finally:
        hung.release.set()


def test_peers_without_a_timeout_are_called_in_the_callers_thread(reg, cassette_factory):
    log = []
    cas = held_by(cassette_factory, "a", reg, "x", "y")
    direct = ContentAddressedFabric("b", cassette_factory("b"),
                                    peers=[ContentPeer("a", Serving("a", cas, log))],
                                    peer_timeout=None)
    assert direct.evaluate(fabric.EvalRequest("embed", ("x",), version=1)).source == "peer:a"
    assert log == [("a", threading.get_ident())]
    # A peer that honours timeouts gets the time left, also in the caller's thread.
    log.clear()
    honouring = ContentAddressedFabric("c", cassette_factory("c"),
                                       peers=[ContentPeer("a", Honouring("a", cas, log))],
                                       peer_timeout=5.0)
    assert honouring.evaluate(fabric.EvalRequest("embed", ("y",), version=1)).source == "peer:a"
    (name, thread, timeout), = log
    assert thread == threading.get_ident() and 0 < timeout <= 5.0


def test_the_call_timeout_bounds_the_whole_resolution(reg, cassette_factory):
    hung1, hung2 = Hung(), Hung()
    try:
        b = ContentAddressedFabric("b", cassette_factory("b"), peer_timeout=None,
                                   peers=[ContentPeer("h1", hung1), ContentPeer("h2", hung2)])
        with pytest.raises(DeadlineExceeded) as ei:
            b.evaluate(fabric.EvalRequest("embed", ("t",), version=1), timeout=0.02)
        (name, exc), = ei.value.attempts
        assert name == "h1" and isinstance(exc, DeadlineExceeded) and hung2.calls == 0
    finally:
        hung1.release.set()
        hung2.release.set()


def test_the_healthy_one_of_two_non_holders_is_asked_first(reg, cassette_factory):
    log = []
    holders = HoldingIndex()
    holders.mark_failed("p1")  # failed before; neither peer is an announced holder
    cas = held_by(cassette_factory, "both", reg, "x")
    b = ContentAddressedFabric("b", cassette_factory("b"), holders=holders, peer_timeout=None,
                               peers=[ContentPeer("p1", Serving("p1", cas, log)),
                                      ContentPeer("p2", Serving("p2", cas, log))])
    req = fabric.EvalRequest("embed", ("x",), version=1)
    assert b.explain(req).steps[1:3] == [("peer", "p2", "would be asked"),
                                         ("peer", "p1", "would be asked")]
    assert b.evaluate(req).source == "peer:p2"
    assert [n for n, _ in log] == ["p2"]


def test_announced_holders_come_before_other_peers_and_the_answer_is_recorded(
        reg, cassette_factory):
    log = []
    holders = HoldingIndex()
    cas = held_by(cassette_factory, "h", reg, "x")
    req = fabric.EvalRequest("embed", ("x",), version=1)
    holders.announce(req.key, "z-holder")
    b = ContentAddressedFabric("b", cassette_factory("b"), holders=holders, peer_timeout=None,
                               peers=[ContentPeer("a-peer", Serving("a-peer", cas, log)),
                                      ContentPeer("z-holder", Serving("z-holder", cas, log))])
    assert b.evaluate(req).source == "peer:z-holder"
    assert [n for n, _ in log] == ["z-holder"]
    assert req.key in b.cassette and holders.holders_of(req.key) == ["b", "z-holder"]
    assert b.evaluate(req).source == "local" and len(log) == 1
    s = b.stats()
    assert s["peer_hits"] == 1 and s["local_hits"] == 1 and s["bytes_recorded"] > 0


def test_home_is_asked_last_and_its_reply_recorded_and_announced(reg, cassette_factory):
    log = []
    empty = cassette_factory("empty")
    b = ContentAddressedFabric("b", cassette_factory("b"), home=LocalFabric(reg),
                               peer_timeout=None,
                               peers=[ContentPeer("e", Serving("e", empty, log))])
    req = fabric.EvalRequest("embed", ("abc",), version=1)
    got = b.evaluate(req)
    assert got.source == "home" and got.value == [3.0] and [n for n, _ in log] == ["e"]
    assert req.key in b.cassette and b.holders.holders_of(req.key) == ["b"]
    assert b.stats()["home_computes"] == 1
    # A non-holder answering "not held" is not marked failed; no-home stops before home.
    assert b.holders.failures("e") == 0
    with pytest.raises(NoHolderError, match="no-home"):
        b.evaluate(fabric.EvalRequest("embed", ("nh",), version=1, consistency="no-home"))


def test_a_passed_deadline_stops_before_the_next_source(reg, cassette_factory):
    now = [0.0]
    log = []
    req = fabric.EvalRequest("embed", ("x",), version=1, deadline=1.0)
    res = Resolution(req, req.key, node="b", peers={"p": Serving("p", None, log)},
                     holders=None, home=object(), clock=lambda: now[0])
    ask = res.next()
    assert ask.name == "p" and ask.timeout == 1.0
    now[0] = 1.5
    assert res.failed(ContentNotHeld("no")) is False
    with pytest.raises(DeadlineExceeded) as ei:
        res.next()  # home is not asked once the deadline has passed
    assert [n for n, _ in ei.value.attempts] == ["p"]


def test_two_coalesced_async_callers_with_different_deadlines(reg):
    # The impatient caller's timeout must not cancel the computation the
    # patient one shares (LocalFabric.aevaluate shields it).
    started, release = threading.Event(), threading.Event()
    r = OpRegistry()

    @fabric.op("slow", registry=r)
    def slow(x):
        started.set()
        release.wait(60)
        return x * 2

    local = LocalFabric(r)
    patient = slow.request(21).replace(deadline=60.0)
    impatient = patient.replace(deadline=0.05)
    assert patient.key == impatient.key  # the deadline is not part of the key

    async def main():
        loop = asyncio.get_running_loop()
        long_wait = asyncio.ensure_future(local.aevaluate(patient))
        await loop.run_in_executor(None, started.wait, 60)
        with pytest.raises(DeadlineExceeded):
            await local.aevaluate(impatient)
        release.set()
        return await long_wait

    try:
        assert asyncio.run(main()).value == 42
    finally:
        release.set()
    assert local.stats()["coalesced"] == 1


def test_content_serve_stream_checks_grants(reg, cassette_factory):
    cas = cassette_factory("s")
    serve = ContentServeFabric(cas, node="s")
    req = fabric.EvalRequest("tokens", ("a b",), stream=True,
                             required_capabilities=("model.call",))
    with cas.record_stream(req.key) as w:
        w.append([0, "a"])
        w.append([0, "b"])
    with pytest.raises(CapabilityDenied, match="model.call"):
        serve.stream(req)
    assert serve.stats()["denied"] == 1
    assert list(serve.stream(req, grants={"model.call"})) == ["a", "b"]


def test_aevaluate_bounds_a_hung_sync_peer_and_reports_busy(reg, cassette_factory):
    hung = Hung()
    log = []
    try:
        b = ContentAddressedFabric("b", cassette_factory("b"), peer_timeout=0.01,
                                   max_peer_calls=1, peers=[ContentPeer("h", hung)])
        cas = held_by(cassette_factory, "a", reg, "x")

        async def main():
            with pytest.raises(NoHolderError):
                await b.aevaluate(fabric.EvalRequest("embed", ("t",), version=1))
            with pytest.raises(NoHolderError) as ei:
                await b.aevaluate(fabric.EvalRequest("embed", ("u",), version=1))
            b.add_peer(ContentPeer("a", Serving("a", cas, log)))
            got = await b.aevaluate(fabric.EvalRequest("embed", ("x",), version=1))
            return ei.value, got

        err, got = asyncio.run(main())
        assert isinstance(err.attempts[0][1], PeerBusy) and hung.calls == 1
        assert got.source == "peer:a"
    finally:
        hung.release.set()


def test_streams_skip_a_busy_peer_and_resolve_from_home(reg, cassette_factory):
    hung = Hung()
    try:
        b = ContentAddressedFabric("b", cassette_factory("b"), peer_timeout=0.01,
                                   max_peer_calls=1, home=LocalFabric(reg),
                                   peers=[ContentPeer("h", hung)])
        first = b.stream(fabric.EvalRequest("tokens", ("a b",), stream=True))
        assert first.source == "home" and list(first) == ["a", "b"]
        req = fabric.EvalRequest("tokens", ("c d",), stream=True)
        second = b.stream(req)
        assert second.source == "home" and list(second) == ["c", "d"]
        steps = b.explain(req).steps
        assert steps[1][0:2] == ("peer", "h") and steps[1][2].startswith("busy")
        assert hung.calls == 1
    finally:
        hung.release.set()


def test_home_error_is_raised_with_what_the_peers_said(reg, cassette_factory):
    r = OpRegistry()

    @fabric.op("broken", registry=r)
    def broken(x):
        raise ValueError(f"cannot handle {x}")

    log = []
    b = ContentAddressedFabric("b", cassette_factory("b"), home=LocalFabric(r),
                               peer_timeout=None,
                               peers=[ContentPeer("e", Serving("e", cassette_factory("e"), log))])
    req = broken.request(3)
    with pytest.raises(ValueError, match="cannot handle 3") as ei:
        b.evaluate(req)
    assert ei.value.__notes__ == ["peers asked first; peers asked: e: not held"]
    assert req.key not in b.cassette and b.stats()["failures"] == 1
    assert b.explain(req).steps[-1] == ("home", "home", "ValueError: cannot handle 3")


class NeverAnswersAsync:
    """An async peer that never answers and does not honour timeouts itself
    (no ``honours_timeout``, no ``timeout=``): its ``aevaluate`` waits on an
    event nobody sets. It says when it was called and when its call was
    cancelled (events made on the test's loop)."""

    def __init__(self):
        self.called = self.cancelled = None

    def evaluate(self, request, *, grants=None):
        raise AssertionError("an async peer is awaited, not called")

    async def aevaluate(self, request, *, grants=None):
        self.called.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")

    def stream(self, request, *, grants=None):
        raise AssertionError("not streamed here")


# How long a test waits for what must happen within a 0.01 s peer timeout
# before calling it a hang: not a speed claim, a bound so that a resolution
# that no longer enforces the timeout fails instead of hanging the suite.
HANG = 5.0


@pytest.mark.parametrize("home", [False, True])
def test_aevaluate_bounds_an_async_peer_without_a_timeout_of_its_own(reg, cassette_factory,
                                                                    home):
    # An async peer that does not honour timeouts is awaited at most
    # peer_timeout: then its call is cancelled and the next source asked.
    # (Awaiting it without the bound made the suite hang; HANG turns that
    # into a failure.)
    peer = NeverAnswersAsync()
    b = ContentAddressedFabric("b", cassette_factory("b"), peer_timeout=0.01,
                               home=LocalFabric(reg) if home else None,
                               peers=[ContentPeer("slow", peer)])
    req = fabric.EvalRequest("embed", ("abc",), version=1)

    async def main():
        peer.called, peer.cancelled = asyncio.Event(), asyncio.Event()
        try:
            got = await asyncio.wait_for(b.aevaluate(req), HANG)
        except (NoHolderError, asyncio.TimeoutError) as exc:
            got = exc
        assert peer.called.is_set()
        # Handshake: the resolution cancelled the call it gave up on.
        await asyncio.wait_for(peer.cancelled.wait(), HANG)
        return got

    got = asyncio.run(main())
    assert not isinstance(got, asyncio.TimeoutError), \
        "the resolution did not bound the async peer's call by peer_timeout"
    if home:
        assert got.source == "home" and got.value == [3.0]
        assert ("peer", "slow", "DeadlineExceeded: peer 'slow' did not answer within 0.01 s") \
            in b.explain(req).steps
    else:
        assert isinstance(got, NoHolderError)
        (name, exc), = got.attempts
        assert name == "slow" and isinstance(exc, DeadlineExceeded)
    assert b.holders.failures("slow") == 1


def test_explain_keeps_the_trails_of_the_last_resolutions_bounded(reg, cassette_factory):
    b = ContentAddressedFabric("b", cassette_factory("b"), home=LocalFabric(reg),
                               peer_timeout=None, remember=4)
    reqs = [fabric.EvalRequest("embed", (f"t{i}",), version=1) for i in range(20)]
    for r in reqs:
        assert b.evaluate(r).source == "home"
    for r in reqs[-4:]:  # at least the last `remember` are explained as they went
        assert b.explain(r).steps == [("local", "b", "not held"), ("home", "home", "computed"),
                                      ("local", "b", "held now (first from home)")]
    forgotten = [r for r in reqs if b.explain(r).steps == [("local", "b", "held")]]
    assert len(forgotten) >= len(reqs) - 2 * 4  # at most twice `remember` are kept
    # A failure is kept the same way, with what the source said.
    with pytest.raises(NoHolderError):
        b.evaluate(fabric.EvalRequest("embed", ("x",), version=1, consistency="no-home"))
    ex = b.explain(fabric.EvalRequest("embed", ("x",), version=1))
    assert ex.source is None and ex.steps == [("local", "b", "not held"),
                                              ("home", "-", "request is no-home")]


# -- the miss without peers, written out, against the full resolution ---------------
# A node with a home and no peer answers a miss without a Resolution when the
# request has no deadline and the DEBUG log is off (ContentAddressedFabric._miss).
# With DEBUG on, the same miss goes through the Resolution: both must leave
# the same reply, counters, trail, recorded bytes and announcements, and a
# miss with a peer that holds nothing the same reply, counters and records.

class FullDisk(dict):
    """A cassette whose records fail (lookups work)."""

    get = dict.get

    def record(self, key, reply):
        raise OSError(28, "No space left on device")


class LateHome:
    """A home that stops waiting at once and hands over the computation as
    ``pending_reply`` (a future the test settles)."""

    def __init__(self):
        import concurrent.futures
        self.pending = concurrent.futures.Future()

    def evaluate(self, request, *, grants=None):
        exc = DeadlineExceeded("home gave up")
        exc.pending_reply = self.pending
        raise exc


def _miss_reg():
    r = OpRegistry()

    @fabric.op("say", version=1, registry=r)
    def say(text):
        fabric.diagnostic("said", text)
        return {"text": text, "n": [len(text)]}

    @fabric.op("clock", version=1, registry=r, sharing="uncacheable")
    def clock(text):
        return [text]

    @fabric.op("bad", version=1, registry=r)
    def bad(text):
        raise ValueError(f"bad input {text!r}")

    @fabric.op("stop", version=1, registry=r)
    def stop(text):
        raise KeyboardInterrupt

    return r


def _observe_miss(tmp_path, how, scenario, monkeypatch):
    """One miss of ``scenario`` on a fresh node, ``how`` it is resolved:
    everything it leaves behind."""
    import logging
    reg = _miss_reg()
    tag = f"{how}-{scenario}"
    cas = (FullDisk() if scenario == "full-disk" else
           fabric.EvalCassette(str(tmp_path / f"{tag}.ledger"), durability="os"))
    home = LateHome() if scenario == "late" else LocalFabric(reg)
    peers = []
    if how == "peer":  # a peer that holds nothing: it answers "not held"
        empty = fabric.EvalCassette(str(tmp_path / f"{tag}-peer.ledger"), durability="os")
        peers = [ContentPeer("p", ContentServeFabric(empty, node="p"))]
    b = ContentAddressedFabric("b", cas, peers=peers, home=home, peer_timeout=None)
    op = {"uncacheable": "clock", "home-error": "bad", "interrupt": "stop"}.get(scenario, "say")
    req = fabric.EvalRequest(op, ("hello",), version=1,
                             sharing="uncacheable" if op == "clock" else "pure")
    started = []
    real_start = Resolution._start
    monkeypatch.setattr(Resolution, "_start",
                        lambda self, *a: (started.append(1), real_start(self, *a))[1])
    logger = logging.getLogger("fabric.resolving")
    level = logger.level
    if how == "resolution":
        logger.setLevel(logging.DEBUG)
    try:
        out = b.evaluate(req)
        got = ("reply", out.value, out.diagnostics, out.source, out.key)
    except BaseException as exc:  # KeyboardInterrupt too: it is the home's answer
        got = ("error", type(exc), str(exc), getattr(exc, "__notes__", None))
        if scenario == "late":
            home.pending.set_result(fabric.EvalReply([7], [], None, req.key, "computed"))
            assert exc.pending_reply.result().value == [7]  # recorded, then settled
    finally:
        logger.setLevel(level)
        monkeypatch.setattr(Resolution, "_start", real_start)
    held = req.key in cas
    return {
        "got": got, "stats": b.stats(), "held": held,
        "record": cas.get(req.key) if held else None,
        "request bytes": (cas.request_bytes(req.key)
                          if isinstance(cas, fabric.EvalCassette) and held else None),
        "holders": b.holders.holders_of(req.key),
        "explained": (b.explain(req).source, b.explain(req).steps),
        "resolutions": len(started),
    }


@pytest.mark.parametrize("scenario", ["computed", "uncacheable", "home-error", "interrupt",
                                      "full-disk", "late"])
def test_a_miss_without_peers_leaves_what_the_resolution_leaves(tmp_path, scenario,
                                                                monkeypatch):
    short = _observe_miss(tmp_path, "written-out", scenario, monkeypatch)
    full = _observe_miss(tmp_path, "resolution", scenario, monkeypatch)
    peer = _observe_miss(tmp_path, "peer", scenario, monkeypatch)
    assert full["resolutions"] == 1 and peer["resolutions"] == 1
    # The short path makes a Resolution only to take up home's error.
    assert short["resolutions"] == (1 if short["got"][0] == "error" and
                                    scenario != "full-disk" else 0)
    assert {k: v for k, v in short.items() if k != "resolutions"} == \
        {k: v for k, v in full.items() if k != "resolutions"}
    # With a peer asked first (it holds nothing), the same outcome but for
    # the peer's step in the trail and the error's note.
    for k in ("stats", "held", "record", "request bytes", "holders"):
        assert short[k] == peer[k], k
    assert short["got"][:3] == peer["got"][:3]
    source, steps = peer["explained"]
    assert source == short["explained"][0]
    if steps == [("local", "b", "held")]:  # recorded late: explain() says only that
        assert short["explained"][1] == steps and scenario == "late"
    else:
        assert steps[1] == ("peer", "p", "not held")
        assert [steps[0]] + steps[2:] == short["explained"][1]
    # What each scenario leaves (so the comparison above compares something).
    s = short["stats"]
    if scenario == "computed":
        assert short["got"][1:4] == ({"text": "hello", "n": [5]},
                                     ({"kind": "said", "message": "hello"},), "home")
        assert short["held"] and short["holders"] == ["b"] and s["home_computes"] == 1
        assert short["request bytes"] == fabric.EvalRequest("say", ("hello",),
                                                            version=1).identity_bytes()
        assert s["bytes_recorded"] > 0
    elif scenario == "uncacheable":
        assert short["got"][3] == "home" and not short["held"] and short["holders"] == []
        assert s["home_computes"] == 1 and s["bytes_recorded"] == 0
    elif scenario == "late":
        assert short["got"][1] is DeadlineExceeded and short["held"]
        assert short["holders"] == ["b"] and s["failures"] == 1
    else:
        assert short["got"][0] == "error" and not short["held"] and short["holders"] == []
        assert s["failures"] == 1 and s["home_computes"] == 0
    assert short["got"][1] is {"home-error": ValueError, "interrupt": KeyboardInterrupt,
                               "full-disk": OSError}.get(scenario, short["got"][1])


def test_a_peer_or_home_changed_later_is_seen_by_the_next_miss(reg, cassette_factory):
    # The miss without a Resolution is taken only while there is a home and
    # no peer: a peer added later is asked first, and a node whose home is
    # taken away fails closed, as the Resolution decides.
    log = []
    b = ContentAddressedFabric("b", cassette_factory("b"), home=LocalFabric(reg),
                               peer_timeout=None)
    assert b.evaluate(fabric.EvalRequest("embed", ("one",), version=1)).source == "home"
    b.add_peer(ContentPeer("a", Serving("a", held_by(cassette_factory, "a", reg, "two"), log)))
    assert b.evaluate(fabric.EvalRequest("embed", ("two",), version=1)).source == "peer:a"
    assert [n for n, _ in log] == ["a"]
    c = ContentAddressedFabric("c", cassette_factory("c"), home=LocalFabric(reg))
    c.home = None
    with pytest.raises(NoHolderError, match="no home"):
        c.evaluate(fabric.EvalRequest("embed", ("three",), version=1))
    c.home = LocalFabric(reg)
    assert c.evaluate(fabric.EvalRequest("embed", ("three",), version=1)).source == "home"
    assert c.stats()["failures"] == 1 and c.stats()["home_computes"] == 1
