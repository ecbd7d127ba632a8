"""stream-fabric: content-addressed distributed evaluation for Python.

Every evaluation request gets a deterministic content key (SHA-256 over a
canonical msgpack encoding); replies are recorded in a durable cassette and
shared by a fleet of nodes. This package is imported as ``fabric``; it is not
the Fabric SSH tool (that one is distributed as ``fabric`` on PyPI and has
``fabric.Connection``; this one is ``stream-fabric`` and has
``fabric.EvalRequest``).
"""

from __future__ import annotations

import importlib
import os as _os

# Not typing.TYPE_CHECKING: importing typing would cost every `import fabric`
# more than the extension itself (type checkers read the name alike).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _refuse_the_ssh_packages_files() -> None:
    # Both distributions install a package named ``fabric``; installed into
    # one environment, their files end up in one folder and whichever
    # __init__.py was written last wins. The SSH tool's own modules beside
    # this file mean that happened: say so now, not as an AttributeError
    # later. One stat of a file, no package metadata (that costs ~50 ms).
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(here, "connection.py")):
        raise ImportError(
            f"the package folder {here} also holds the files of the Fabric SSH tool "
            f"(PyPI 'fabric', with fabric.Connection), which shares the import name "
            f"'fabric' with stream-fabric. Use one of them per environment: "
            f"'pip uninstall fabric stream-fabric' and then 'pip install stream-fabric', "
            f"or make a separate virtual environment for each.")


_refuse_the_ssh_packages_files()

from ._core import (  # noqa: E402
    DEFAULT_DECODE_LIMITS,
    KEY_SCHEME,
    REDACTED,
    MAX_DEPTH,
    ContentKey,
    DecodeError,
    EvalRequest,
    FabricError,
    FrameError,
    Ext,
    Secret,
    Timestamp,
    Frame,
    FrameDecoder,
    FrameEncoder,
    StreamFrameLimits,
    canonical_bytes,
    decode_value,
    encode_value,
    unpack,
    CapabilityDenied,
    FRAME_FLAG_DIAGNOSTIC,
    FRAME_HEADER_LEN,
    FRAME_VERSION,
)
from ._core import (  # the cassette
    CassetteStream,
    CassetteStreamWriter,
    EvalCassette,
    LedgerCorruptionError,
    LedgerError,
    LedgerFormatError,
    LedgerLockedError,
    LedgerVersionError,
)
from ._core import (  # fabrics' errors
    ContentNotHeld,
    DeadlineExceeded,
    FabricUnavailable,
    NoHolderError,
    OpNotFound,
    RemoteError,
)
# The value table (register_type, numpy and the standard types' adapters,
# the commitment key from the environment) is installed into the extension
# at import: the walker consults it for every type it does not know.
from .values import Opaque, register_dataclass, register_type, set_commit_key  # noqa: E402
from ._core import (  # placement
    PlacementCapability,
    PlacementResourceLimits,
    ServerPlacementRequest,
    redact_placement,
)
# The orchestration modules load on first use of one of their names (PEP 562),
# so `import fabric` costs the extension only: a short-lived process that
# opens a cassette and answers one get pays for what it uses, not for
# asyncio and the fabrics.
_LAZY = {
    "Op": "ops",
    "OpRegistry": "ops",
    "diagnostic": "ops",
    "op": "ops",
    "HoldingDelta": "holders",
    "HoldingIndex": "holders",
    "Claim": "claims",
    "ClaimRejected": "claims",
    "FleetKeys": "claims",
    "NodeKey": "claims",
    "TrustedKeys": "claims",
    "PeerGovernor": "governor",
    "PeerHealth": "governor",
    "PeerSkipped": "governor",
    "AsyncEvalStream": "replies",
    "EvalReply": "replies",
    "EvalStream": "replies",
    "ContentPeer": "fabrics",
    "ContentServeFabric": "fabrics",
    "EvalFabric": "fabrics",
    "LedgeredRelayFabric": "fabrics",
    "LocalFabric": "fabrics",
    "RelayFabric": "fabrics",
    "RelayStatus": "fabrics",
    "ContentAddressedFabric": "resolving",
    "Explanation": "resolving",
    "DIAGNOSTIC_KINDS": "frames",
    "FrameKind": "frames",
    "StreamDiagnostic": "frames",
    "cassette_to_stream_frames": "frames",
    "stream_frames_to_cassette": "frames",
    "stream_frames_to_events": "frames",
    "stream_frames_to_stream": "frames",
    "stream_to_frames": "frames",
    "StreamControl": "control",
    "Backpressure": "node",
    "Node": "node",
    "NodeLimits": "node",
    "SecretRef": "node",
    "VersionMismatch": "node",
    "aconnect": "node",
    "connect": "node",
    "PlacementError": "placement",
    "PlacementFabric": "placement",
    "PlacementRefused": "placement",
    "RealizeChunk": "placement",
    "RealizeDone": "placement",
    "RealizeStarted": "placement",
    "realize_events": "placement",
    "GroupHealth": "replicas",
    "ReplicaGroup": "replicas",
    "DaskFabric": "dask_fabric",
}

