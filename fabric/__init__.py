"""stream-fabric: content-addressed distributed evaluation for Python.

Every evaluation request gets a deterministic content key (SHA-256 over a
canonical msgpack encoding); replies are recorded in a durable cassette and
shared by a fleet of nodes. This package is imported as ``fabric``; it is not
the Fabric SSH tool (that one is distributed as ``fabric`` on PyPI and has
``fabric.Connection``; this one is ``stream-fabric`` and has
``fabric.EvalRequest``).
"""

from ._core import (
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
from .values import Opaque, register_dataclass, register_type, set_commit_key
from .ops import Op, OpRegistry, diagnostic, op
from .holders import HoldingDelta, HoldingIndex
from .fabrics import (
    AsyncEvalStream,
    ContentPeer,
    ContentServeFabric,
    EvalFabric,
    EvalReply,
    EvalStream,
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
]
