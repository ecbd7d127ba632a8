"""PeerGovernor: allowlist and blocklist, health, down after a run of
failures, exponential backoff with jitter, and how the resolution uses it
(counted attempts and an injected clock: no wall-clock assertion)."""

import random

import pytest

import fabric
from fabric import (ContentAddressedFabric, ContentPeer, ContentServeFabric, LocalFabric,
                    NoHolderError, OpRegistry, PeerGovernor, PeerSkipped)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Flapping:
    """A real serve fabric behind a link that is down while ``down`` is set;
    counts the calls that reach the link."""

    def __init__(self, inner):
        self.inner = inner
        self.down = True
        self.calls = 0

    def evaluate(self, request, *, grants=None):
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("link down")
        return self.inner.evaluate(request, grants=grants)

    def stream(self, request, *, grants=None):
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("link down")
        return self.inner.stream(request, grants=grants)


@pytest.fixture
def reg():
    r = OpRegistry()

    @fabric.op("double", registry=r)
    def double(x):
        return 2 * x

    return r


def test_backoff_doubles_to_the_cap_and_jitter_only_shortens_it():
    clock = Clock()
    g = PeerGovernor(backoff_base=1.0, backoff_cap=8.0, jitter=0.0, down_after=3, clock=clock)
    assert [g.backoff(n) for n in range(0, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays, downs = [], []
    for _ in range(5):
        h = g.failed("p", "ConnectionRefusedError: x")
        delays.append(h.retry_at - clock.t)
        downs.append(h.down)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert downs == [False, False, True, True, True]
    jittered = PeerGovernor(backoff_base=1.0, backoff_cap=8.0, jitter=0.5, clock=clock,
                            rng=random.Random(5))
    seen = set()
    for n in range(1, 200):
        h = jittered.failed("q", "x")
        full = jittered.backoff(n)
        d = h.retry_at - clock.t
        assert full * 0.5 <= d <= full
        seen.add(round(d, 6))
    assert len(seen) > 50  # the jitter does vary
    g.ok("p")
    h = g.health("p")
    assert (h.consecutive, h.down, h.retry_at, h.failures, h.last_event) == (0, False, None, 5, "ok")


def test_refusals_name_the_reason_and_are_counted():
    clock = Clock()
    g = PeerGovernor(allow=["a", "b", "c"], block=["c"], backoff_base=2.0, jitter=0.0,
                     down_after=2, clock=clock)
    assert g.refusal("a") is None
    assert g.refusal("z") == "not on the allowlist"
    assert g.refusal("c") == "blocklisted"
    g.failed("a", "boom")
    assert g.refusal("a").startswith("backing off after 1 failure(s); next try in 2 s")
    clock.t += 2.0
    assert g.refusal("a") is None  # the backoff is over: one more try
    g.failed("a", "boom")
    assert g.refusal("a").startswith("down after 2 failures in a row")
    assert g.counters() == {"peers_down": 1, "peers_backing_off": 1, "peer_skips": 4,
                            "peer_penalties": 0}
    g.set_lists(allow=None, block=())
    assert g.refusal("z") is None and g.refusal("c") is None
    assert "1 down" in repr(g)
    with pytest.raises(ValueError, match="down_after"):
        PeerGovernor(down_after=0)
    with pytest.raises(ValueError, match="below backoff_base"):
        PeerGovernor(backoff_base=5, backoff_cap=1)
    with pytest.raises(ValueError, match="jitter"):
        PeerGovernor(jitter=2)
    with pytest.raises(ValueError, match="backoff_base"):
        PeerGovernor(backoff_base=-1)


def _fleet(reg, cassette_factory, clock, **gov):
    a_cas = cassette_factory("a")
    flap = Flapping(ContentServeFabric(a_cas, node="a"))
    gov.setdefault("jitter", 0.0)
    g = PeerGovernor(clock=clock, **gov)
    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("a", flap)],
                               home=LocalFabric(reg), governor=g)
    return a_cas, flap, g, b


