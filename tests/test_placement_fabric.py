"""PlacementFabric: the seed's placement scenarios and each limit enforced
on a real worker process (a CPU spinner, a memory hog, a sleeper, a frame
flood)."""

import pytest

import fabric
from fabric import (CapabilityDenied, EvalRequest, FrameKind, PlacementFabric,
                    PlacementRefused, PlacementResourceLimits, ServerPlacementRequest, unpack)
from fabric import FRAME_FLAG_DIAGNOSTIC

REG = fabric.OpRegistry()
ALL = ("stream.placement.run-node-on-server", "stream.remote.network",
       "stream.remote.render", "stream.remote.preview", "stream.host.device")


@fabric.op("place.analyse", registry=REG)
def analyse(x):
    return {"analysis": x * 2}


@fabric.op("place.render", registry=REG)
def render(n):
    for i in range(n):
        yield {"pcm": bytes([i]) * 4}


@fabric.op("place.spin", registry=REG)
def spin():
    while True:
        pass


@fabric.op("place.hog", registry=REG)
def hog(n):
    return len(bytearray(n))


@fabric.op("place.sleep", registry=REG)
def sleeper():
    import time
    time.sleep(3600)  # the op under test blocks; the fabric must kill it


@fabric.op("place.flood", registry=REG)
def flood():
    while True:
        yield b"x"


@fabric.op("place.fail", registry=REG)
def fail():
    raise KeyError("nope")


@pytest.fixture(scope="module")
def fab():
    f = PlacementFabric(ops=REG, grants=ALL)
    yield f
    f.close()


def frames(fab, placement, grants=ALL):
    return list(fab.place(placement, grants=grants))


def body(frame):
    return unpack(frame.payload)


def refusal(fs):
    diag = [f for f in fs if f.flags & FRAME_FLAG_DIAGNOSTIC]
    assert len(diag) == 1 and fs[-2] is diag[0]
    return body(diag[0])


def test_server_placement_runs_node_and_returns_declared_render(fab):
    fs = frames(fab, ServerPlacementRequest.render_return(render.request(3)))
    assert fs[0].kind == FrameKind.STREAM_START and fs[-1].kind == FrameKind.STREAM_END
    req = body(fs[1])
    assert req["kind"] == "stream/fabric/server-placement-request"
    assert req["site"] == "stream/site/server"
    assert req["declared-latency"] == "offline-render"
    assert req["required-capabilities"] == ["stream.placement.run-node-on-server",
                                            "stream.remote.network", "stream.remote.render"]
    assert req["resource-limits"]["max-cpu-time-ms"] == "5000"
    assert req["output-edges"]
    res = body(fs[2])
    assert res["kind"] == "stream/fabric/server-placement-result"
    assert res["declared-profile"] == "stream/profile/server-render-return"
    assert [body(f)["item"] for f in fs[3:-1]] == [{"pcm": bytes([i]) * 4} for i in range(3)]
    assert not any(f.flags & FRAME_FLAG_DIAGNOSTIC for f in fs)
    assert [f.seq for f in fs] == list(range(len(fs)))


def test_value_op_through_the_fabric_interface(fab):
    assert fab.evaluate(analyse.request(21)).value == {"analysis": 42}
    assert list(fab.stream(render.request(2))) == [{"pcm": b"\0" * 4}, {"pcm": b"\1" * 4}]


def test_server_placement_refuses_realtime_pinned_nodes_over_frames(fab):
    fs = frames(fab, ServerPlacementRequest.render_return(analyse.request(1),
                                                          realtime_pinned=True))
    assert len(fs) == 4
    d = body(fs[2])
    assert d["kind"] == "ServerPlacementRefused"
    assert "realtime-pinned" in d["message"] and "stream/site/server" in d["message"]
    assert fab.stats()["refused"] >= 1


def test_server_placement_requires_run_node_capability(fab):
    p = ServerPlacementRequest.render_return(analyse.request(1))
    with pytest.raises(CapabilityDenied, match="run-node-on-server"):
        fab.place(p, grants=["stream.remote.network", "stream.remote.render"])
    with pytest.raises(CapabilityDenied, match="stream.remote.network"):
        fab.place(p, grants=["stream.placement.run-node-on-server", "stream.remote.render"])
    with pytest.raises(CapabilityDenied, match="stream.remote.preview"):
        fab.place(ServerPlacementRequest.buffered_preview(analyse.request(1)),
                  grants=["stream.placement.run-node-on-server", "stream.remote.network"])


def test_realtime_profile_is_a_hard_error(fab):
    with pytest.raises(fabric.PlacementError, match="realtime profile"):
        fab.place(ServerPlacementRequest(analyse.request(1), profile="stream/profile/realtime"))


