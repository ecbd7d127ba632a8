"""Placement objects of the extension: limits, capabilities, requests and
redaction (docs/spec/placement.md)."""

import pickle

import pytest

import fabric
from fabric import (EvalRequest, PlacementCapability, PlacementResourceLimits, Secret,
                    ServerPlacementRequest, redact_placement)

TEXT = "[redacted placement data]"
PAYLOAD = "[redacted placement payload]"
FIELDS = ["max_cpu_time_ms", "max_memory_bytes", "max_frame_payload_bytes",
          "max_stream_frames", "max_duration_ms", "max_rate_hz", "max_inflight_work"]


# -- PlacementResourceLimits ---------------------------------------------------------

def test_limits_defaults_are_the_seeds():
    lim = PlacementResourceLimits()
    assert (lim.max_cpu_time_ms, lim.max_memory_bytes, lim.max_frame_payload_bytes,
            lim.max_stream_frames, lim.max_duration_ms, lim.max_rate_hz,
            lim.max_inflight_work, lim.max_rss_bytes) == (
        5000, 64 << 20, 1 << 20, 1024, 60000, 120, 64, None)
    assert lim.to_expr() == {
        "max-cpu-time-ms": "5000", "max-memory-bytes": str(64 << 20),
        "max-frame-payload-bytes": str(1 << 20), "max-stream-frames": "1024",
        "max-duration-ms": "60000", "max-rate-hz": "120", "max-inflight-work": "64"}
    assert lim.replace(max_rss_bytes=1 << 30).to_expr()["max-rss-bytes"] == str(1 << 30)


@pytest.mark.parametrize("field", FIELDS + ["max_rss_bytes"])
@pytest.mark.parametrize("bad", [0, -1])
def test_each_limit_must_be_positive(field, bad):
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        PlacementResourceLimits(**{field: bad})


@pytest.mark.parametrize("field", FIELDS)
def test_limits_refuse_other_types(field):
    for bad in (True, 1.5, "5", None):
        with pytest.raises(TypeError, match=field):
            PlacementResourceLimits(**{field: bad})
    with pytest.raises(ValueError, match="at most"):
        PlacementResourceLimits(**{field: 2 ** 63})


def test_limits_refuse_unknown_and_positional_arguments():
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_cpu'"):
        PlacementResourceLimits(max_cpu=1)
    with pytest.raises(TypeError, match="keyword arguments only"):
        PlacementResourceLimits(5000)
    with pytest.raises(TypeError, match="unexpected keyword"):
        PlacementResourceLimits().replace(nope=1)


def test_limits_are_immutable_keyable_and_pickle():
    lim = PlacementResourceLimits(max_cpu_time_ms=10, max_rss_bytes=1 << 28)
    with pytest.raises(AttributeError):
        lim.max_cpu_time_ms = 5  # type: ignore[misc]
    # Keyable: an argument of a request, keyed as the array of its fields.
    r1 = EvalRequest("place", (lim,))
    r2 = EvalRequest("place", (PlacementResourceLimits(max_cpu_time_ms=10,
                                                       max_rss_bytes=1 << 28),))
    r3 = EvalRequest("place", (PlacementResourceLimits(max_cpu_time_ms=11,
                                                       max_rss_bytes=1 << 28),))
    assert r1.key == r2.key != r3.key
    assert fabric.canonical_bytes(lim) == fabric.canonical_bytes(list(lim))
    back = pickle.loads(pickle.dumps(lim))
    assert back == lim and type(back) is PlacementResourceLimits
    assert hash(back) == hash(lim)
    assert lim.replace(max_cpu_time_ms=20).max_cpu_time_ms == 20
    assert lim.max_cpu_time_ms == 10  # replace made a copy
    assert "max_cpu_time_ms=10" in repr(lim)


# -- PlacementCapability -----------------------------------------------------------

