"""Logging: named loggers, silent by default apart from warnings, never a secret."""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fabric

ROOT = Path(__file__).parent.parent
SECRET = "s3cr3t-value-that-must-never-be-logged"

reg = fabric.OpRegistry()


@fabric.op("log.login", registry=reg)
def login(user: str, password: fabric.Secret) -> str:
    assert password.reveal() == SECRET
    return f"hello {user}"


class _Broken:
    """A peer that fails every call (its serve fabric is gone)."""

    def evaluate(self, request, *, grants=None):
        raise fabric.FabricUnavailable("the link to this peer is down")


def _records_text(records):
    out = []
    for r in records:
        out.append(r.getMessage())
        out.append(repr(r.args))
        out.append(r.exc_text or "")
        out.append(repr(r.__dict__))
    return "\n".join(out)


def test_no_secret_in_any_record_through_peers_and_home(caplog, cassette_factory):
    caplog.set_level(logging.DEBUG, logger="fabric")
    home = fabric.LocalFabric(reg)
    holders = fabric.HoldingIndex()
    a = fabric.ContentAddressedFabric("a", cassette_factory("a"), home=home, holders=holders)
    b = fabric.ContentAddressedFabric(
        "b", cassette_factory("b"), holders=holders, home=home,
        peers=[fabric.ContentPeer("broken", _Broken()),
               fabric.ContentPeer("a", fabric.ContentServeFabric(a.cassette, node="a"))])
    try:
        held = login.request("ada", fabric.Secret(SECRET))
        assert a.evaluate(held).source == "home"  # a computes and holds it
        reply = b.evaluate(held)  # b: a is the announced holder
        assert reply.value == "hello ada" and reply.source == "peer:a"
        assert b.evaluate(held).source == "local"
        b.explain(held)
        # Nobody holds this one: b asks both peers (the broken one fails and
        # is marked failed, a does not hold it), then home.
        new = login.request("bob", fabric.Secret(SECRET))
        assert b.evaluate(new).source == "home"
        b.explain(new)
        relay = fabric.LedgeredRelayFabric(home, cassette_factory())
        relay.evaluate(login.request("cy", fabric.Secret(SECRET)))
        assert relay.evaluate(login.request("cy", fabric.Secret(SECRET))).value == "hello cy"
    finally:
        a.close()
        b.close()
        home.close()
    records = [r for r in caplog.records if r.name.startswith("fabric")]
    # The resolution was logged (so the check below looked at something).
    names = {r.name for r in records}
    assert "fabric.resolving" in names and "fabric.fabrics" in names
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any("asking home" in m for m in debug)
    assert any("asking peer 'broken'" in m for m in debug)
    assert any("answered by peer:a" in m for m in debug)
    assert any("moving on" in m for m in debug)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("marked peer 'broken' failed" in w for w in warnings)
    assert SECRET not in _records_text(records)
    assert SECRET not in caplog.text


def test_a_torn_tail_is_a_warning(tmp_path, caplog):
    path = tmp_path / "torn.ledger"
    with fabric.EvalCassette(str(path), durability="os") as c:
        c.record(fabric.EvalRequest("t", (1,)).key, 1)
    with open(path, "ab") as f:
        f.write(b"\x00\x01partial record cut short")  # a crash mid-append
    caplog.set_level(logging.WARNING, logger="fabric")
    c = fabric.EvalCassette(str(path), durability="os")
    try:
        assert c.stats()["torn_tails_cut"] == 1
        fabric.ContentAddressedFabric("n", c).close()
    finally:
        c.close()
    torn = [r for r in caplog.records if r.name == "fabric.cassette"]
    assert len(torn) == 1 and torn[0].levelno == logging.WARNING
    assert "torn tail" in torn[0].getMessage() and str(path) in torn[0].getMessage()


def test_silent_by_default_apart_from_warnings(tmp_path):
    """With no logging configured, DEBUG and INFO print nothing and a WARNING
    reaches stderr (Python's last-resort handler)."""
    script = textwrap.dedent("""
        import logging
        import fabric
        from fabric import resolving
        resolving.log.debug("a debug line")
        resolving.log.info("an info line")
        resolving.log.warning("a warning line")
        fab = fabric.LocalFabric()
        print("done", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == "a warning line\n"


@pytest.mark.parametrize("name", ["fabric.resolving", "fabric.fabrics", "fabric.cassette"])
def test_loggers_are_named_under_fabric(name):
    import fabric.fabrics
    import fabric.resolving  # noqa: F401
    assert name in logging.Logger.manager.loggerDict
    assert logging.getLogger(name).parent.name in ("fabric", "root")
