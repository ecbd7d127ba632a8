"""The pytest plugin (fabric.pytest_plugin), run through pytester on real
suites: each record mode on an empty and on an existing cassette, a
replay-only miss, ``all`` replacing a cassette, and two xdist workers."""

from __future__ import annotations

import os

import pytest

import fabric

pytest_plugins = ["pytester"]

# A suite whose op counts its real calls in a file, so a test can tell a
# computed reply from a replayed one across pytest runs.
SUITE = """
import os
import fabric

CALLS = os.path.join(os.path.dirname(__file__), "calls.txt")

@fabric.op("plugin.square", version=1)
def square(x):
    with open(CALLS, "a") as f:
        f.write(f"{x}\\n")
    return x * x

@fabric.op("plugin.count", version=1)
def count(n):
    for i in range(n):
        yield i

def test_square(fabric_fabric):
    assert fabric_fabric.call(square, 3) == 9
    assert fabric_fabric.call(square, 4) == 16

def test_stream(fabric_fabric):
    assert list(fabric_fabric.call(count, 3)) == [0, 1, 2]
"""


def calls(pytester) -> list[str]:
    path = pytester.path / "calls.txt"
    return path.read_text().split() if path.exists() else []


def cassette(pytester, test="test_square") -> str:
    return str(pytester.path / "cassettes" / "test_suite" / f"{test}.fabl")


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_none_without_cassette_fails_with_the_command_that_records(suite):
    result = suite.runpytest()
    result.assert_outcomes(errors=2)  # failed in the fixture: at set-up
    result.stdout.fnmatch_lines(["*does not exist and the record mode is 'none'*",
                                 "*pytest --fabric-record-mode=once test_suite.py::test_square*"])
    assert calls(suite) == []


def test_once_records_then_replays(suite):
    suite.runpytest("--fabric-record-mode=once").assert_outcomes(passed=2)
    assert calls(suite) == ["3", "4"]
    assert os.path.exists(cassette(suite))
    # Existing cassette: replay only, nothing computed again, in every mode
    # that replays.
    for mode in ("once", "none", "new"):
        suite.runpytest(f"--fabric-record-mode={mode}").assert_outcomes(passed=2)
    assert calls(suite) == ["3", "4"]
    with fabric.EvalCassette(cassette(suite), "r") as c:
        assert len(c) == 2
    with fabric.EvalCassette(cassette(suite, "test_stream"), "r") as c:
        assert len(c) == 1


def test_default_mode_is_none_and_replays(suite):
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    suite.runpytest().assert_outcomes(passed=2)
    assert calls(suite) == ["3", "4"]


def test_none_miss_names_op_arguments_and_command(suite):
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    suite.makepyfile(test_suite=SUITE.replace("square, 4) == 16", "square, 5) == 25"))
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*CassetteMiss: plugin.square(5) is not in the fabric cassette*",
        "*record it with: pytest --fabric-record-mode=new test_suite.py::test_square*"])
    assert calls(suite) == ["3", "4"]


def test_none_miss_shows_a_diff_against_the_closest_recorded_request(suite):
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    suite.makepyfile(test_suite=SUITE.replace("square, 4) == 16", "square, 40) == 1600"))
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*CassetteMiss: plugin.square(40) is not in the fabric cassette*",
        "*--- closest recorded request (2 of this op)*",
        "*+++ this request*",
        "*-args[[]0[]]: 4",
        "*+args[[]0[]]: 40"])
    # a request of an op the cassette never saw says so
    suite.makepyfile(test_suite=SUITE.replace("square, 4) == 16", "square, 4) == 16\n"
                                              "    fabric_fabric.call(count, 9)"))
    result = suite.runpytest("-k", "test_square")
    result.stdout.fnmatch_lines(["*no recorded request of 'plugin.count' to compare with*"])


def _to_old_scheme(path: str) -> None:
    """Rewrites the cassette at path as if recorded under a fake older key
    scheme: each request's identity bytes under the tag fabric.key/1 and
    keyed by their SHA-256 (as key_v1 in test_cassette)."""
    import hashlib

    old = path + ".old"
    with fabric.EvalCassette.from_ledger(path) as c, fabric.EvalCassette(old, durability="os") as o:
        for k, ident in c.requests():
            # Scheme 1's layout: the tag, then ten fields (no sharing class).
            ident = fabric.canonical_bytes(["fabric.key/1"] + list(fabric.unpack(ident)[1:11]))
            o.record(fabric.ContentKey(hashlib.sha256(ident).digest()), c.get(k), request=ident)
    os.replace(old, path)


