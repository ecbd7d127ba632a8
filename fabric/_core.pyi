"""Type stubs of the C extension fabric._core.

One section per part of the glue (fabric/_ext/*.c), in module.c's order:
errors (glue.h's FAB_PY_EXCEPTIONS table), keys, unpack, cassette, reply, addressed,
frames. ``python -m mypy.stubtest fabric._core`` checks this file against
the built extension (bash dev.sh test runs it).
"""

import sys
from _typeshed import ReadableBuffer, StrOrBytesPath, structseq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar, final, overload

from typing_extensions import Self, TypeAlias, disjoint_base

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

# Type aliases of the stub only (private, so stubtest does not look for
# them at runtime).
_Consistency: TypeAlias = Literal["local-first", "local-only", "no-home"]
_Sharing: TypeAlias = Literal["pure", "recorded", "uncacheable"]
# A cassette key: a ContentKey or any 32-byte buffer (the digest).
_CassetteKey: TypeAlias = ContentKey | ReadableBuffer
# Decode limits for unpack(): None (the defaults), a dict with some of the
# keys of DEFAULT_DECODE_LIMITS, or any object with some of those names as
# attributes (Frame.decode_payload also takes a StreamFrameLimits). "Any
# object with optional attributes" has no static type, hence object.
_DecodeLimits: TypeAlias = object
_Durability: TypeAlias = Literal["os", "fsync", "group"]
_Recover: TypeAlias = Literal["strict", "salvage"]

KEY_SCHEME: str
MAX_DEPTH: int
CRC32C_HARDWARE: int

# ---------------------------------------------------------------------------
# errors (glue.h FAB_PY_EXCEPTIONS): each subclasses its fabric parent and the
# builtin a user would catch. Attributes are set on the instance when raised.
# ---------------------------------------------------------------------------

class FabricError(Exception):
    """Base class of every error raised by fabric."""

class DecodeError(FabricError, ValueError):
    """Bytes that are not valid msgpack, or that break a decode limit."""

    offset: int

class FrameError(FabricError, ValueError):
    """A malformed or refused frame; .offset is its stream offset."""

    # None for an error on the encoding side (no stream position).
    offset: int | None
    frame_offset: int | None
    violation: str

class LedgerError(FabricError, OSError):
    """A cassette ledger could not be read or written (.path, .errno)."""

    path: str
    offset: int | None

class LedgerLockedError(LedgerError, OSError):
    """Another process holds the ledger for writing; .pid names it."""

    pid: int

class LedgerFormatError(FabricError, ValueError):
    """The file is not a cassette ledger (.path, .offset)."""

    path: str
    offset: int | None

class LedgerVersionError(LedgerFormatError, ValueError):
    """The ledger's format version is newer than this code (.version)."""

    version: int

class LedgerCorruptionError(LedgerFormatError, ValueError):
    """A bad record followed by valid ones; .offset is the bad record's."""

class CapabilityDenied(FabricError, PermissionError):
    """The caller's grants lack a capability; .capability names it."""

    capability: str

class NoHolderError(FabricError, LookupError):
    """No peer held the reply and no home could compute it."""

    # (node, what it raised) for every peer asked.
    attempts: list[tuple[str, BaseException]]

class ContentNotHeld(FabricError, LookupError):
    """This node does not hold the reply for the requested content key."""

class RemoteError(FabricError, RuntimeError):
    """The op failed on another node or site (.node, .remote_type)."""

    node: str
    remote_type: str

class OpNotFound(FabricError, LookupError):
    """No op with the request's name and version is registered here."""

class FabricUnavailable(FabricError, ConnectionError):
    """A relay's link is not connected; the request was not sent."""

class DeadlineExceeded(FabricError, TimeoutError):
    """The request's deadline or a per-peer timeout passed."""

    # The peers asked before the deadline passed (set by the C resolution).
    attempts: list[tuple[str, BaseException]]

# ---------------------------------------------------------------------------
# keys.c: canonical encoding, Secret, ContentKey, EvalRequest
# ---------------------------------------------------------------------------