def test_placement_capability_names_are_stable():
    assert PlacementCapability.names() == (
        "stream.placement.run-node-on-server",
        "stream.placement.run-node-on-lan-peer",
        "stream.remote.render",
        "stream.host.device",
    )
    assert PlacementCapability.RUN_NODE_ON_SERVER == "stream.placement.run-node-on-server"
    assert PlacementCapability.RUN_NODE_ON_LAN_PEER == "stream.placement.run-node-on-lan-peer"
    assert PlacementCapability.REMOTE_RENDER == "stream.remote.render"
    assert PlacementCapability.HOST_DEVICE == "stream.host.device"
    # Plain str: usable as grants and as a request's capabilities.
    assert type(PlacementCapability.HOST_DEVICE) is str
    EvalRequest("x", required_capabilities=PlacementCapability.names())
    with pytest.raises(TypeError):
        PlacementCapability()


# -- ServerPlacementRequest -----------------------------------------------------------

def test_server_profiles_declare_preview_and_render_latency():
    frag = EvalRequest("analyse", (1,))
    pre = ServerPlacementRequest.buffered_preview(frag)
    ren = ServerPlacementRequest.render_return(frag)
    assert pre.profile == "stream/profile/server-buffered-preview"
    assert pre.declared_latency == "buffered-preview"
    assert ren.profile == "stream/profile/server-render-return"
    assert ren.declared_latency == "offline-render"
    assert pre.required_capabilities == ("stream.placement.run-node-on-server",
                                         "stream.remote.network", "stream.remote.preview")
    assert ren.required_capabilities == ("stream.placement.run-node-on-server",
                                         "stream.remote.network", "stream.remote.render")
    inter = ServerPlacementRequest(frag, profile="stream/profile/interactive")
    assert inter.required_capabilities == ("stream.placement.run-node-on-server",
                                           "stream.remote.network")


def test_request_defaults_and_copies():
    frag = EvalRequest("analyse", (1,))
    req = ServerPlacementRequest(frag, profile="stream/profile/server-render-return")
    assert req.fragment is frag
    assert req.realtime_pinned is False
    assert req.resource_limits == PlacementResourceLimits()
    assert req.report is None
    pinned = req.with_realtime_pin()
    assert pinned.realtime_pinned and not req.realtime_pinned
    assert not pinned.with_realtime_pin(False).realtime_pinned
    lim = PlacementResourceLimits(max_stream_frames=1)
    assert req.with_resource_limits(lim).resource_limits is lim
    with pytest.raises(AttributeError):
        req.realtime_pinned = True  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(req.with_realtime_pin()))
    assert back.realtime_pinned and back.fragment == frag and back.profile == req.profile


def test_request_refuses_bad_fields():
    frag = EvalRequest("analyse")
    with pytest.raises(TypeError, match="must be an EvalRequest"):
        ServerPlacementRequest("analyse", profile="stream/profile/interactive")
    with pytest.raises(TypeError, match="must be an EvalRequest"):
        ServerPlacementRequest.render_return(lambda: 1)
    with pytest.raises(ValueError, match="profile 'stream/profile/nope' is not known"):
        ServerPlacementRequest(frag, profile="stream/profile/nope")
    with pytest.raises(TypeError, match="missing required argument 'profile'|profile"):
        ServerPlacementRequest(frag)
    with pytest.raises(TypeError, match="PlacementResourceLimits"):
        ServerPlacementRequest.render_return(frag, resource_limits={"max_cpu_time_ms": 1})
    with pytest.raises(TypeError, match="cannot redact object of type object"):
        ServerPlacementRequest.render_return(frag, report=object())
    with pytest.raises(TypeError, match="PlacementResourceLimits"):
        ServerPlacementRequest.render_return(frag).with_resource_limits(5)


def test_repr_never_shows_the_report():
    frag = EvalRequest("analyse")
    req = ServerPlacementRequest.render_return(frag, report={"k": "token=abc123"})
    assert "abc123" not in repr(req) and "analyse" in repr(req)


