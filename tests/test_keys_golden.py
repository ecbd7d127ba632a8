"""The golden vectors of docs/spec/content-key.md, checked against the C core
and against the pure-Python reference encoder."""

import json
import os
import subprocess
import sys

import pytest

import fabric
import reference_encoder
from golden import make_content_keys as vectors

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "content_keys.json")

with open(GOLDEN) as _f:
    DATA = json.load(_f)


def _ids(entries):
    return [e["name"] for e in entries]


def test_scheme_tag():
    assert DATA["scheme"] == fabric.KEY_SCHEME == "fabric.key/2"


@pytest.mark.parametrize("vector", DATA["values"], ids=_ids(DATA["values"]))
def test_value_vector(vector):
    value = vectors.evaluate(vector["python"])
    assert fabric.canonical_bytes(value).hex() == vector["hex"]
    assert reference_encoder.encode(value).hex() == vector["hex"]


@pytest.mark.parametrize("vector", DATA["requests"], ids=_ids(DATA["requests"]))
def test_request_vector(vector):
    req = vectors.evaluate(vector["python"])
    assert req.identity_bytes().hex() == vector["identity_hex"]
    assert str(req.key) == vector["key"]
    assert str(fabric.ContentKey.of(req)) == vector["key"]
    # The key is the SHA-256 of the identity bytes, with nothing else mixed in.
    import hashlib

    assert hashlib.sha256(bytes.fromhex(vector["identity_hex"])).hexdigest() == req.key.hex


@pytest.mark.parametrize("vector", DATA["errors"], ids=_ids(DATA["errors"]))
def test_error_vector(vector):
    exc_type = {"TypeError": TypeError, "ValueError": ValueError}[vector["exception"]]
    with pytest.raises(exc_type) as info:
        if vector["python"].startswith("EvalRequest"):
            vectors.evaluate(vector["python"])
        else:
            fabric.canonical_bytes(vectors.evaluate(vector["python"]))
    assert type(info.value) is exc_type
    assert str(info.value) == vector["message"]


def test_golden_file_is_up_to_date():
    """The committed file is exactly what the generator writes today."""
    script = os.path.join(os.path.dirname(__file__), "golden", "make_content_keys.py")
    proc = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_known_keys_pinned():
    """A few keys spelled out here too, so a regenerated golden file cannot
    silently move the scheme."""
    assert fabric.canonical_bytes([1, "a", b"a", 1.0, None, True]).hex() == (
        "9601a161c40161cb3ff0000000000000c0c3")
    req = fabric.EvalRequest("op")
    assert req.identity_bytes().hex() == (
        "9cac6661627269632e6b65792f32a26f70009080" "90a46576616cc0c0c2c2" "a470757265")
    assert str(req.key) == next(r["key"] for r in DATA["requests"] if r["name"] == "minimal")