def canonical_bytes(value: object, /) -> bytes:
    """The canonical msgpack encoding of value (docs/spec/content-key.md)."""

def encode_value(value: object, /) -> bytes:
    """The value encoding of value (docs/spec/values.md)."""

def _set_commit_key(key: bytes | None, /) -> None: ...
def _install_values(
    by_type: dict[Any, Any], by_name: dict[str, Any], hook: Callable[[type], Any],
    opaque_type: type, /
) -> None: ...

@final
class Secret:
    """A sensitive argument: its value never enters keys, repr or exceptions."""

    def __new__(cls, value: object, *, commit: bool = False) -> Self: ...
    def reveal(self) -> Any: ...
    @property
    def commit(self) -> bool: ...
    def _repr_html_(self) -> str: ...

@final
class ContentKey:
    """The SHA-256 digest of a request's canonical identity."""

    def __new__(cls, digest: ReadableBuffer) -> Self: ...
    @classmethod
    def of(cls, request: EvalRequest, /) -> ContentKey: ...
    @classmethod
    def parse(cls, text: str, /) -> ContentKey: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def hex(self) -> str: ...
    # The buffer protocol (32 bytes); a Python-level dunder only from 3.12.
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __lt__(self, other: ContentKey, /) -> bool: ...
    def __le__(self, other: ContentKey, /) -> bool: ...
    def __gt__(self, other: ContentKey, /) -> bool: ...
    def __ge__(self, other: ContentKey, /) -> bool: ...
    def _repr_html_(self) -> str: ...

@final
class EvalRequest:
    """An immutable evaluation request with its content key."""
    @classmethod
    def _unpickle(cls, fields: dict[str, Any], /) -> Self: ...
    def _repr_html_(self) -> str: ...

    def __new__(
        cls,
        op: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        version: int | str = 0,
        required_capabilities: Iterable[str] = (),
        mode: str = "eval",
        answer_limit: int | None = None,
        stream_buffer: int | None = None,
        stream: bool = False,
        trace: bool = False,
        consistency: _Consistency = "local-first",
        deadline: float | None = None,
        sharing: _Sharing = "pure",
        volatile_kwargs: Mapping[str, Any] | None = None,
    ) -> Self: ...
    @property
    def op(self) -> str: ...
    @property
    def args(self) -> tuple[Any, ...]: ...
    @property
    def kwargs(self) -> MappingProxyType[str, Any]: ...
    @property
    def version(self) -> int | str: ...
    @property
    def required_capabilities(self) -> tuple[str, ...]: ...
    @property
    def mode(self) -> str: ...
    @property
    def answer_limit(self) -> int | None: ...
    @property
    def stream_buffer(self) -> int | None: ...
    @property
    def stream(self) -> bool: ...
    @property
    def trace(self) -> bool: ...
    @property
    def consistency(self) -> _Consistency: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def sharing(self) -> _Sharing: ...
    @property
    def volatile_kwargs(self) -> MappingProxyType[str, Any]: ...
    @property
    def key(self) -> ContentKey: ...
    def identity_bytes(self) -> bytes: ...
    # At runtime replace($self, /, **changes); these are the names it accepts.
    def replace(
        self,
        *,
        op: str = ...,
        args: tuple[Any, ...] | list[Any] = ...,
        kwargs: Mapping[str, Any] | None = ...,
        version: int | str = ...,
        required_capabilities: Iterable[str] = ...,
        mode: str = ...,
        answer_limit: int | None = ...,
        stream_buffer: int | None = ...,
        stream: bool = ...,
        trace: bool = ...,
        consistency: _Consistency = ...,
        deadline: float | None = ...,
        sharing: _Sharing = ...,
        volatile_kwargs: Mapping[str, Any] | None = ...,
    ) -> EvalRequest: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...

# The payload of a network open (request.c): protocol.open_payload's bytes,
# or None when the request holds a Secret or a subclass of a builtin
# container, or an argument is not of the plain type the client passes.
def _open_payload(
    request: EvalRequest, want: str, scope: str, grants: Iterable[str],
    timeout: float | None, via: Sequence[str], /
) -> bytes | None: ...

