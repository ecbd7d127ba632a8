"""stream-fabric: content-addressed distributed evaluation for Python.

Every evaluation request gets a deterministic content key (SHA-256 over a
canonical msgpack encoding); replies are recorded in a durable cassette and
shared by a fleet of nodes. This package is imported as ``fabric``; it is not
the Fabric SSH tool (that one is distributed as ``fabric`` on PyPI and has
``fabric.Connection``; this one is ``stream-fabric`` and has
``fabric.EvalRequest``).
"""

import os as _os


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
from .ops import Op, OpRegistry, diagnostic, op
from .holders import HoldingDelta, HoldingIndex
from .replies import AsyncEvalStream, EvalReply, EvalStream
from .fabrics import (
    ContentPeer,
    ContentServeFabric,
    EvalFabric,
    LedgeredRelayFabric,
    LocalFabric,
    RelayFabric,
    RelayStatus,
)
from .resolving import ContentAddressedFabric, Explanation
from .frames import (
    DIAGNOSTIC_KINDS,
    FrameKind,
    StreamDiagnostic,
    cassette_to_stream_frames,
    stream_frames_to_cassette,
    stream_frames_to_events,
    stream_frames_to_stream,
    stream_to_frames,
)
from .control import StreamControl
from ._core import (  # placement (issue 15)
    PlacementCapability,
    PlacementResourceLimits,
    ServerPlacementRequest,
    redact_placement,
)
from .placement import (
    PlacementError,
    PlacementFabric,
    PlacementRefused,
    RealizeChunk,
    RealizeDone,
    RealizeStarted,
    realize_events,
)
from .replicas import GroupHealth, ReplicaGroup

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
    "DeadlineExceeded",
    "EvalFabric",
    "EvalReply",
    "EvalStream",
    "Explanation",
    "FabricUnavailable",
    "HoldingDelta",
    "HoldingIndex",
    "LedgeredRelayFabric",
    "LocalFabric",
    "NoHolderError",
    "Op",
    "OpNotFound",
    "OpRegistry",
    "RelayFabric",
    "RelayStatus",
    "RemoteError",
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
]


def _present_public_names_as_fabric() -> None:
    # Every public class and function reads as fabric.X (repr, help, pickle
    # by reference, tracebacks), wherever it is defined: the submodules are
    # how the package is organised, not names for users to depend on.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
            if getattr(obj, "__module__", "").startswith("fabric.") and \
                    getattr(obj, "__qualname__", "") == name:
                obj.__module__ = "fabric"


_present_public_names_as_fabric()
