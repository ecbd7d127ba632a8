"""Secrets and worker processes: a request holding a fabric.Secret never
travels to a worker; a SecretRef is resolved in the worker that runs the op,
from the secret store the fabric was given (sent once, at spawn). The values
never reach the cassette file, frames or logs."""

import json
import logging

import pytest

import fabric
from fabric import CapabilityDenied, PlacementFabric, ReplicaGroup, ServerPlacementRequest
from fabric.node import SecretStore

SecretRef = fabric.SecretRef  # the public spelling (which renames its __module__ to fabric)

REG = fabric.OpRegistry()
SEED = bytes([3]) * 32
PLACE = ("stream.placement.run-node-on-server", "stream.remote.network", "stream.remote.render")
NAMES = [f"db-{i}" for i in range(4)]


def planted(name):
    return f"planted-secret-{name}-do-not-leak"


@fabric.op("sec.use", registry=REG)
def use(name, token, extra=None):
    # The op sees the value, as a Secret; it returns the Secret itself too.
    assert isinstance(token, fabric.Secret), type(token)
    return {"ok": token.reveal() == planted(name), "len": len(token.reveal()),
            "token": token, "nested": [{"t": token}], "extra": extra}


@fabric.op("sec.stream", registry=REG)
def use_stream(name, token):
    for j in range(3):
        yield {"j": j, "ok": token.reveal() == planted(name), "token": token}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("secrets") / "secrets.json"
    path.write_text(json.dumps({n: planted(n) for n in NAMES}))
    return SecretStore(str(path), environ={})


@pytest.fixture(scope="module")
def group(store):
    g = ReplicaGroup("secrets", 2, group_seed=SEED, ops=REG, secrets=store)
    yield g
    g.close()


def leaked(blob):
    return [n for n in NAMES if planted(n) in blob]


def test_secret_refs_resolve_in_the_replica_and_never_leak(group, store, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    texts = [repr(group), repr(store)]
    path = tmp_path / "n.ledger"
    grants = ["secret:*"]
    with fabric.EvalCassette(str(path), durability="os") as cassette:
        node = fabric.ContentAddressedFabric("n", cassette, home=group)
        for name in NAMES:
            request = use.request(name, SecretRef(name), extra={"ref": SecretRef(name)})
            reply = node.evaluate(request, grants=grants)
            assert reply.value["ok"] and reply.value["len"] == len(planted(name))
            # The Secret the op returned stays in the worker: it arrives redacted.
            assert reply.value["token"] is fabric.REDACTED
            assert reply.value["nested"] == [{"t": fabric.REDACTED}]
            assert node.evaluate(request, grants=grants).source == "local"
            texts += [repr(request), repr(reply), str(request.key)]
        items = list(node.stream(use_stream.request("db-0", SecretRef("db-0")), grants=grants))
        assert [i["ok"] for i in items] == [True] * 3
        assert all(i["token"] is fabric.REDACTED for i in items)
        texts += [repr(items), repr(node.stats()), repr(group.stats())]
    texts.append(path.read_bytes().decode("latin-1"))
    texts.append(caplog.text)
    assert leaked("\n".join(texts)) == []


def test_a_secret_itself_is_refused_before_it_travels(group):
    secret = fabric.Secret(planted("db-0"))
    for request in (use.request("db-0", secret), use.request("db-0", "x", extra=[{"k": secret}])):
        with pytest.raises(CapabilityDenied, match=r"fabric\.SecretRef\(name\)") as info:
            group.evaluate(request, grants=["secret:*"])
        assert "does not travel to a worker" in str(info.value)
        assert leaked(str(info.value)) == []
    assert "extra" in str(info.value)  # where in the request it was


def test_refs_need_the_grant_a_known_name_and_a_store(group):
    with pytest.raises(CapabilityDenied, match="secret:db-1"):
        group.evaluate(use.request("db-1", SecretRef("db-1")), grants=["secret:db-0"])
    with pytest.raises(CapabilityDenied, match="no secret named 'nope'"):
        group.evaluate(use.request("nope", SecretRef("nope")), grants=["secret:*"])
    with ReplicaGroup("bare", 1, group_seed=SEED, ops=REG) as bare:
        with pytest.raises(CapabilityDenied, match="no secret store"):
            bare.evaluate(use.request("db-0", SecretRef("db-0")), grants=["secret:*"])
    with pytest.raises(TypeError, match="SecretStore"):
        ReplicaGroup("bad", 1, group_seed=SEED, ops=REG, secrets={"db-0": "x"})


def test_placement_resolves_in_its_worker_and_frames_hold_no_value(store, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with PlacementFabric(ops=REG, grants=PLACE + ("secret:*",), secrets=store) as f:
        request = use.request("db-2", SecretRef("db-2"))
        frames = list(f.place(ServerPlacementRequest.render_return(request)))
        assert not any(fr.flags & fabric.FRAME_FLAG_DIAGNOSTIC for fr in frames)
        wire = b"".join(fr.encode() for fr in frames)
        assert b"db-2" in wire  # the reference travels, by name
        value = fabric.unpack(frames[3].payload)["value"]
        assert value["ok"] is True and value["token"] is fabric.REDACTED
        reply = f.evaluate(request)
        assert reply.value["ok"] and reply.value["token"] is fabric.REDACTED
        with pytest.raises(CapabilityDenied, match="does not travel to a worker"):
            f.place(ServerPlacementRequest.render_return(
                use.request("db-2", fabric.Secret(planted("db-2")))))
        cas = fabric.EvalCassette(str(tmp_path / "p.ledger"))
        fabric.stream_frames_to_cassette(frames, cas, request.key)
        cas.close()
        blob = "\n".join([wire.decode("latin-1"), repr(reply), repr(f), caplog.text,
                          (tmp_path / "p.ledger").read_bytes().decode("latin-1")])
    assert leaked(blob) == []


def test_a_node_whose_home_is_a_group_resolves_refs_in_the_replicas(store, tmp_path):
    # As `fabric serve --workers N --secrets FILE` makes it: the node hands
    # the reference on; the replica resolves it.
    from fabric.node import Node, connect
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({n: planted(n) for n in NAMES}))
    with ReplicaGroup("node", 1, group_seed=SEED, ops=REG, secrets=store) as g:
        n = Node(str(tmp_path / "n.ledger"), node_id="n", home=g, listen="127.0.0.1:0",
                 secrets=str(path), grants={"*": ["node.compute", "secret:db-3"]}).start()
        try:
            with connect(n.url) as c:
                reply = c.evaluate(use.request("db-3", SecretRef("db-3")))
                assert reply.value["ok"] is True and reply.value["len"] == len(planted("db-3"))
                with pytest.raises(CapabilityDenied, match="secret:db-1"):
                    c.evaluate(use.request("db-1", SecretRef("db-1")))
            raw = (tmp_path / "n.ledger").read_bytes()
        finally:
            n.stop()
    assert leaked(raw.decode("latin-1")) == []