def test_host_device_placement_requires_host_device_capability(fab):
    frag = analyse.request("host-device CoreAudio Built-in Output")
    p = ServerPlacementRequest.render_return(frag)
    grants = [g for g in ALL if g != "stream.host.device"]
    with pytest.raises(CapabilityDenied, match="stream.host.device"):
        fab.place(p, grants=grants)


def test_server_placement_resource_cutoff_emits_refusal(fab):
    lim = PlacementResourceLimits(max_stream_frames=1)
    fs = frames(fab, ServerPlacementRequest.render_return(render.request(3),
                                                          resource_limits=lim))
    d = body(fs[2])
    assert d["kind"] == "ServerPlacementRefused"
    assert "resource cutoff" in d["message"] and "stream-size" in d["message"]
    assert fs[-1].kind == FrameKind.STREAM_END


def test_placement_reports_are_redacted_before_frame_recording(fab, tmp_path):
    report = {"session": "private-path=session.sim", "host": "host=studio.local",
              "auth": "token=abc123", "blob": b"\0" * (256 * 1024 + 1)}
    p = ServerPlacementRequest.render_return(analyse.request(1), report=report)
    fs = frames(fab, p)
    raw = b"".join(f.payload for f in fs)
    for secret in (b"session.sim", b"studio.local", b"abc123"):
        assert secret not in raw
    rep = body(fs[1])["placement-report"]
    assert rep["blob"] == "[redacted placement payload]"
    assert rep["session"] == "[redacted placement data]"
    # Recorded as frames: the cassette holds only what was redacted.
    cas = fabric.EvalCassette(str(tmp_path / "c.ledger"))
    fabric.stream_frames_to_cassette(fs, cas, p.fragment.key)
    cas.close()
    assert b"abc123" not in (tmp_path / "c.ledger").read_bytes()


def test_an_op_error_is_a_remote_error(fab):
    with pytest.raises(fabric.RemoteError, match="KeyError"):
        fab.evaluate(fail.request())


# -- each limit enforced on a real worker ------------------------------------------------

def test_cpu_spinner_is_stopped(fab):
    lim = PlacementResourceLimits(max_cpu_time_ms=200)
    fs = frames(fab, ServerPlacementRequest.render_return(spin.request(), resource_limits=lim))
    d = refusal(fs)
    assert d["limit"] == "max_cpu_time_ms" and "cpu-time" in d["message"]
    # The fabric goes on with a new worker.
    assert fab.evaluate(analyse.request(2)).value == {"analysis": 4}


def test_memory_hog_is_stopped():
    lim = PlacementResourceLimits(max_rss_bytes=256 << 20)
    with PlacementFabric(ops=REG, grants=ALL, limits=lim) as f:
        with pytest.raises(PlacementRefused) as e:
            f.evaluate(hog.request(1 << 30))
        assert e.value.limit == "max_rss_bytes"
        assert f.evaluate(hog.request(1 << 20)).value == 1 << 20


def test_sleeper_is_killed_at_its_duration():
    lim = PlacementResourceLimits(max_duration_ms=300)
    with PlacementFabric(ops=REG, grants=ALL, limits=lim) as f:
        with pytest.raises(PlacementRefused, match="duration limit exceeded") as e:
            f.evaluate(sleeper.request())
        assert e.value.limit == "max_duration_ms"
        assert f.stats()["workers_killed"] == 1
        assert f.evaluate(analyse.request(3)).value == {"analysis": 6}


def test_frame_flood_is_cut_and_never_recorded(tmp_path):
    lim = PlacementResourceLimits(max_stream_frames=10)
    cas = fabric.EvalCassette(str(tmp_path / "c.ledger"))
    with PlacementFabric(ops=REG, grants=ALL, limits=lim) as f:
        rel = fabric.LedgeredRelayFabric(f, cas, grants=ALL)
        s = rel.stream(flood.request())
        got = []
        with pytest.raises(PlacementRefused, match="stream-size"):
            for x in s:
                got.append(x)
        assert got == [b"x"] * 8  # 10 data frames: two reports and eight chunks
        assert s.diagnostics[-1]["kind"] == "ServerPlacementRefused"
        assert flood.request().key not in cas
        # The inflight cap: every frame, the start frame included.
        fs = list(f.place(ServerPlacementRequest.render_return(
            flood.request(), resource_limits=PlacementResourceLimits(max_inflight_work=5)),
            grants=ALL))
        d = refusal(fs)
        assert d["limit"] == "max_inflight_work"
        assert len(fs) == 1 + 4 + 2
        # Bytes per frame and accounted bytes.
        fs = list(f.place(ServerPlacementRequest.render_return(
            hog.request(1), resource_limits=PlacementResourceLimits(max_frame_payload_bytes=64)),
            grants=ALL))
        assert refusal(fs)["limit"] == "max_frame_payload_bytes"
        fs = list(f.place(ServerPlacementRequest.render_return(
            render.request(100), resource_limits=PlacementResourceLimits(max_memory_bytes=2000)),
            grants=ALL))
        assert refusal(fs)["limit"] == "max_memory_bytes"
    cas.close()


