"""Secret(value, commit=True): keys carry HMAC-SHA256 of the value's
canonical bytes under the commitment key (docs/spec/content-key.md)."""

import hashlib
import hmac
import os
import subprocess
import sys

import pytest

import fabric
import reference_encoder as ref
from fabric import EvalRequest, Secret

TEST_KEY = b"fabric-golden-commit-key"  # the fixed key of the golden vector below


@pytest.fixture
def commit_key():
    fabric.set_commit_key(TEST_KEY)
    yield TEST_KEY
    fabric.set_commit_key(None)


def test_without_a_commitment_key_keying_is_refused():
    fabric.set_commit_key(None)
    with pytest.raises(ValueError) as info:
        EvalRequest("db", (), {"password": Secret("tenant-a", commit=True)})
    assert str(info.value) == (
        "kwargs['password']: a Secret(commit=True) needs a commitment key: set "
        "FABRIC_COMMIT_KEY or FABRIC_COMMIT_KEY_FILE, or call fabric.set_commit_key()")
    # A plain secret still keys by its marker.
    EvalRequest("db", (), {"password": Secret("tenant-a")})


def test_golden_vector(commit_key):
    data = fabric.canonical_bytes(Secret("tenant-a", commit=True))
    mac = hmac.new(TEST_KEY, fabric.canonical_bytes("tenant-a"), hashlib.sha256).digest()
    assert data == b"\xc7\x20\x04" + mac
    assert data.hex() == ("c72004" "8ec6d5732b1cef9d3022487a24d2ff1d"
                          "4217a208602041257c1fee47cd9a517a")
    assert data == ref.encode(Secret("tenant-a", commit=True), commit_key=TEST_KEY)


def test_keys_differ_per_secret_and_never_hold_it(commit_key):
    a = EvalRequest("db", (), {"password": Secret("tenant-a", commit=True)})
    b = EvalRequest("db", (), {"password": Secret("tenant-b", commit=True)})
    plain = EvalRequest("db", (), {"password": Secret("tenant-a")})
    assert len({a.key, b.key, plain.key}) == 3
    assert a.key == EvalRequest("db", (), {"password": Secret("tenant-a", commit=True)}).key
    assert b"tenant-a" not in a.identity_bytes() and "tenant-a" not in repr(a)
    # Values of other kinds commit by their canonical bytes: 1 and "1" differ.
    assert fabric.canonical_bytes(Secret(1, commit=True)) != \
        fabric.canonical_bytes(Secret("1", commit=True))
    # The value side never carries it: the marker, read back as REDACTED.
    assert fabric.decode_value(fabric.encode_value(Secret("x", commit=True))) is fabric.REDACTED


def test_changing_the_commitment_key_changes_the_key(commit_key):
    s = Secret("tenant-a", commit=True)
    k1 = EvalRequest("db", (s,)).key
    fabric.set_commit_key(b"another-commitment-key")
    assert EvalRequest("db", (s,)).key != k1


def test_keys_are_stable_across_processes(commit_key, tmp_path):
    here = EvalRequest("db", (Secret("tenant-a", commit=True),)).key
    code = ("import fabric; print(fabric.EvalRequest('db', "
            "(fabric.Secret('tenant-a', commit=True),)).key)")
    env = {"PYTHONPATH": os.pathsep.join(sys.path), "FABRIC_COMMIT_KEY": TEST_KEY.decode()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(here), out.stderr
    keyfile = tmp_path / "commit.key"
    keyfile.write_bytes(TEST_KEY + b"\n")
    env = {"PYTHONPATH": os.pathsep.join(sys.path), "FABRIC_COMMIT_KEY_FILE": str(keyfile)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(here), out.stderr


def test_bad_commitment_keys_and_values(commit_key):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        fabric.set_commit_key(b"short")
    with pytest.raises(TypeError):
        fabric.set_commit_key(123)
    # An error inside the secret's value says nothing about the value.
    with pytest.raises(TypeError) as info:
        fabric.canonical_bytes({"s": Secret({"hunter2": object()}, commit=True)})
    assert str(info.value) == "value['s']: the value of a committed Secret cannot be keyed"
    assert Secret("x", commit=True).commit and not Secret("x").commit
    with pytest.raises(TypeError):
        Secret("x", True)  # commit is keyword-only