# ---------------------------------------------------------------------------
# unpack.c: the hardened msgpack decoder
# ---------------------------------------------------------------------------

DEFAULT_DECODE_LIMITS: dict[str, int]

def unpack(data: ReadableBuffer, limits: _DecodeLimits = None) -> Any:
    """Decode one msgpack value from untrusted bytes under limits."""

def decode_value(data: ReadableBuffer, limits: _DecodeLimits = None) -> Any:
    """Decode a value-encoded (or plain msgpack) payload from untrusted bytes."""

def _decode_canonical(data: ReadableBuffer, limits: _DecodeLimits = None) -> Any:
    """Decode the canonical encoding, its tags included, from untrusted bytes."""

@final
class Ext(structseq[Any], tuple[int, bytes]):
    """A msgpack extension value of a type fabric does not interpret."""

    __match_args__: Final = ("code", "data")
    @property
    def code(self) -> int: ...
    @property
    def data(self) -> bytes: ...

@final
class Timestamp(structseq[int], tuple[int, int]):
    """A msgpack timestamp (extension -1), exact to the nanosecond."""

    __match_args__: Final = ("seconds", "nanoseconds")
    @property
    def seconds(self) -> int: ...
    @property
    def nanoseconds(self) -> int: ...

@final
class Redacted:
    """The place of a Secret in decoded data: its value never travels."""

REDACTED: Redacted

# ---------------------------------------------------------------------------
# cassette.c: EvalCassette over the ledger
# ---------------------------------------------------------------------------

LEDGER_VERSION: int

@final
class EvalCassette:
    """A durable, crash-safe record of evaluation replies keyed by ContentKey."""

    def __new__(
        cls,
        path: StrOrBytesPath,
        mode: Literal["a", "r"] = "a",
        durability: _Durability = "group",
        *,
        recover: _Recover = "strict",
        progress: Callable[[int, int], object] | None = None,
        created_ns: int = 0,
        exclusive: bool = False,
        checkpoint: bool = True,
    ) -> Self: ...
    @classmethod
    def from_ledger(
        cls,
        path: StrOrBytesPath,
        *,
        recover: _Recover = "strict",
        progress: Callable[[int, int], object] | None = None,
        checkpoint: bool = True,
    ) -> EvalCassette: ...
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def mode(self) -> Literal["a", "r"]: ...
    @property
    def durability(self) -> _Durability | None: ...
    def record(
        self, key: _CassetteKey, reply: object, /, *, expire: float | None = None,
        request: EvalRequest | ReadableBuffer | None = None,
    ) -> bool: ...
    def delete(self, key: _CassetteKey, /) -> bool: ...
    def clear(self) -> int: ...
    # A streamed reply comes back as a CassetteStream, anything else decoded.
    @overload
    def get(self, key: _CassetteKey, /) -> Any: ...
    @overload
    def get(self, key: _CassetteKey, default: object, /) -> Any: ...
    @overload
    def get_raw(self, key: _CassetteKey, /) -> memoryview | None: ...
    @overload
    def get_raw(self, key: _CassetteKey, default: _T, /) -> memoryview | _T: ...
    def items(self) -> _CassetteIterator[tuple[ContentKey, Any]]: ...
    def record_stream(
        self, key: _CassetteKey, /, *, request: EvalRequest | ReadableBuffer | None = None
    ) -> CassetteStreamWriter: ...
    def requests(self, op: str | None = None) -> _CassetteIterator[tuple[ContentKey, bytes]]: ...
    def request_bytes(self, key: _CassetteKey, /) -> bytes | None: ...
    @overload
    def get_stream(self, key: _CassetteKey, /) -> CassetteStream | None: ...
    @overload
    def get_stream(self, key: _CassetteKey, default: _T, /) -> CassetteStream | _T: ...
    def stats(self) -> dict[str, Any]: ...
    def _repr_html_(self) -> str: ...
    def sync(self) -> None: ...
    def flush(self) -> None: ...
    def refresh(self) -> int: ...
    def checkpoint(self) -> None: ...
    def compact(
        self,
        dest: StrOrBytesPath | None = None,
        /,
        *,
        progress: Callable[[int, int], object] | None = None,
        max_bytes: int | None = None,
    ) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Literal[False]: ...
    def __iter__(self) -> _CassetteIterator[ContentKey]:
        """The held keys in ledger order: this handle's own records and the
        records before them, and other processes' records up to this handle's
        last miss or ``refresh()`` (call ``refresh()`` first for the file as it
        is now). A compaction or shrink after the iteration started ends it
        with ``LedgerError``; a new iteration starts on the file as it is."""
        ...
    def keys_packed(self) -> bytes: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int:
        """The held keys (expired replies counted until compacted), as
        ``iter()`` sees them: other processes' records count from this
        handle's last miss or ``refresh()``."""
        ...