# -- identical requests in flight at once run once ------------------------------------

def test_concurrent_identical_placements_run_once(tmp_path):
    import asyncio
    import threading

    import replicas_ops
    from conftest import wait_for
    n = 5
    with PlacementFabric(ops=[replicas_ops.gated_count, replicas_ops.gated_uncacheable],
                         grants=ALL, workers=2) as f:
        d = str(tmp_path / "threads")
        (tmp_path / "threads").mkdir()
        request = replicas_ops.gated_count.request(d)
        out = []
        threads = [threading.Thread(target=lambda: out.append(f.evaluate(request)))
                   for _ in range(n)]
        for t in threads:
            t.start()
        wait_for(lambda: f.stats()["coalesced"] == n - 1, "every caller to join")
        replicas_ops.open_gate(d)
        for t in threads:
            t.join(60)
        assert [r.value for r in out] == ["opened"] * n
        assert replicas_ops.runs(d) == 1
        assert f.stats()["placed"] == 1

        d = str(tmp_path / "async")
        (tmp_path / "async").mkdir()
        request = replicas_ops.gated_count.request(d)

        async def main():
            calls = [asyncio.ensure_future(f.aevaluate(request)) for _ in range(3 * n)]
            await asyncio.to_thread(wait_for, lambda: f.stats()["coalesced"] == 4 * n - 2,
                                    "every async caller to join")
            replicas_ops.open_gate(d)
            return await asyncio.gather(*calls)

        assert [r.value for r in asyncio.run(main())] == ["opened"] * (3 * n)
        assert replicas_ops.runs(d) == 1

        # An uncacheable op is never shared: two calls, two runs (two workers).
        d = str(tmp_path / "unc")
        (tmp_path / "unc").mkdir()
        request = replicas_ops.gated_uncacheable.request(d)
        out = []
        threads = [threading.Thread(target=lambda: out.append(f.evaluate(request)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: replicas_ops.runs(d) == 2, "both calls to run")
        replicas_ops.open_gate(d)
        for t in threads:
            t.join(60)
        assert len(out) == 2 and replicas_ops.runs(d) == 2


def test_rate_limit_cuts_a_flood_and_lets_a_stream_within_it_through(tmp_path):
    with PlacementFabric(ops=REG, grants=ALL) as f:
        lim = PlacementResourceLimits(max_rate_hz=5, max_stream_frames=100_000,
                                      max_inflight_work=100_000)
        # An endless flood passes 5 chunks within one second: cut, never recorded.
        fs = list(f.place(ServerPlacementRequest.render_return(flood.request(),
                                                               resource_limits=lim),
                          grants=ALL))
        d = refusal(fs)
        assert d["limit"] == "max_rate_hz" and "rate limit exceeded" in d["message"]
        assert d["count"] == 2 + 5  # the two reports and the five chunks allowed
        cas = fabric.EvalCassette(str(tmp_path / "c.ledger"))
        rel = fabric.LedgeredRelayFabric(PlacementFabric(ops=REG, grants=ALL, limits=lim),
                                         cas, grants=ALL)
        with pytest.raises(PlacementRefused, match="rate limit"):
            list(rel.stream(flood.request()))
        assert flood.request().key not in cas
        rel.inner.close()
        cas.close()
        # Five chunks can never pass five per second.
        fs = list(f.place(ServerPlacementRequest.render_return(render.request(5),
                                                               resource_limits=lim),
                          grants=ALL))
        assert not any(x.flags & FRAME_FLAG_DIAGNOSTIC for x in fs)
        assert len(fs) == 1 + 2 + 5 + 1


@fabric.op("place.fetch", registry=REG, capabilities=["net.fetch"])
def fetch(x):
    return x


def test_a_fragment_that_under_declares_its_op_is_refused(fab):
    with pytest.raises(CapabilityDenied, match="net.fetch"):
        fab.evaluate(EvalRequest("place.fetch", (1,)), grants=ALL + ("net.fetch",))
    with pytest.raises(fabric.OpNotFound, match="sharing"):
        fab.evaluate(EvalRequest("place.analyse", (1,), sharing="uncacheable"))
    assert fab.evaluate(fetch.request(3), grants=ALL + ("net.fetch",)).value == 3
