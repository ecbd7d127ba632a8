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


# The names of every part of the extension (module.c's parts[]): the stub
# covers the whole module, so a name added to the C glue must be added to the
# stub too (bash dev.sh test also runs mypy.stubtest, which checks signatures).
PARTS = {
    "module": {"MAX_DEPTH", "CRC32C_HARDWARE"},
    "errors": {"FabricError", "DecodeError", "FrameError", "LedgerError", "LedgerLockedError",
               "LedgerFormatError", "LedgerVersionError", "LedgerCorruptionError",
               "CapabilityDenied", "NoHolderError", "ContentNotHeld", "RemoteError",
               "OpNotFound", "FabricUnavailable", "DeadlineExceeded"},
    "keys": {"KEY_SCHEME", "canonical_bytes", "encode_value", "Secret", "ContentKey",
             "EvalRequest"},
    "unpack": {"unpack", "decode_value", "DEFAULT_DECODE_LIMITS", "Ext", "Timestamp", "Redacted", "REDACTED"},
    "cassette": {"EvalCassette", "CassetteStream", "CassetteStreamWriter", "LEDGER_VERSION"},
    "reply": {"EvalReply"},
    "addressed": {"ContentAddressedFabricCore"},
    "frames": {"Frame", "FrameEncoder", "FrameDecoder", "StreamFrameLimits", "FRAME_KINDS",
               "FRAME_HEADER_LEN", "FRAME_VERSION", "FRAME_FLAG_DIAGNOSTIC"},
}

# Members a struct sequence (Ext, Timestamp) inherits from the stub's
# _typeshed.structseq base rather than declaring in its own body.
STRUCTSEQ_MEMBERS = {"n_fields", "n_sequence_fields", "n_unnamed_fields"}


def test_stub_names_match_the_runtime_module():
    stub = {n for n in _names(_stub_tree().body) if not n.startswith("_")}
    runtime = {n for n in dir(_core) if not n.startswith("_")}
    assert stub <= runtime, "in the stub only: %s" % sorted(stub - runtime)
    assert runtime <= stub, "missing from the stub: %s" % sorted(runtime - stub)
    every_part = set().union(*PARTS.values())
    assert every_part <= stub, "missing from the stub: %s" % sorted(every_part - stub)


def test_stub_covers_the_private_helpers_other_modules_use():
    stub = set(_names(_stub_tree().body))
    for name in ("_set_reply_class", "_frame_from_bytes", "_payload_violation",
                 "_CassetteIterator", "_LedgerView", "_reply_from_record", "_as_grants",
                 "_check_grants"):
        assert hasattr(_core, name), name
        assert name in stub, "%s: not in the stub" % name


def test_stub_members_exist_at_runtime():
    # __buffer__ stands for the C buffer slot, a Python-level method only from 3.12.
    dunder_ok = {"__buffer__"}
    for name, node in _names(_stub_tree().body).items():
        if not isinstance(node, ast.ClassDef) or not hasattr(_core, name):
            continue
        cls = getattr(_core, name)
        is_error = issubclass(cls, BaseException)
        for member, decl in _names(node.body).items():
            if member in dunder_ok:
                continue
            if is_error and isinstance(decl, ast.AnnAssign) and decl.value is None:
                # An exception's attribute (.offset, .pid, ...) is set on the
                # instance when raised, so the class does not have it.
                continue
            assert hasattr(cls, member), "%s.%s is in the stub only" % (name, member)
        public = {m for m in vars(cls) if not m.startswith("__")}
        if issubclass(cls, tuple):
            public -= STRUCTSEQ_MEMBERS
        missing = public - set(_names(node.body))
        assert not missing, "%s: not in the stub: %s" % (name, sorted(missing))


def test_exception_attributes_are_declared():
    """The attributes the C glue sets on raised exceptions are in the stub."""
    declared = {}
    for name, node in _names(_stub_tree().body).items():
        if isinstance(node, ast.ClassDef):
            declared[name] = set(_names(node.body))
    expected = {
        "DecodeError": {"offset"},
        "FrameError": {"offset", "frame_offset", "violation"},
        "LedgerError": {"path", "offset"},
        "LedgerLockedError": {"pid"},
        "LedgerFormatError": {"path", "offset"},
        "LedgerVersionError": {"version"},
        "NoHolderError": {"attempts"},
        "DeadlineExceeded": {"attempts"},
        "RemoteError": {"node", "remote_type"},
        "CapabilityDenied": {"capability"},
    }
    for name, attrs in expected.items():
        assert attrs <= declared[name], "%s: %s not declared" % (name, sorted(attrs - declared[name]))


def test_exception_bases_match_the_runtime():
    """Each exception's bases in the stub are its runtime bases."""
    for name, node in _names(_stub_tree().body).items():
        if not isinstance(node, ast.ClassDef) or not hasattr(_core, name):
            continue
        cls = getattr(_core, name)
        if not issubclass(cls, BaseException):
            continue
        stub_bases = [ast.unparse(b) for b in node.bases]
        runtime_bases = [b.__name__ for b in cls.__bases__]
        assert stub_bases == runtime_bases, name


def test_py_typed_ships():
    assert os.path.exists(os.path.join(os.path.dirname(fabric.__file__), "py.typed"))


def _public_classes():
    import fabric
    names = getattr(fabric, "__all__", [n for n in dir(fabric) if not n.startswith("_")])
    return [(n, getattr(fabric, n)) for n in names if isinstance(getattr(fabric, n), type)]


def test_extension_types_live_in_fabric():
    """Every public class the extension defines says it is fabric's, so
    pickles, reprs and docs name fabric.X and never the private module."""
    import fabric._core as core
    own = [(n, c) for n, c in _public_classes() if getattr(core, n, None) is c]
    assert len(own) >= 20  # the types and exceptions of the extension
    wrong = [n for n, c in own if c.__module__ != "fabric"]
    assert wrong == []


def test_every_public_class_lives_in_fabric():
    wrong = [n for n, c in _public_classes() if c.__module__ != "fabric"]
    assert wrong == []


def test_public_python_classes_pickle_by_their_fabric_name():
    import pickle

    import fabric

    for name, cls in _public_classes():
        assert getattr(fabric, name) is cls
    assert pickle.loads(pickle.dumps(fabric.RelayStatus.CONNECTED)) is \
        fabric.RelayStatus.CONNECTED
