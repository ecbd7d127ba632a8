"""Planted secrets (QUALITY.md P1s): a Secret's value never reaches key
bytes, the ledger, frames, logs, exception text or repr, end to end through
the product's real components."""

import logging
import pickle

import pytest

import fabric

N = 1000


def planted(i):
    return f"planted-secret-{i:04d}-do-not-leak"


@fabric.op("test.secrets.use", version=1)
def use_secret(i, token):
    # The op sees the value; what it returns carries the Secret itself.
    assert token.reveal() == planted(i)
    return {"i": i, "token": token, "len": len(token.reveal())}


@fabric.op("test.secrets.stream", version=1)
def stream_secret(token):
    for j in range(3):
        yield {"j": j, "token": token}


@fabric.op("test.secrets.fail", version=1)
def fail_with_secret(token):
    raise ValueError(f"failed for {token!r}")  # repr of a Secret is safe


def test_planted_secrets_never_leak(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "node.ledger"
    texts = []
    with fabric.EvalCassette(str(path), durability="os") as cassette:
        node = fabric.ContentAddressedFabric("a", cassette, home=fabric.LocalFabric())
        for i in range(N):
            secret = fabric.Secret(planted(i))
            request = use_secret.request(i, secret)
            reply = node.evaluate(request)
            assert reply.value["len"] == len(planted(i))
            # The computing caller gets what the op returned; a later hit
            # gets the marker the ledger holds.
            assert reply.value["token"] is secret
            assert node.evaluate(request).value["token"] is fabric.REDACTED
            texts += [repr(request), str(request), repr(secret), str(secret), repr(reply),
                      str(request.key), request.identity_bytes().hex()]
            texts.append(request.identity_bytes().decode("latin-1"))
            texts.append(fabric.canonical_bytes({"s": secret}).decode("latin-1"))
            if i % 100 == 0:
                with pytest.raises(TypeError) as info:
                    pickle.dumps(secret)
                texts.append(str(info.value))
                stream = list(node.stream(stream_secret.request(secret)))
                assert [item["j"] for item in stream] == [0, 1, 2]
                texts.append(repr(stream))
                frames = list(fabric.stream_to_frames(
                    [{"token": secret}], stream_id=i + 1, metadata={"op": "x"}))
                texts.append(b"".join(f.encode() for f in frames).decode("latin-1"))
                with pytest.raises(ValueError) as info:
                    node.evaluate(fail_with_secret.request(secret))
                texts.append(str(info.value) + repr(info.value))
                with pytest.raises(TypeError) as info:
                    fabric.EvalRequest("x", (secret, object()))
                texts.append(str(info.value))
        texts += [repr(node), repr(cassette), str(cassette.stats()), repr(node.stats())]
        texts.append(repr(node.explain(use_secret.request(0, fabric.Secret(planted(0))))))
    texts.append(path.read_bytes().decode("latin-1"))
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert "planted-secret-" not in blob
    # And the values really were used: every reply was computed and recorded.
    with fabric.EvalCassette(str(path), "r") as cassette:
        assert len(cassette) >= N


def test_the_node_and_the_worker_checks_walk_a_request_alike():
    # Both walk a request's values with fabric.values.walk: the same place
    # named for a nested Secret, and every SecretRef found, depth first.
    from fabric.node import SecretRef
    from fabric.node.protocol import check_no_secret
    from fabric.placement import secret_refs

    secret = fabric.Secret(planted(1))
    request = use_secret.request(1, [0, {"k": (1, secret)}])
    with pytest.raises(fabric.CapabilityDenied) as node:
        check_no_secret(request.args, "args")
    with pytest.raises(fabric.CapabilityDenied) as worker:
        secret_refs(request, "here")
    assert str(node.value).startswith("args[1][1]['k'][1] holds a fabric.Secret")
    assert str(worker.value).startswith("here: args[1][1]['k'][1] of the request")
    assert planted(1) not in str(node.value) + str(worker.value)

    refs = use_secret.request(SecretRef("a"), [{"x": SecretRef("b")}, (SecretRef("c"),)])
    check_no_secret(refs.args, "args")
    assert secret_refs(refs, "here") == ["a", "b", "c"]


@pytest.mark.parametrize("where, value", [
    ("args", (fabric.Secret(b"s"),)),
    ("args", [1, "x", fabric.Secret(b"s")]),
    ("kwargs", {"a": 1, "b": fabric.Secret(b"s")}),
    ("kwargs", {"a": [1, {"c": fabric.Secret(b"s")}]}),
    ("args", ({fabric.SecretRef("k"): 1}, fabric.Secret(b"s"))),
    ("args", fabric.Secret(b"s")),
])
def test_a_secret_is_found_past_the_flat_fast_path(where, value):
    # Flat tuples, lists and dicts of plain scalars skip the walk: anything
    # else, a Secret at the top or nested, is still found and refused.
    from fabric.node.protocol import check_no_secret
    with pytest.raises(fabric.CapabilityDenied, match="holds a fabric.Secret"):
        check_no_secret(value, where)


def test_the_client_checks_a_request_once_before_it_is_sent():
    # request_to_wire checks unless told the caller did (the client's
    # _prepare): a Secret is refused either way by whoever checks.
    from fabric.node.protocol import request_to_wire
    request = use_secret.request(1, [fabric.Secret(planted(2))])
    with pytest.raises(fabric.CapabilityDenied):
        request_to_wire(request)
    assert request_to_wire(use_secret.request(1, [0]))["args"] == [1, [0]]