@final
class _CassetteIterator(Generic[_T_co]):
    """Iterator over a cassette's keys or items, in ledger order."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> _T_co: ...

@final
class CassetteStream:
    """The items of a streamed reply, read lazily from the ledger."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...
    def next_raw(self) -> tuple[memoryview, int | None] | None: ...

@final
class CassetteStreamWriter:
    """Records a streamed reply item by item; see EvalCassette.record_stream."""

    @property
    def held(self) -> bool: ...
    @property
    def count(self) -> int: ...
    def append(self, item: object, /) -> None: ...
    def close(self) -> bool: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Literal[False]: ...

@final
class _LedgerView:
    """The bytes of one reply inside a cassette's mapped ledger (read-only)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...

# ---------------------------------------------------------------------------
# reply.c: EvalReply and reply records
# ---------------------------------------------------------------------------

# Both C bases below have their own instance layout (PEP 800): a class can
# derive from one of them, not from both or from another such base.
@disjoint_base
class EvalReply:
    """The answer to an evaluation (immutable); fabric.EvalReply subclasses it."""

    def __new__(
        cls,
        value: Any,
        diagnostics: Iterable[dict[str, Any]] | None = (),
        trace: Any = None,
        key: ContentKey | None = None,
        source: str = "computed",
    ) -> Self: ...
    @property
    def value(self) -> Any: ...
    @property
    def diagnostics(self) -> tuple[dict[str, Any], ...]: ...
    @property
    def trace(self) -> Any: ...
    @property
    def key(self) -> ContentKey | None: ...
    @property
    def source(self) -> str: ...
    def _with_source(self, source: str, /) -> Self: ...
    def __eq__(self, other: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

def _set_reply_class(cls: type[EvalReply], /) -> None: ...
def _reply_from_record(record: Any, key: ContentKey, source: str, /) -> EvalReply: ...

@disjoint_base
class _EventStream:
    """The C base of fabric.EvalStream (use that class)."""

    _events: Iterator[tuple[int, Any]]
    key: ContentKey | None
    source: str
    diagnostics: list[Any]
    items_seen: int
    done: bool
    def __init__(self, events: Iterable[tuple[int, Any]], key: ContentKey | None,
                 source: str = ...) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...

@final
class _Replay:
    """The (tag, payload) events of recorded frames."""

    def __new__(cls, frames: Iterable[Any], key: ContentKey) -> Self: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> tuple[int, Any]: ...
    def close(self) -> None: ...
def _reply(value: Any, diagnostics: Iterable[Any] | None, trace: Any, key: ContentKey | None,
           source: str, /) -> EvalReply: ...

# ---------------------------------------------------------------------------
# addressed.c: grants, and the hit path of ContentAddressedFabric
# ---------------------------------------------------------------------------

def _as_grants(grants: Iterable[str] | None, default: frozenset[str], /) -> frozenset[str]: ...
def _check_grants(request: EvalRequest, grants: frozenset[str], where: str,
                  extra: Iterable[str] = ..., /) -> None: ...

@final
class _Counters:
    """Named counters that only grow (every fabric's stats)."""

    def __new__(cls, *names: str) -> Self: ...
    def add(self, name: str, n: int = 1, /) -> None: ...
    def items(self) -> list[tuple[str, int]]: ...
    def keys(self) -> list[str]: ...
    def __getitem__(self, name: str, /) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...

@disjoint_base
class ContentAddressedFabricCore:
    """The C base of fabric.ContentAddressedFabric (use that class)."""

    def __init__(self, node: str, cassette: Any, lookup: Callable[[ContentKey], Any],
                 miss: Callable[[Any, EvalRequest, frozenset[str], float | None], EvalReply],
                 grants: Iterable[str] = ..., *, op_class: type | None = ...,
                 request_of: Callable[..., EvalRequest] | None = ...,
                 general_call: Callable[..., Any] | None = ...) -> None: ...
    @property
    def node(self) -> str: ...
    @property
    def cassette(self) -> Any: ...
    @property
    def grants(self) -> frozenset[str]: ...
    @grants.setter
    def grants(self, value: Iterable[str]) -> None: ...
    def evaluate(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply: ...
    def _lookup(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None) -> EvalReply | None: ...
    def _lookup_record(self, request: EvalRequest, limit: int, /, *,
                       grants: Iterable[str] | None = None,
                       values: bool = False) -> bytes | EvalReply | None: ...
    def _check(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None) -> frozenset[str]: ...
    def call(self, op: Any, /, *args: Any, **kwargs: Any) -> Any: ...
    def _hold(self, key: ContentKey, reply: EvalReply, /,
              request: EvalRequest | ReadableBuffer | None = None) -> None: ...
    @property
    def _stats(self) -> _Counters: ...

# ---------------------------------------------------------------------------
# frames.c: Frame, FrameEncoder, FrameDecoder, StreamFrameLimits
# ---------------------------------------------------------------------------

FRAME_KINDS: dict[str, int]
FRAME_HEADER_LEN: int
FRAME_VERSION: int
FRAME_FLAG_DIAGNOSTIC: int

@final
class StreamFrameLimits:
    """The limits that bound one stream (immutable, hashable)."""
    @classmethod
    def _unpickle(cls, fields: dict[str, Any], /) -> Self: ...

    def __new__(
        cls,
        *,
        max_frame_payload_bytes: int = 1048576,
        max_stream_frames: int = 1024,
        max_stream_bytes: int = 67108864,
        max_inflight_frames: int = 64,
        max_duration_ms: int = 60000,
        max_rate_hz: int = 120,
        max_depth: int = 256,
        max_items: int = 1048576,
    ) -> Self: ...
    @property
    def max_frame_payload_bytes(self) -> int: ...
    @property
    def max_stream_frames(self) -> int: ...
    @property
    def max_stream_bytes(self) -> int: ...
    @property
    def max_inflight_frames(self) -> int: ...
    @property
    def max_duration_ms(self) -> int: ...
    @property
    def max_rate_hz(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def max_items(self) -> int: ...
    # At runtime replace($self, /, **changes); these are the names it accepts.
    def replace(
        self,
        *,
        max_frame_payload_bytes: int = ...,
        max_stream_frames: int = ...,
        max_stream_bytes: int = ...,
        max_inflight_frames: int = ...,
        max_duration_ms: int = ...,
        max_rate_hz: int = ...,
        max_depth: int = ...,
        max_items: int = ...,
    ) -> StreamFrameLimits: ...
    def to_dict(self) -> dict[str, int]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Frame:
    """One frame: kind, flags, stream id, sequence number and a msgpack payload."""
    @classmethod
    def _unpickle(cls, data: ReadableBuffer, /) -> Self: ...

    def __new__(
        cls,
        kind: int,
        payload: ReadableBuffer = b"",
        *,
        stream_id: int = 0,
        seq: int = 0,
        flags: int = 0,
    ) -> Self: ...
    @property
    def kind(self) -> int: ...
    @property
    def kind_name(self) -> str: ...
    @property
    def flags(self) -> int: ...
    @property
    def stream_id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def payload(self) -> memoryview: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def payload_offset(self) -> int | None: ...
    @property
    def is_diagnostic(self) -> bool: ...
    @property
    def size(self) -> int: ...
    def encode(self) -> bytes: ...
    def decode_payload(self, limits: StreamFrameLimits | _DecodeLimits = None) -> Any: ...
    # The buffer protocol over the payload; a Python-level dunder only from 3.12.
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __eq__(self, other: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

#: Control operation -> the capability it needs (the C core's table).
CONTROL_CAPABILITIES: dict[str, str]
#: Needed in addition for any remote use of a control.
REMOTE_CAPABILITY: str
#: The faults a ``fault`` control may inject.
FAULT_KINDS: tuple[str, ...]

@final
class StreamControl:
    """One control operation on a stream, over the C core's control codec."""
    @classmethod
    def _unpickle(cls, state: tuple[str, int, dict[str, Any]], /) -> Self: ...
    def __new__(cls, op: str, stream_id: int, **fields: Any) -> Self: ...
    @classmethod
    def open(cls, stream_id: int, metadata: dict[Any, Any] | None = None) -> Self: ...
    @classmethod
    def next(cls, stream_id: int, limit: int = 1) -> Self: ...
    @classmethod
    def push(cls, stream_id: int, item: Any) -> Self: ...
    @classmethod
    def close(cls, stream_id: int) -> Self: ...
    @classmethod
    def cancel(cls, stream_id: int, reason: str | None = None) -> Self: ...
    @classmethod
    def stats(cls, stream_id: int) -> Self: ...
    @classmethod
    def metadata(cls, stream_id: int) -> Self: ...
    @classmethod
    def fault(cls, stream_id: int, kind: str, count: int = 1) -> Self: ...
    @classmethod
    def from_frame(
        cls, frame: Frame, grants: Iterable[str], *,
        limits: StreamFrameLimits | _DecodeLimits = None,
    ) -> Self: ...
    @property
    def op(self) -> str: ...
    @property
    def stream_id(self) -> int: ...
    @property
    def fields(self) -> dict[str, Any]: ...
    def required_capabilities(self, *, remote: bool = True) -> tuple[str, ...]: ...
    def check(self, grants: Iterable[str], *, remote: bool = True) -> None: ...
    def to_payload(self) -> bytes: ...
    def to_frame(self, grants: Iterable[str], *, seq: int = 0) -> Frame: ...
    def __getattr__(self, name: str, /) -> Any: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    @classmethod
    def read_open(
        cls, payload: bytes, *,
        limits: StreamFrameLimits | _DecodeLimits = None,
    ) -> tuple[Any, ...] | None: ...

@final
class FrameEncoder:
    """Encodes frames, refusing payloads above limits.max_frame_payload_bytes."""

    def __new__(cls, limits: StreamFrameLimits | None = None) -> Self: ...
    @property
    def limits(self) -> StreamFrameLimits: ...
    #: a single reply's record in the value encoding (encode_held_reply,
    #: FrameDecoder.serve_hits): for a peer that announced "values"
    values: bool
    def encode(
        self,
        kind: int,
        payload: ReadableBuffer = b"",
        *,
        stream_id: int = 0,
        seq: int = 0,
        flags: int = 0,
    ) -> bytes: ...
    def encode_control(self, stream_id: int, payload: bytes, /) -> bytes: ...
    def encode_value(
        self, kind: int, value: object, *, stream_id: int = 0, seq: int = 0, flags: int = 0
    ) -> bytes: ...
    def encode_item(
        self, kind: int, value: object, *, stream_id: int = 0, seq: int = 0, flags: int = 0
    ) -> bytes: ...
    def encode_reply(self, stream_id: int, start: bytes, data: bytes, end: bytes, /) -> bytes: ...
    def encode_many(
        self,
        kind: int,
        payloads: Iterable[bytes],
        *,
        stream_id: int = 0,
        first_seq: int = 0,
        flags: int = 0,
    ) -> bytes: ...
    def header(
        self,
        kind: int,
        parts: Sequence[ReadableBuffer],
        *,
        stream_id: int = 0,
        seq: int = 0,
        flags: int = 0,
        crc_of: tuple[ReadableBuffer, int] | None = None,
    ) -> bytes: ...
    def encode_held_reply(
        self, stream_id: int, start: bytes, reply: EvalReply | bytes, limit: int, /
    ) -> bytes | None: ...

@final
class FrameDecoder:
    """Incremental frame decoder: feed(bytes), then iterate to take the frames."""

    def __new__(cls, limits: StreamFrameLimits | None = None) -> Self: ...
    @property
    def offset(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def partial(self) -> bool: ...
    @property
    def limits(self) -> StreamFrameLimits: ...
    @property
    def _buffer_capacity(self) -> int: ...
    def feed(self, data: ReadableBuffer, /) -> int: ...
    def feed_whole(self, data: ReadableBuffer, /) -> int: ...
    def finish(self) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Frame: ...
    def take_reply(
        self, limits: Any = None
    ) -> tuple[int, Frame, bytes, bytes, Frame, bytes] | None: ...
    def feed_reply(
        self, data: ReadableBuffer, limits: Any = None, nbytes: int | None = None
    ) -> tuple[int, Frame, bytes, bytes, Frame, bytes] | None: ...
    def feed_open(
        self, data: ReadableBuffer, nbytes: int, index: dict[Any, Any], /
    ) -> tuple[Frame, Any] | None: ...
    def serve_hits(
        self, data: ReadableBuffer, nbytes: int, index: dict[Any, Any],
        routes: dict[Any, Any], encoder: FrameEncoder, start: bytes, limit: int,
        tasks: dict[Any, Any] | None, budget: int, room: int, /
    ) -> tuple[bytes, int,
               tuple[tuple[Frame, Any, Any] | None, BaseException | None] | None]: ...

def _frame_from_bytes(data: ReadableBuffer, /) -> Frame: ...

# None when data is one msgpack value within limits, else (which, offset,
# message) with which "max_depth", "limit" or "format".
def _payload_violation(
    data: ReadableBuffer, limits: StreamFrameLimits | _DecodeLimits, /
) -> tuple[str, int, str] | None: ...

# ---- placement (placement.c) ------------------------------------------------

PLACEMENT_REDACTED_TEXT: str
PLACEMENT_REDACTED_PAYLOAD: str
PLACEMENT_MAX_BINARY_BYTES: int

@final
class PlacementResourceLimits(tuple[int | None, ...]):
    """The limits a placed op runs under (immutable, keyable: a tuple)."""
    @classmethod
    def _unpickle(cls, fields: dict[str, Any], /) -> Self: ...
    def __new__(
        cls,
        *,
        max_cpu_time_ms: int = 5000,
        max_memory_bytes: int = 67108864,
        max_frame_payload_bytes: int = 1048576,
        max_stream_frames: int = 1024,
        max_duration_ms: int = 60000,
        max_rate_hz: int = 120,
        max_inflight_work: int = 64,
        max_rss_bytes: int | None = None,
    ) -> Self: ...
    @property
    def max_cpu_time_ms(self) -> int: ...
    @property
    def max_memory_bytes(self) -> int: ...
    @property
    def max_frame_payload_bytes(self) -> int: ...
    @property
    def max_stream_frames(self) -> int: ...
    @property
    def max_duration_ms(self) -> int: ...
    @property
    def max_rate_hz(self) -> int: ...
    @property
    def max_inflight_work(self) -> int: ...
    @property
    def max_rss_bytes(self) -> int | None: ...
    def replace(self, **changes: int | None) -> Self: ...
    def to_dict(self) -> dict[str, int | None]: ...
    def to_expr(self) -> dict[str, str]: ...

@final
class PlacementCapability:
    """The placement capability names (str constants usable as grants)."""
    RUN_NODE_ON_SERVER: ClassVar[str]
    RUN_NODE_ON_LAN_PEER: ClassVar[str]
    REMOTE_RENDER: ClassVar[str]
    HOST_DEVICE: ClassVar[str]
    @classmethod
    def names(cls) -> tuple[str, str, str, str]: ...

@final
class ServerPlacementRequest:
    """A fragment (an EvalRequest) to run on a server site under limits."""
    @classmethod
    def _unpickle(cls, fields: dict[str, Any], /) -> Self: ...
    def __new__(
        cls,
        fragment: EvalRequest,
        *,
        profile: str,
        report: Any = None,
        realtime_pinned: bool = False,
        resource_limits: PlacementResourceLimits | None = None,
    ) -> Self: ...
    @classmethod
    def buffered_preview(
        cls,
        fragment: EvalRequest,
        /,
        *,
        report: Any = None,
        realtime_pinned: bool = False,
        resource_limits: PlacementResourceLimits | None = None,
    ) -> Self: ...
    @classmethod
    def render_return(
        cls,
        fragment: EvalRequest,
        /,
        *,
        report: Any = None,
        realtime_pinned: bool = False,
        resource_limits: PlacementResourceLimits | None = None,
    ) -> Self: ...
    def with_realtime_pin(self, pinned: bool = True) -> Self: ...
    def with_resource_limits(self, limits: PlacementResourceLimits, /) -> Self: ...
    @property
    def fragment(self) -> EvalRequest: ...
    @property
    def report(self) -> Any: ...
    @property
    def resource_limits(self) -> PlacementResourceLimits: ...
    @property
    def realtime_pinned(self) -> bool: ...
    @property
    def profile(self) -> str: ...
    @property
    def declared_latency(self) -> str: ...
    @property
    def uses_host_device(self) -> bool: ...
    @property
    def required_capabilities(self) -> tuple[str, ...]: ...

def redact_placement(value: Any, /) -> Any: ...
def _mentions_host_device(value: Any, /) -> bool: ...

@final
class _Holdings:
    """The holding index's fact store (internal to fabric.holders)."""

    def __new__(cls) -> Self: ...
    def add(self, key: ContentKey, holder: str, /) -> bool: ...
    def add_facts(self, facts: Iterable[tuple[ContentKey, str]], /) -> int: ...
    def add_keys(self, keys: Iterable[ContentKey], holder: str, /) -> int: ...
    def add_packed(self, digests: ReadableBuffer, holder: str, /) -> int: ...
    def has(self, key: object, holder: object, /) -> bool: ...
    def holders_of(self, key: ContentKey, /) -> list[str]: ...
    def keys(self, limit: int = ..., /) -> list[ContentKey]: ...
    def facts(self, start: int = ..., /) -> tuple[tuple[ContentKey, str], ...]: ...
    def holder_names(self) -> list[str]: ...
    def merge(self, other: _Holdings, /) -> int: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: ReadableBuffer, /) -> None: ...
    def memory(self) -> int: ...
    @property
    def nkeys(self) -> int: ...
    def __len__(self) -> int: ...

# sign.c: Ed25519 (RFC 8032) over raw keys, for fabric.claims.
def ed25519_generate() -> tuple[bytes, bytes]:
    """A new key pair: (32-byte seed, 32-byte public key)."""
def ed25519_public(seed: ReadableBuffer, /) -> bytes:
    """The 32-byte public key of a 32-byte seed."""
def ed25519_sign(seed: ReadableBuffer, message: ReadableBuffer, /) -> bytes:
    """The 64-byte signature of message under seed."""
def ed25519_verify(public_key: ReadableBuffer, message: ReadableBuffer,
                   signature: ReadableBuffer, /) -> bool:
    """Whether signature is public_key's signature of message."""

@final
class Ed25519Signer:
    """An Ed25519 private key (its 32-byte seed) made once, for signing many messages."""
    def __new__(cls, seed: ReadableBuffer, /) -> Self: ...
    def sign(self, message: ReadableBuffer, /) -> bytes: ...
    @property
    def public_key(self) -> bytes: ...

def _open_crc(data: ReadableBuffer, /) -> int: ...
def _known_open(frame: Frame, index: dict[int, Any], /) -> Any: ...
