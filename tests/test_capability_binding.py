"""Capabilities bind the reply (the values issue, defect 3): a request built
from an op's name declares the op's capabilities, a compute site refuses a
request that declares fewer than its op requires, and so a privileged
caller's reply is never served to a caller without the capability, through
any fabric."""

from __future__ import annotations

import pytest

import fabric
from fabric import CapabilityDenied, EvalRequest

CAP = "hr.read"


@pytest.fixture(scope="module")
def payroll():
    reg = fabric.OpRegistry()

    @fabric.op("test.cap.payroll", capabilities=(CAP,), registry=reg)
    def payroll(name):
        return {"name": name, "salary": 123}

    # The global registry too, for fabrics that look names up there.
    fabric.ops.REGISTRY.add(payroll)
    return reg, payroll


def test_a_name_call_declares_the_ops_capabilities(payroll):
    reg, op = payroll
    local = fabric.LocalFabric(reg, grants=(CAP,))
    assert local.call("test.cap.payroll", "bob") == {"name": "bob", "salary": 123}
    assert fabric.fabrics._request_for("test.cap.payroll", ("bob",), {}, reg) \
        == op.request("bob")
    assert op.request("bob").required_capabilities == (CAP,)


def test_compute_site_refuses_an_under_declaring_request(payroll):
    reg, _ = payroll
    local = fabric.LocalFabric(reg, grants=(CAP,))
    bare = EvalRequest("test.cap.payroll", ("bob",))
    for run in (lambda: local.evaluate(bare), lambda: local.evaluate(bare, timeout=5),
                lambda: list(local.stream(bare.replace(stream=True)))):
        with pytest.raises(CapabilityDenied, match="declares capabilities .* requires hr.read"):
            run()
    assert local.stats()["denied"] >= 3


def _every_fabric(reg, cassette_factory):
    """(name, privileged fabric, unprivileged fabric) over shared state."""
    home = fabric.LocalFabric(reg)
    cas = cassette_factory()
    a_priv = fabric.ContentAddressedFabric("a", cas, home=home, grants=(CAP,))
    a_user = fabric.ContentAddressedFabric("a2", cas, home=home)
    serve = fabric.ContentServeFabric(cas)
    b_user = fabric.ContentAddressedFabric(
        "b", cassette_factory(), peers=[fabric.ContentPeer("a", serve)], holders=a_priv.holders)
    relay_cas = cassette_factory()
    yield "content-addressed (local hit)", a_priv, a_user
    yield "content-serve", a_priv, serve
    yield "peer of a holder", a_priv, b_user
    yield "ledgered relay", fabric.LedgeredRelayFabric(home, relay_cas, grants=(CAP,)), \
        fabric.LedgeredRelayFabric(home, relay_cas)
    yield "relay", fabric.RelayFabric(home, (CAP,), grants=(CAP,)), \
        fabric.RelayFabric(home, (CAP,))
    yield "local", fabric.LocalFabric(reg, grants=(CAP,)), fabric.LocalFabric(reg)


def test_unprivileged_caller_after_a_privileged_one_through_every_fabric(
        payroll, cassette_factory):
    reg, op = payroll
    for name, priv, user in _every_fabric(reg, cassette_factory):
        # A privileged call by name and by op: computed (or held) and served.
        assert priv.call("test.cap.payroll", "bob")["salary"] == 123, name
        assert priv.call(op, "bob")["salary"] == 123, name
        # The same request from a caller without the capability: refused,
        # whether it names the op, passes the op or passes the request.
        for attempt in (lambda: user.call("test.cap.payroll", "bob"),
                        lambda: user.call(op, "bob"),
                        lambda: user.evaluate(op.request("bob"))):
            with pytest.raises(CapabilityDenied):
                attempt()
        # An under-declaring request from the privileged caller is never
        # computed, so no reply is ever held under its key.
        bare = EvalRequest("test.cap.payroll", ("bob",))
        with pytest.raises((CapabilityDenied, fabric.NoHolderError, fabric.ContentNotHeld)):
            priv.evaluate(bare)
        with pytest.raises((CapabilityDenied, fabric.NoHolderError, fabric.ContentNotHeld)):
            user.evaluate(bare)
        cassette = getattr(priv, "cassette", None)
        if cassette is not None:
            assert bare.key not in cassette, name
