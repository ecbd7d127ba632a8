"""``fabric serve --metrics``: /metrics scraped over loopback and parsed twice:
by a strict reader of the Prometheus text exposition format (version 0.0.4)
written here, and by ``prometheus_client``'s own parser; the two must agree."""

import http.client
import math
import os
import re
import subprocess
import sys

import pytest

import fabric
from fabric.node.gossip import GossipConfig
from fabric.governor import PeerGovernor
from fabric.node import Node, connect
from fabric.node.metrics import CONTENT_TYPE, render, start_metrics, stop_metrics
from prometheus_client.parser import text_string_to_metric_families

import node_ops
from conftest import end_process, started_nodes, wait_for
from served import serve

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")


def _unescape(v):
    return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse(text):
    """{(name, frozenset(labels)): value} and {name: type}; AssertionError on
    anything the exposition format does not allow."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    types, helps, samples = {}, {}, {}
    for n, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in helps, (n, line)
            helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in types, (n, line)
            assert kind in ("counter", "gauge"), (n, line)
            assert not any(s[0] == name for s in samples), f"TYPE after samples: {line}"
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"line {n} is not a sample: {line!r}"
            name, labels, value = m.group(1), m.group(2), m.group(m.lastindex)
            assert name in types, f"line {n}: {name} has no TYPE"
            if types[name] == "counter":
                assert name.endswith("_total"), name
            lab = frozenset((k, _unescape(v)) for k, v in re.findall(_LABEL, labels or ""))
            assert len(lab) == len(re.findall(_LABEL, labels or "")), f"repeated label: {line}"
            v = float(value)
            assert not math.isnan(v)
            if types[name] == "counter":
                assert v >= 0, line
            key = (name, lab)
            assert key not in samples, f"line {n} repeats {key}"
            samples[key] = v
    assert set(helps) == set(types)
    # prometheus_client's parser reads the same samples, no more, no fewer.
    theirs = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            key = (smp.name, frozenset(smp.labels.items()))
            assert key not in theirs, key
            theirs[key] = smp.value
            kind = types.get(smp.name)
            assert kind == fam.type, (smp.name, kind, fam.type)
    assert theirs == samples
    return samples, types


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, HERE, os.environ.get("PYTHONPATH")) if p))


def scrape(url_or_addr, path="/metrics", method="GET"):
    host, port = url_or_addr
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        conn.close()


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def node(tmp_path):
    """``node(name=None, **Node kwargs)``: started nodes, no home unless given."""
    with started_nodes(tmp_path) as make:
        yield make


def test_scrape_counts_requests_hits_misses_bytes_and_peers(node):
    # fanout 0: a never dials b through membership (a link to b would make
    # a's miss ask b first, a 5th request at b); b's own link still carries
    # a's gossip to b.
    a = node("a", home=fabric.LocalFabric(), gossip=GossipConfig(fanout=0))
    b = node("b", peers=[a.url], governor=PeerGovernor())
    ms = start_metrics(b, "127.0.0.1:0")
    try:
        with connect(a.url) as ca:
            assert ca.evaluate(node_ops.double.request(5)).value == 10  # a computes
        wait_for(lambda: b.status()["counters"].get("gossip_facts_in", 0) >= 1,
                 "a's announce to reach b by gossip")
        with connect(b.url) as cb:
            assert cb.evaluate(node_ops.double.request(5)).value == 10  # b from peer a
            assert cb.evaluate(node_ops.double.request(5)).value == 10  # b holds it now
            with pytest.raises(fabric.FabricError):
                cb.evaluate(node_ops.double.request(6))  # nobody holds it, b has no home
            with pytest.raises(fabric.FabricError):
                list(cb.stream(node_ops.count.request(2)))  # the same for a stream
        status, ctype, text = scrape(ms.address)
    finally:
        stop_metrics(ms)
    assert status == 200 and ctype == CONTENT_TYPE
    samples, types = parse(text)
    assert value(samples, "fabric_node_info", node="b", version=fabric.__version__,
                 protocol="1.0") == 1
    assert value(samples, "fabric_node_requests_received_total") == 4
    assert value(samples, "fabric_node_requests_total", outcome="replied") + value(
        samples, "fabric_node_requests_total", outcome="error") == 4
    assert value(samples, "fabric_node_requests_total", outcome="error") == 2
    assert value(samples, "fabric_node_hits_total", source="peer") == 1
    assert value(samples, "fabric_node_hits_total", source="local") == 1
    assert value(samples, "fabric_node_bytes_received_total") > 0
    assert value(samples, "fabric_node_bytes_sent_total") > 0
    assert value(samples, "fabric_node_peer_connected", peer="a", url=a.url) == 1
    assert value(samples, "fabric_node_peer_down", peer="a") == 0
    assert value(samples, "fabric_node_holding_keys") >= 1
    assert value(samples, "fabric_node_gossip_facts_received_total") >= 1
    assert value(samples, "fabric_node_gossip_facts_total", direction="in") >= 1
    assert value(samples, "fabric_node_gossip_messages_total", direction="in") >= 1
    assert value(samples, "fabric_node_stream_credit_remaining_bytes") == 0  # none open
    assert value(samples, "fabric_node_connections") == 0  # the client closed
    assert value(samples, "fabric_node_events_total", event="requests") == 4
    assert types["fabric_node_uptime_seconds"] == "gauge"


def test_http_edges(node):
    n = node("h")
    ms = start_metrics(n, "127.0.0.1:0")
    try:
        assert scrape(ms.address, "/")[0] == 404
        assert scrape(ms.address, "/metrics", "POST")[0] == 405
        status, _ctype, body = scrape(ms.address, "/metrics?x=1", "HEAD")
        assert status == 200 and body == ""
        # a head that never ends within the limit is refused, not buffered
        import socket
        with socket.create_connection(ms.address, timeout=30) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
            reply = b""
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                reply += data
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert ms.scrapes == 1  # only the HEAD was a scrape
    finally:
        stop_metrics(ms)


def _status(node):
    return {"node": node, "version": "0", "protocol": [1, 0], "incarnation": 0,
            "uptime": 1.5, "url": None,
            "connections": {"open": 0, "max": 1, "accepted": 0, "refused": 0, "gossip": 0,
                            "by_principal": {}},
            "requests": {"received": 0, "replied": 0, "errors": 0, "cancelled": 0,
                         "denied_compute": 0, "hits_inline": 0, "running": 0, "queued": 0,
                         "max_running": 1},
            "streams": {"open": 0, "queued_frames": 0, "evictions": 0},
            "bytes": {"in": 0, "out": 0}, "cassette": {"error": "closed"},
            "holdings": {"facts": 0, "keys": 0, "version": 0, "memory": 0},
            "fabric": {}, "served": {}, "peers": [], "counters": {}}


def test_label_values_are_escaped():
    st = _status('we"ird\\node\n')
    st["counters"] = {"refused_Unauthenticated": 2}
    text = render(st)
    assert 'node="we\\"ird\\\\node\\n"' in text  # escaped as the format says
    samples, _ = parse(text)
    assert value(samples, "fabric_node_info", node='we"ird\\node\n', version="0",
                 protocol="1.0") == 1
    assert value(samples, "fabric_node_cassette_failed") == 1
    assert value(samples, "fabric_node_connections_closed_total",
                 reason="Unauthenticated") == 2


def test_fabric_serve_metrics_flag(tmp_path):
    proc, url = serve(tmp_path, "m", "--home", "node_ops:home", "--metrics", "127.0.0.1:0")
    try:
        mline = proc.stdout.readline()  # the second line, after the readiness line
        assert mline.startswith("fabric serve: metrics on http://127.0.0.1:"), mline
        with connect(url) as c:
            assert c.evaluate(node_ops.double.request(3)).value == 6
        hostport = mline.rsplit("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        status, ctype, text = scrape((host, int(port)))
        assert status == 200 and ctype == CONTENT_TYPE
        samples, _ = parse(text)
        assert value(samples, "fabric_node_misses_total", outcome="computed") == 1
        assert value(samples, "fabric_node_requests_total", outcome="replied") == 1
        assert value(samples, "fabric_node_cassette_keys") == 1
    finally:
        end_process(proc, 30)


def test_the_endpoint_stops_with_the_node(tmp_path):
    import socket
    n = Node(str(tmp_path / "s.ledger"), node_id="s", listen="127.0.0.1:0").start()
    ms = start_metrics(n, "127.0.0.1:0")
    assert scrape(ms.address)[0] == 200
    n.stop()  # joins the node's thread: its loop and the endpoint are gone
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(ms.address, timeout=30).close()
    stop_metrics(ms)  # harmless afterwards


def test_families_are_prometheus_client_metrics():
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from fabric.node.metrics import StatusCollector
    st = _status(node="n")
    st["counters"] = {"requests": 3}
    fams = {f.name: f for f in StatusCollector(lambda: st).collect()}
    # A counter family is named without _total; its sample has it.
    assert isinstance(fams["fabric_node_events"], CounterMetricFamily)
    assert [(s.name, s.labels, s.value) for s in fams["fabric_node_events"].samples] == [
        ("fabric_node_events_total", {"event": "requests"}, 3.0)]
    assert isinstance(fams["fabric_node_connections"], GaugeMetricFamily)


def test_metrics_without_the_extra_is_a_clear_error(tmp_path):
    # prometheus_client made unimportable in a real `fabric serve` process:
    # --metrics is refused in one line naming the extra, before any node
    # starts (no cassette made); without --metrics the node needs no extra.
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from fabric.cli import main; sys.exit(main(sys.argv[1:]))")
    ledger = tmp_path / "x.ledger"
    r = subprocess.run([sys.executable, "-c", code, "serve", "--listen", "127.0.0.1:0",
                        "--cassette", str(ledger), "--metrics", "127.0.0.1:0"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fabric serve: error: --metrics needs prometheus_client ("), r
    assert lines[0].endswith("): pip install 'stream-fabric[metrics]'"), r.stderr
    assert not ledger.exists() and r.stdout == ""
    r = subprocess.run([sys.executable, "-c", code, "status", "--help"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