def test_host_device_use_is_found_in_fragment_and_report():
    plain = ServerPlacementRequest.render_return(EvalRequest("analyse", ("studio mix",)))
    assert not plain.uses_host_device
    for frag, report in [
        (EvalRequest("analyse", ("host-device CoreAudio Built-in Output",)), None),
        (EvalRequest("analyse", (), {"out": ["hw:0,0"]}), None),
        (EvalRequest("analyse"), {"port": "device/mic"}),
        (EvalRequest("analyse"), {"/dev/snd": 1}),
    ]:
        req = ServerPlacementRequest.render_return(frag, report=report)
        assert req.uses_host_device
        assert "stream.host.device" in req.required_capabilities


# -- redact_placement --------------------------------------------------------------------

def test_placement_reports_are_redacted_whole_and_keep_their_shape():
    blob = b"\0" * (256 * 1024 + 1)
    report = {
        "session": "private-path=session.sim",
        "where": ["host=studio.local", "mix bus"],
        "auth": ("token=abc123", 3, 2.5, None, True),
        "blob": blob,
        "small": b"\1" * 16,
        "key": Secret("hunter2"),
        "nested": {"deeper": [{"url": "https://example.org/x"}]},
    }
    out = redact_placement(report)
    assert out == {
        "session": TEXT,
        "where": [TEXT, "mix bus"],
        "auth": (TEXT, 3, 2.5, None, True),
        "blob": PAYLOAD,
        "small": b"\1" * 16,
        "key": TEXT,
        "nested": {"deeper": [{"url": TEXT}]},
    }
    flat = repr(out)
    for secret in ("session.sim", "studio.local", "abc123", "hunter2", "example.org"):
        assert secret not in flat
    # The input is untouched.
    assert report["where"] == ["host=studio.local", "mix bus"]


def test_exactly_256_kib_is_kept():
    assert redact_placement(b"a" * (256 * 1024)) == b"a" * (256 * 1024)
    assert redact_placement(bytearray(256 * 1024 + 1)) == PAYLOAD
    assert redact_placement(memoryview(b"ab")) == b"ab"


def test_a_dotted_word_is_not_a_host():
    for text in ("model.bin", "v1.2.3", "example.com", "a.b.c"):
        assert redact_placement(text) == text
    for text in ("host=a", "hostname=a", "ws://a", "wss://a", "http://a", "box.lan",
                 "studio.local"):
        assert redact_placement(text) == TEXT


def test_paths_credentials_and_devices():
    for text in ("/etc/hosts", "~/x", "C:\\Users\\ann", "d:/data", "/home/ann",
                 "api_key", "APIKEY", "Bearer x", "password", "patch-bank 2", "sysex_bank",
                 "hw:0,0", "ALSA", "CoreAudio", "device/mic", "host/device/2"):
        assert redact_placement(text) == TEXT, text
    for text in ("salsa", "relative/dir", "plain", "", "tokens"):
        assert redact_placement(text) == text, text


def test_dict_keys_are_redacted_with_their_values_and_no_entry_is_lost():
    out = redact_placement({"password": "hunter2", "token=x": 1, "ok": "fine"})
    assert len(out) == 3
    assert out["ok"] == "fine"
    assert sorted(k for k in out if k != "ok") == [TEXT, TEXT + " #2"]
    assert all(v == TEXT for k, v in out.items() if k != "ok")


def test_sets_and_subclasses():
    assert redact_placement({"a", "/x"}) == {"a", TEXT}
    assert redact_placement(frozenset({"a"})) == frozenset({"a"})

    class S(str):
        pass
    out = redact_placement(S("plain"))
    assert out == "plain" and type(out) is str
    assert redact_placement("\ud800") == TEXT  # not UTF-8: nothing to judge it by


def test_refusals_are_clear():
    with pytest.raises(TypeError, match="cannot redact object of type complex"):
        redact_placement([1j])
    deep: list = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper than 256"):
        redact_placement(deep)
    cyc: list = []
    cyc.append(cyc)
    with pytest.raises(ValueError, match="deeper than 256"):
        redact_placement(cyc)
