"""A stream through a middle node whose source dies: real `fabric serve`
processes on loopback. A client streams from node b; b relays from node a
(a peer holding the stream) and has node c as its home. Node a is stalled
by a test fault at a chosen frame, then SIGKILLed:

- after its first item reached the client, the stream cannot restart
  elsewhere: it ends with a `StreamInterrupted` diagnostic and a
  `RemoteError`, the client saw each item once and in order, and b did not
  record it; the next request for it is answered whole by b's home;
- before its first item, b passes a over and the client gets the whole
  stream from b's home.

Synchronisation is by handshakes: readiness lines, the items the client
has read, and node a's log line saying its fault fired."""

import signal
import threading

import pytest

import fabric
from fabric.node import connect

import node_ops
from served import fleet, read_until  # noqa: F401 (fleet: the fixture)

N = 50  # items of the stream


def holder_with_fault(fleet, fault):
    """Node a holding the stream count(N) (computed by its home, then
    restarted without a home and with ``fault``)."""
    pa, a_url = fleet("a", "--home", "node_ops:home")
    with connect(a_url) as a:
        assert list(a.stream(node_ops.count.request(N))) == list(range(N))
    pa.send_signal(signal.SIGTERM)
    assert pa.wait(20) == 0
    return fleet("a", "--test-fault", fault)  # the same cassette: it holds the stream


def test_source_killed_after_the_first_item_ends_with_a_diagnostic_then_home_answers(fleet):
    pa, a_url = holder_with_fault(fleet, "stall:STREAM_CHUNK:3")
    pc, c_url = fleet("c", "--home", "node_ops:home")
    pb, b_url = fleet("b", "--peer", a_url, "--home", c_url)
    req = node_ops.count.request(N)
    with connect(b_url, timeout=60) as b:
        s = b.stream(req)
        got = [next(s), next(s)]  # a sent two chunks, then stalled
        assert got == [0, 1]
        read_until(pa, "test fault stall fired")
        pa.send_signal(signal.SIGKILL)
        pa.wait()
        with pytest.raises(fabric.RemoteError, match="cannot restart elsewhere") as info:
            for x in s:
                got.append(x)
        assert got == [0, 1]  # nothing repeated, nothing made up
        assert not s.done
        assert [d["kind"] for d in s.diagnostics] == ["StreamInterrupted"]
        assert "not recorded" in str(info.value)
    # b did not record the broken stream
    with connect(b_url, scope="held", timeout=60) as held:
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))
    # a is gone: b passes it over before the first item and its home answers whole
    with connect(b_url, timeout=60) as b:
        s = b.stream(req)
        assert list(s) == list(range(N)) and s.done
    with connect(b_url, scope="held", timeout=60) as held:  # recorded now
        assert list(held.stream(req)) == list(range(N))


def test_source_killed_before_the_first_item_fails_over_to_home(fleet):
    pa, a_url = holder_with_fault(fleet, "stall:STREAM_START:1")
    pc, c_url = fleet("c", "--home", "node_ops:home")
    pb, b_url = fleet("b", "--peer", a_url, "--home", c_url)
    req = node_ops.count.request(N)
    out: dict = {}

    def consume():
        try:
            with connect(b_url, timeout=60) as b:
                s = b.stream(req)
                out["items"] = list(s)
                out["done"] = s.done
        except BaseException as exc:  # reported to the test below
            out["error"] = exc

    t = threading.Thread(target=consume)
    t.start()
    read_until(pa, "test fault stall fired")  # b asked a, and a stalls before any item
    pa.send_signal(signal.SIGKILL)
    pa.wait()
    t.join(60)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    assert out["items"] == list(range(N)) and out["done"]