def test_a_flapping_peer_is_marked_down_and_backoff_spaces_its_retries(reg, cassette_factory):
    clock = Clock()
    _, flap, g, b = _fleet(reg, cassette_factory, clock, backoff_base=1.0, backoff_cap=4.0,
                           down_after=3)
    asked_at = []
    for tick in range(100):  # 25 s of the test's clock, one miss every 0.25 s
        before = flap.calls
        r = b.evaluate(fabric.EvalRequest("double", (tick,)))
        assert r.value == 2 * tick and r.source == "home"  # home covers every miss
        if flap.calls > before:
            asked_at.append(clock.t - 1000.0)
        clock.t += 0.25
    # Retries after 1, 2, 4, then the 4 s cap: 8 calls instead of 100.
    assert asked_at == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0, 23.0]
    h = g.health("a")
    assert h.down and h.consecutive == 8 and h.failures == 8
    s = b.stats()
    assert s["peers_down"] == 1 and s["peer_skips"] == 92
    # The link comes back: the next probe (after the backoff) succeeds, and
    # the peer is up again, asked at once from then on.
    flap.down = False
    clock.t += 4.0
    b.evaluate(fabric.EvalRequest("double", ("probe",)))
    assert g.health("a").down is False and g.health("a").consecutive == 0
    before = flap.calls
    for i in range(5):
        b.evaluate(fabric.EvalRequest("double", (f"up{i}",)))
    assert flap.calls == before + 5


def test_a_skipped_peer_is_reported_in_attempts_and_explain(reg, cassette_factory):
    clock = Clock()
    a_cas, flap, g, _ = _fleet(reg, cassette_factory, clock, backoff_base=10.0,
                               backoff_cap=10.0)
    flap.down = False
    a = ContentAddressedFabric("a", a_cas, home=LocalFabric(reg))
    req = fabric.EvalRequest("double", (21,))
    assert a.evaluate(req).value == 42  # a holds it now
    nohome = ContentAddressedFabric("c", cassette_factory("c"), peers=[ContentPeer("a", flap)],
                                    governor=g)
    g.failed("a", "ConnectionRefusedError: link down")
    assert "would be skipped: backing off" in repr(nohome.explain(req))
    with pytest.raises(NoHolderError) as ei:
        nohome.evaluate(req)
    (name, exc), = ei.value.attempts
    assert name == "a" and isinstance(exc, PeerSkipped) and "backing off" in exc.reason
    assert flap.calls == 0  # never asked
    assert ("peer", "a", f"skipped: {exc.reason}") in nohome.explain(req).steps
    clock.t += 10.0  # the backoff is over: asked, and the reply is held
    assert nohome.evaluate(req).source == "peer:a" and flap.calls == 1


def test_blocklisted_and_unlisted_peers_are_never_asked(reg, cassette_factory):
    clock = Clock()
    a_cas = cassette_factory("a")
    a = ContentAddressedFabric("a", a_cas, home=LocalFabric(reg))
    req = fabric.EvalRequest("double", (4,))
    a.evaluate(req)
    serve = Flapping(ContentServeFabric(a_cas, node="a"))
    serve.down = False
    for gov in (PeerGovernor(block=["a"], clock=clock), PeerGovernor(allow=["x"], clock=clock)):
        c = ContentAddressedFabric("c", cassette_factory(), peers=[ContentPeer("a", serve)],
                                   governor=gov)
        with pytest.raises(NoHolderError, match="skipped"):
            c.evaluate(req)
    assert serve.calls == 0
    c = ContentAddressedFabric("c", cassette_factory(), peers=[ContentPeer("a", serve)],
                               governor=PeerGovernor(allow=["a"], clock=clock))
    assert c.evaluate(req).source == "peer:a" and serve.calls == 1
    with pytest.raises(TypeError, match="PeerGovernor"):
        ContentAddressedFabric("d", cassette_factory(), governor=object())


def test_a_peer_that_does_not_hold_a_key_is_not_penalised(reg, cassette_factory):
    # ContentNotHeld from a peer that never announced the key is no failure.
    clock = Clock()
    a_cas = cassette_factory("a")
    g = PeerGovernor(clock=clock, down_after=1)
    b = ContentAddressedFabric("b", cassette_factory("b"),
                               peers=[ContentPeer("a", ContentServeFabric(a_cas, node="a"))],
                               home=LocalFabric(reg), governor=g)
    for i in range(5):
        assert b.evaluate(fabric.EvalRequest("double", (i,))).source == "home"
    assert g.health("a").failures == 0 and g.refusal("a") is None


