"""fabric/_core.pyi describes what the extension really has, no more, no less."""

import ast
import os

import fabric
from fabric import _core

STUB = os.path.join(os.path.dirname(fabric.__file__), "_core.pyi")


def _stub_tree():
    with open(STUB) as f:
        return ast.parse(f.read())


def _names(body):
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


# The names of the content-key part (keys.c) and the module basics; the other
# parts of the extension add their own names to the stub as they grow.
KEYS_PART = {"KEY_SCHEME", "MAX_DEPTH", "CRC32C_HARDWARE", "FabricError", "DecodeError",
             "FrameError", "canonical_bytes", "Secret", "ContentKey", "EvalRequest"}


def test_stub_names_exist_and_cover_the_keys_part():
    stub = {n for n in _names(_stub_tree().body) if not n.startswith("_")}
    stub.discard("Consistency")  # a type alias of the stub only
    runtime = {n for n in dir(_core) if not n.startswith("_")}
    assert stub <= runtime, "in the stub only: %s" % sorted(stub - runtime)
    assert KEYS_PART <= stub, "missing from the stub: %s" % sorted(KEYS_PART - stub)


def test_stub_members_exist_at_runtime():
    dunder_ok = {"__init__", "__hash__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
                 "__ge__", "__buffer__"}
    for name, node in _names(_stub_tree().body).items():
        if not isinstance(node, ast.ClassDef) or not hasattr(_core, name):
            continue
        cls = getattr(_core, name)
        for member in _names(node.body):
            if member in dunder_ok:
                continue
            assert hasattr(cls, member), "%s.%s is in the stub only" % (name, member)
        public = {m for m in vars(cls) if not m.startswith("__")}
        missing = public - set(_names(node.body))
        assert not missing, "%s: not in the stub: %s" % (name, sorted(missing))


def test_py_typed_ships():
    assert os.path.exists(os.path.join(os.path.dirname(fabric.__file__), "py.typed"))