def test_none_miss_on_an_older_scheme_cassette_says_to_rekey(suite):
    from fabric.cassette_cli import rekey

    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    path = cassette(suite)
    _to_old_scheme(path)
    result = suite.runpytest("-k", "test_square")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"*older key scheme (fabric.key/1; now fabric.key/2)*fabric cassette rekey {path}`"])
    assert rekey(path)["rekeyed"] == 2
    suite.runpytest("-k", "test_square").assert_outcomes(passed=1)
    assert calls(suite) == ["3", "4"]  # replayed, never computed again


def test_none_miss_redacts_secrets(pytester):
    pytester.makepyfile(test_s="""
        import fabric

        @fabric.op("plugin.fetch", version=1)
        def fetch(url, token):
            return url

        def test_fetch(fabric_fabric):
            fabric_fabric.call(fetch, "a", token=fabric.Secret("hunter2-secret"))
        """)
    pytester.runpytest("--fabric-record-mode=new").assert_outcomes(passed=1)
    pytester.makepyfile(test_s="""
        import fabric

        @fabric.op("plugin.fetch", version=1)
        def fetch(url, token):
            return url

        def test_fetch(fabric_fabric):
            fabric_fabric.call(fetch, "b", token=fabric.Secret("hunter2-secret"))
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    # pytest prints the test's source (which holds the literal); the
    # failure's own text must not.
    miss = [line for line in result.stdout.lines if "CassetteMiss:" in line]
    assert miss and all("hunter2-secret" not in line for line in miss)
    # the diff shows the secret's marker on both sides, never its value
    text = result.stdout.str()
    start = text.index("CassetteMiss:")
    assert "hunter2-secret" not in text[start:text.index("short test summary", start)]
    result.stdout.fnmatch_lines(["*-args[[]0[]]: 'a'", "*+args[[]0[]]: 'b'"])
    assert any("plugin.fetch('b', token=Secret('***'))" in line for line in miss)


def test_new_records_only_what_is_new(suite):
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    suite.makepyfile(test_suite=SUITE.replace("square, 4) == 16", "square, 5) == 25"))
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    assert calls(suite) == ["3", "4", "5"]
    with fabric.EvalCassette(cassette(suite), "r") as c:
        assert len(c) == 3


def test_all_replaces_the_cassette(suite):
    suite.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    suite.makepyfile(test_suite=SUITE.replace("square, 4) == 16", "square, 5) == 25"))
    suite.runpytest("--fabric-record-mode=all").assert_outcomes(passed=2)
    # Everything computed afresh, and the old reply (4) is gone.
    assert calls(suite) == ["3", "4", "3", "5"]
    with fabric.EvalCassette(cassette(suite), "r") as c:
        assert len(c) == 2
        assert fabric.EvalRequest("plugin.square", (4,), version=1).key not in c
        assert fabric.EvalRequest("plugin.square", (5,), version=1).key in c
    leftovers = [p for p in suite.path.rglob("*") if p.name.endswith(".fabric-new")]
    assert leftovers == []


def test_marker_names_a_shared_cassette(pytester):
    pytester.makepyfile(test_m="""
        import pytest
        import fabric

        @fabric.op("plugin.double", version=1)
        def double(x):
            return 2 * x

        pytestmark = pytest.mark.fabric(cassette="shared.fabl")

        def test_a(fabric_fabric):
            assert fabric_fabric.call(double, 1) == 2

        def test_b(fabric_fabric, fabric_cassette):
            assert fabric_fabric.call(double, 2) == 4
            assert fabric_cassette.path.endswith("cassettes/shared.fabl")
        """)
    pytester.runpytest("--fabric-record-mode=new").assert_outcomes(passed=2)
    with fabric.EvalCassette(str(pytester.path / "cassettes" / "shared.fabl"), "r") as c:
        assert len(c) == 2


def test_bad_mode_is_a_usage_error(suite):
    result = suite.runpytest("--fabric-record-mode=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'sometimes'*"])


def test_two_xdist_workers(suite):
    pytest.importorskip("xdist")
    result = suite.runpytest_subprocess("-n", "2", "--fabric-record-mode=all")
    result.assert_outcomes(passed=2)
    assert sorted(calls(suite)) == ["3", "4"]
    assert os.path.exists(cassette(suite)) and os.path.exists(cassette(suite, "test_stream"))
    assert [p for p in suite.path.rglob("*") if p.name.endswith(".fabric-new")] == []
    result = suite.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=2)
    assert sorted(calls(suite)) == ["3", "4"]