def test_a_peer_that_flaps_is_marked_down_each_time_and_its_backoff_restarts(
        reg, cassette_factory):
    """A link that comes and goes: each run of 3 counted failures marks it
    down, one answer brings it back up and resets its backoff, and the
    jittered retries of each down run are spaced by the backoff of their
    failure count (between half and all of it: jitter only shortens)."""
    clock = Clock()
    _, flap, g, b = _fleet(reg, cassette_factory, clock, backoff_base=1.0, backoff_cap=8.0,
                           down_after=3, jitter=0.5, rng=random.Random(14))
    tick = 0

    def miss():
        nonlocal tick
        before = flap.calls
        r = b.evaluate(fabric.EvalRequest("double", (tick,)))
        assert r.value == 2 * tick and r.source == "home"
        tick += 1
        asked = flap.calls > before
        clock.t += 0.25
        return asked

    for run in range(4):
        flap.down = True
        asked_at, fails = [], 0
        while fails < 5:  # five failures in a row: down after the third
            t = clock.t
            if miss():
                fails += 1
                asked_at.append(t)
                h = g.health("a")
                assert h.consecutive == fails and h.down == (fails >= 3)
        for n, (t0, t1) in enumerate(zip(asked_at, asked_at[1:]), 1):
            full = g.backoff(n)
            # the next miss on or after retry_at asks; misses come every 0.25 s
            assert full * 0.5 <= t1 - t0 < full + 0.25, (run, n, t1 - t0)
        # the link is back: the first miss after the backoff asks, it answers
        # (it does not hold the key, which is no failure), the peer is up
        flap.down = False
        while not miss():
            pass
        h = g.health("a")
        assert not h.down and h.consecutive == 0 and h.retry_at is None
        assert h.failures == 5 * (run + 1)
        before = flap.calls
        miss()
        assert flap.calls == before + 1  # asked at once again
    s = b.stats()
    assert s["peers_down"] == 0 and s["peer_skips"] > 0


def test_the_lists_refuse_by_node_id_or_url_and_watchers_hear_of_changes():
    g = PeerGovernor(block=["b", "fabric://127.0.0.1:9"])
    assert g.policy_refusal("b") == "blocklisted"
    assert g.policy_refusal(None, "fabric://127.0.0.1:9") == "blocklisted"
    assert g.policy_refusal("c", "fabric://127.0.0.1:9") == "blocklisted"
    assert g.policy_refusal("c", "fabric://127.0.0.1:10") is None
    heard = []
    g.watch(lambda: heard.append(g.policy_refusal("b")))
    g.set_lists(allow=["a"], block=())
    assert heard == ["not on the allowlist"]
    # an allowlist of node ids: a URL whose node id is not known yet may be
    # dialled (its handshake tells who it is), a known one is checked
    assert g.policy_refusal(None, "fabric://127.0.0.1:10") is None
    assert g.policy_refusal("a", "fabric://127.0.0.1:10") is None
    assert g.policy_refusal("x", "fabric://127.0.0.1:10") == "not on the allowlist"
    assert g.counters()["peer_skips"] == 0  # policy_refusal counts nothing


def test_wait_time_and_alias_fold_a_urls_failures_into_its_node_id():
    clock = Clock()
    g = PeerGovernor(backoff_base=1.0, backoff_cap=4.0, jitter=0.0, down_after=2, clock=clock)
    url = "fabric://127.0.0.1:9"
    assert g.wait_time(url) == 0.0
    g.failed(url, "cannot connect")
    g.failed(url, "cannot connect")
    assert g.wait_time(url) == 2.0 and g.health(url).down
    clock.t += 0.5
    assert g.wait_time(url) == 1.5
    g.failed("b", "link lost")
    clock.t += 0.5
    g.alias(url, "b")  # the handshake told the URL's node id
    assert url not in g.peers()
    h = g.health("b")
    # failures add up; the later event (b's, half a second after) is kept
    assert h.failures == 3 and h.consecutive == 1 and not h.down
    assert h.last_event == "failed: link lost" and h.last_at == 1000.5
    g.alias("nobody", "b")  # nothing to fold: unchanged
    assert g.health("b") == h
    g.ok("b")
    assert g.wait_time("b") == 0.0 and not g.health("b").down