if TYPE_CHECKING:
    from .ops import Op, OpRegistry, diagnostic, op
    from .holders import HoldingDelta, HoldingIndex
    from .governor import PeerGovernor, PeerHealth, PeerSkipped
    from .claims import Claim, ClaimRejected, FleetKeys, NodeKey, TrustedKeys
    from .replies import AsyncEvalStream, EvalReply, EvalStream
    from .fabrics import (ContentPeer, ContentServeFabric, EvalFabric, LedgeredRelayFabric,
                          LocalFabric, RelayFabric, RelayStatus)
    from .resolving import ContentAddressedFabric, Explanation
    from .frames import (DIAGNOSTIC_KINDS, FrameKind, StreamDiagnostic,
                         cassette_to_stream_frames, stream_frames_to_cassette,
                         stream_frames_to_events, stream_frames_to_stream, stream_to_frames)
    from .control import StreamControl
    from .node import (Backpressure, Node, NodeLimits, SecretRef, VersionMismatch, aconnect,
                       connect)
    from .placement import (PlacementError, PlacementFabric, PlacementRefused, RealizeChunk,
                            RealizeDone, RealizeStarted, realize_events)
    from .replicas import GroupHealth, ReplicaGroup
    from .dask_fabric import DaskFabric


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fabric' has no attribute {name!r}")
    loaded = importlib.import_module("." + module, __name__)
    # Every public name of that module at once, so they read alike.
    for other, where in _LAZY.items():
        if where == module:
            value = getattr(loaded, other)
            _present_as_fabric(other, value)
            globals()[other] = value
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DECODE_LIMITS",
    "REDACTED",
    "Ext",
    "Timestamp",
    "unpack",
    "KEY_SCHEME",
    "MAX_DEPTH",
    "ContentKey",
    "DecodeError",
    "EvalRequest",
    "FabricError",
    "FrameError",
    "Secret",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "StreamFrameLimits",
    "canonical_bytes",
    "decode_value",
    "encode_value",
    "Opaque",
    "register_dataclass",
    "register_type",
    "set_commit_key",
    "CassetteStream",
    "CassetteStreamWriter",
    "EvalCassette",
    "LedgerCorruptionError",
    "LedgerError",
    "LedgerFormatError",
    "LedgerLockedError",
    "LedgerVersionError",
    # fabrics
    "AsyncEvalStream",
    "CapabilityDenied",
    "ContentAddressedFabric",
    "ContentNotHeld",
    "ContentPeer",
    "ContentServeFabric",
    "Claim",
    "ClaimRejected",
    "DeadlineExceeded",
    "EvalFabric",
    "EvalReply",
    "EvalStream",
    "Explanation",
    "FabricUnavailable",
    "FleetKeys",
    "HoldingDelta",
    "HoldingIndex",
    "LedgeredRelayFabric",
    "LocalFabric",
    "NoHolderError",
    "NodeKey",
    "Op",
    "OpNotFound",
    "OpRegistry",
    "PeerGovernor",
    "PeerHealth",
    "PeerSkipped",
    "RelayFabric",
    "RelayStatus",
    "RemoteError",
    "TrustedKeys",
    "diagnostic",
    "op",
    "FRAME_FLAG_DIAGNOSTIC",
    "FRAME_HEADER_LEN",
    "FRAME_VERSION",
    "DIAGNOSTIC_KINDS",
    "FrameKind",
    "StreamControl",
    "StreamDiagnostic",
    "cassette_to_stream_frames",
    "stream_frames_to_cassette",
    "stream_frames_to_events",
    "stream_frames_to_stream",
    "stream_to_frames",
    # the network node
    "Backpressure",
    "Node",
    "NodeLimits",
    "SecretRef",
    "VersionMismatch",
    "aconnect",
    "connect",
    # placement and home sites (issue 15)
    "PlacementCapability",
    "PlacementResourceLimits",
    "ServerPlacementRequest",
    "redact_placement",
    "PlacementError",
    "PlacementFabric",
    "PlacementRefused",
    "RealizeChunk",
    "RealizeDone",
    "RealizeStarted",
    "realize_events",
    "GroupHealth",
    "ReplicaGroup",
    "DaskFabric",
]


def _present_as_fabric(name: str, obj: object) -> None:
    # Every public class and function reads as fabric.X (repr, help, pickle
    # by reference, tracebacks), wherever it is defined: the submodules are
    # how the package is organised, not names for users to depend on.
    if getattr(obj, "__module__", "").startswith("fabric.") and \
            getattr(obj, "__qualname__", "") == name:
        obj.__module__ = "fabric"

del TYPE_CHECKING


for _name in ("Opaque", "register_dataclass", "register_type", "set_commit_key"):
    _present_as_fabric(_name, globals()[_name])
del _name
