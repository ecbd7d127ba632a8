"""The type registry of keys and values: ``register_type``, ``Opaque``.

Owns the table the extension consults for every object that is not one of
the builtin kinds (docs/spec/values.md, docs/spec/content-key.md): the
standard library types fabric supports out of the box (Decimal, UUID, the
datetime family, pure and concrete paths), numpy arrays and scalars when
numpy is in use, and the user's types. It imports only the standard
library: numpy is never imported here to *encode* (an array can only exist
once its owner imported numpy; the hook below sees it then) and only on
demand to *decode* an array or a numpy scalar.

An entry is ``(kind, name, to_data, from_data)``. ``to_data(obj)`` returns
plain data (anything the encodings accept); ``from_data(data)`` rebuilds the
object. Data read from a file or a peer only ever selects an entry by name
from this table: a name this process has not registered comes back as an
inert :class:`Opaque`, so bytes never import a module or run code.
"""

from __future__ import annotations

import importlib
import os
import sys

from . import _core

# typing, dataclasses and the modules of the standard library types below
# are imported when they are needed, not by ``import fabric`` (issue 11: the
# import's cost is part of every short-lived process that opens a cassette).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

__all__ = ["Opaque", "register_type", "register_dataclass", "set_commit_key"]

# Kinds of entry (walk.c reads them).
_ADAPTER = 0
_NDARRAY = 1
_OPAQUE = 2

_by_type: dict[Any, Any] = {}
_by_name: dict[str, Any] = {}

# Names fabric gives the types it supports itself. A user's name may not
# take one of them, nor start with "fabric.".
_RESERVED_PREFIX = "fabric."


def walk(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(path, v)`` for ``value`` and each value nested in it, depth first:
    the items of lists, tuples, sets and frozensets (``path[i]``), the keys
    (``path key k``) and values (``path[k]``) of dicts. What stands more than
    300 levels down is not visited: the key encoder refuses anything that deep
    (FAB_MAX_DEPTH), so no request holds it. The one walk of the checks that
    look for ``fabric.Secret`` and ``SecretRef`` in a request's arguments."""
    if depth > 300:
        return
    yield path, value
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from walk(k, f"{path} key {k!r}", depth + 1)
            yield from walk(v, f"{path}[{k!r}]", depth + 1)


class Opaque:
    """A value of a registered type this process does not know.

    ``name`` is the type's registered name, ``data`` what its ``to_data``
    returned (as decoded). An Opaque is inert: it holds data, it never imports
    or runs anything. It encodes back to exactly what it was read from, so a
    relay passes values of types it does not know through unchanged.
    """

    __slots__ = ("_name", "_data")
    _name: str
    _data: Any

    def __init__(self, name: str, data: Any):
        if not isinstance(name, str):
            raise TypeError("Opaque name must be a str")
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_data", data)

    @property
    def name(self) -> str:
        """The registered name of the value's type."""
        return self._name

    @property
    def data(self) -> Any:
        """The value's data, as its type's ``to_data`` made it."""
        return self._data

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Opaque is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Opaque):
            return NotImplemented
        return self._name == other._name and _core.canonical_bytes(
            self._data) == _core.canonical_bytes(other._data)

    def __hash__(self) -> int:
        return hash((self._name, _core.canonical_bytes(self._data)))

    def __repr__(self) -> str:
        text = repr(self._data)
        if len(text) > 60:
            text = text[:57] + "..."
        return f"Opaque({self._name!r}, {text})"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError("a registered type name must be a non-empty str")
    if len(name) > 200 or not name.isprintable():
        raise ValueError("a registered type name must be printable and at most 200 characters")


def _register(cls: type, kind: int, name: str, to_data: Callable[[Any], Any],
              from_data: Callable[[Any], Any]) -> None:
    entry = (kind, name, to_data, from_data)
    _by_type[cls] = entry
    _by_name[name] = entry


def register_type(cls: type, name: str, to_data: Callable[[Any], Any],
                  from_data: Callable[[Any], Any]) -> None:
    """Makes instances of ``cls`` keyable and storable under a stable name.

    ``to_data(obj)`` returns plain data that keys and values accept (a tuple
    or dict of builtins, say); ``from_data(data)`` rebuilds the object from
    that data when a value is decoded. The key of an instance is the key of
    ``[name, to_data(obj)]`` under a type tag, so two processes that register
    the same name and data agree on keys; change the name when the data's
    meaning changes. Only ``cls`` itself is registered, not its subclasses.
    The name must be the same for ``cls`` in every process that shares keys
    or cassettes, may not start with ``"fabric."`` and may not be taken by
    another class. Registering a class again replaces its functions.
    """
    if not isinstance(cls, type):
        raise TypeError("register_type() needs a class")
    _check_name(name)
    if getattr(cls, "__module__", None) in _STDLIB_MODULES:
        _stdlib()  # its own entry first, as if registered at import
    if name.startswith(_RESERVED_PREFIX):
        raise ValueError(f"type names starting with {_RESERVED_PREFIX!r} are fabric's own")
    if not callable(to_data) or not callable(from_data):
        raise TypeError("to_data and from_data must be callable")
    old = _by_name.get(name)
    if old is not None and _by_type.get(cls) is not old:
        raise ValueError(f"the type name {name!r} is already registered for another class")
    previous = _by_type.get(cls)
    if isinstance(previous, tuple) and previous[1] != name:
        _by_name.pop(previous[1], None)
    _register(cls, _ADAPTER, name, to_data, from_data)


def register_dataclass(cls: type, name: str | None = None) -> type:
    """Registers a dataclass by its fields (``name`` defaults to
    ``module.QualifiedName``). Its data is a dict of the fields that
    ``__init__`` takes, in declaration order; decoding calls ``cls(**data)``.
    Returns ``cls``, so it can be used as a decorator.
    """
    import dataclasses

    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        raise TypeError("register_dataclass() needs a dataclass (the class, not an instance)")
    names = tuple(f.name for f in dataclasses.fields(cls) if f.init)

    def to_data(obj: Any) -> dict:
        return {n: getattr(obj, n) for n in names}

    def from_data(data: Any) -> Any:
        return cls(**data)

    register_type(cls, name or f"{cls.__module__}.{cls.__qualname__}", to_data, from_data)
    return cls


# ---------------------------------------------------------------------------
# The standard library
# ---------------------------------------------------------------------------
#
# Registered on first need, so that ``import fabric`` imports none of their
# modules: a type's entry when the extension first meets one of its
# instances (``_hook``: an instance exists, so its module is imported and
# the import here costs nothing), a name's decoder when a value of it is
# first read (the placeholders below import, register, then decode).

_STDLIB_MODULES = frozenset(("datetime", "decimal", "uuid", "pathlib"))
_STDLIB_NAMES = ("decimal.Decimal", "uuid.UUID", "datetime.datetime", "datetime.date",
                 "datetime.time", "datetime.timedelta", "pathlib.PurePosixPath",
                 "pathlib.PureWindowsPath", "pathlib.PosixPath", "pathlib.WindowsPath")
_stdlib_done = False


def _stdlib() -> None:
    """Registers the standard library types (once). A class the user
    registered meanwhile keeps the user's entry."""
    global _stdlib_done
    if _stdlib_done:
        return
    import datetime as _dt
    import decimal
    import pathlib
    import uuid

    micro = _dt.timedelta(microseconds=1)

    def offset(value: Any) -> Any:
        off = value.utcoffset()
        return None if off is None else off // micro

    def tz(off: Any) -> Any:
        return None if off is None else _dt.timezone(_dt.timedelta(microseconds=off))

    def datetime_data(v: _dt.datetime) -> tuple:
        return (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold,
                offset(v))

    def datetime_from(d: Any) -> _dt.datetime:
        y, mo, da, h, mi, s, us, fold, off = d
        return _dt.datetime(y, mo, da, h, mi, s, us, tzinfo=tz(off), fold=fold)

    def time_data(v: _dt.time) -> tuple:
        return (v.hour, v.minute, v.second, v.microsecond, v.fold, offset(v))

    def time_from(d: Any) -> _dt.time:
        h, mi, s, us, fold, off = d
        return _dt.time(h, mi, s, us, tzinfo=tz(off), fold=fold)

    def decimal_from(d: Any) -> decimal.Decimal:
        if not isinstance(d, str):
            raise TypeError("Decimal data must be a str")
        return decimal.Decimal(d)

    def uuid_from(d: Any) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(d))

    def path_from(cls: type) -> Callable[[Any], Any]:
        def from_data(d: Any) -> Any:
            return cls(_path_str(d))
        return from_data

    entries: list[tuple[type, str, Callable[[Any], Any], Callable[[Any], Any]]] = [
        (decimal.Decimal, "decimal.Decimal", str, decimal_from),
        (uuid.UUID, "uuid.UUID", lambda u: u.bytes, uuid_from),
        (_dt.datetime, "datetime.datetime", datetime_data, datetime_from),
        (_dt.date, "datetime.date", lambda v: (v.year, v.month, v.day),
         lambda d: _dt.date(*d)),
        (_dt.time, "datetime.time", time_data, time_from),
        (_dt.timedelta, "datetime.timedelta", lambda v: (v.days, v.seconds, v.microseconds),
         lambda d: _dt.timedelta(*d))]
    for pcls in (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath,
                 pathlib.WindowsPath):
        entries.append((pcls, f"pathlib.{pcls.__name__}", str, path_from(pcls)))
    for cls, name, to_data, from_data in entries:
        entry = (_ADAPTER, name, to_data, from_data)
        if _by_type.get(cls) is None:  # absent, or the hook's "no entry" (None)
            _by_type[cls] = entry
        if _by_name.get(name) is _placeholders.get(name):
            _by_name[name] = entry
    _stdlib_done = True


def _placeholder(name: str) -> tuple:
    """The entry a standard library name has until ``_stdlib`` runs."""
    def to_data(v: Any) -> Any:
        _stdlib()
        return _by_name[name][2](v)

    def from_data(d: Any) -> Any:
        _stdlib()
        entry = _by_name.get(name)
        if entry is None or entry[3] is from_data:
            raise TypeError(f"no decoder for the type name {name!r}")
        return entry[3](d)
    return (_ADAPTER, name, to_data, from_data)


_placeholders = {n: _placeholder(n) for n in _STDLIB_NAMES}
_by_name.update(_placeholders)
_register(Opaque, _OPAQUE, "fabric.Opaque", lambda o: (o.name, o.data), lambda d: d)
_by_name.pop("fabric.Opaque")  # never read back by this name


def _path_str(d: Any) -> str:
    if not isinstance(d, str):
        raise TypeError("path data must be a str")
    return d


# ---------------------------------------------------------------------------
# numpy (optional)
# ---------------------------------------------------------------------------

def _numpy() -> Any:
    np = sys.modules.get("numpy")
    if np is None:
        # Decoding an array needs numpy; data never names a module to import.
        np = importlib.import_module("numpy")
    return np


def _plain_dtype(np: Any, dtype: Any) -> None:
    if dtype.hasobject:
        raise TypeError("numpy arrays and scalars of object dtype cannot be keyed or stored")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"numpy structured dtype {dtype} is not supported "
                        "(register a type for it)")


def _array_data(a: Any) -> tuple:
    np = _numpy()
    _plain_dtype(np, a.dtype)
    return (a.dtype.str, np.ascontiguousarray(a).tobytes(), tuple(a.shape))


def _array_from(d: Any) -> Any:
    try:
        np = _numpy()
    except ImportError:
        return Opaque("numpy.ndarray", d)
    dtype_str, data, shape = d
    dtype = np.dtype(dtype_str)
    _plain_dtype(np, dtype)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar_data(x: Any) -> tuple:
    np = _numpy()
    _plain_dtype(np, x.dtype)
    return (x.dtype.str, x.tobytes())


def _scalar_from(d: Any) -> Any:
    try:
        np = _numpy()
    except ImportError:
        return Opaque("numpy.generic", d)
    dtype_str, data = d
    dtype = np.dtype(dtype_str)
    _plain_dtype(np, dtype)
    if len(data) != dtype.itemsize:
        raise ValueError("numpy scalar data does not match its dtype's size")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


_by_name["numpy.ndarray"] = (_NDARRAY, "numpy.ndarray", _array_data, _array_from)
_by_name["numpy.generic"] = (_ADAPTER, "numpy.generic", _scalar_data, _scalar_from)


def _hook(tp: type) -> Any:
    """Says what to do with a type the registry does not know (once per
    type; walk.c keeps the answer): an entry, None for "its builtin kind
    decides", or a refusal message."""
    if getattr(tp, "__module__", None) in _STDLIB_MODULES:
        _stdlib()
        entry = _by_type.get(tp)
        if entry is not None:
            return entry
    np = sys.modules.get("numpy")
    if np is not None:
        if tp is np.ndarray:
            return _by_name["numpy.ndarray"]
        if issubclass(tp, np.ndarray):
            return (f"cannot key or store a {tp.__name__} (a numpy.ndarray subclass); "
                    "pass a plain array or register_type the class")
        if issubclass(tp, np.generic):
            return _by_name["numpy.generic"]
    return None


_core._install_values(_by_type, _by_name, _hook, Opaque)


# ---------------------------------------------------------------------------
# The commitment key of Secret(commit=True)
# ---------------------------------------------------------------------------

def set_commit_key(key: bytes | str | None) -> None:
    """Sets the commitment key that ``Secret(value, commit=True)`` keys with:
    the key then carries HMAC-SHA256 of the value's canonical bytes under it.
    Every process that must agree on keys (a fleet) uses the same commitment
    key; changing it changes every key that holds a committed secret. At
    least 16 bytes (a str is taken as its UTF-8 bytes); ``None`` unsets it,
    after which keying a committed secret raises ``ValueError``.

    At import, fabric reads it from the environment: ``FABRIC_COMMIT_KEY``
    (the key itself) or ``FABRIC_COMMIT_KEY_FILE`` (a file holding it; one
    trailing newline is dropped).
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    if key is not None and not isinstance(key, bytes):
        raise TypeError("a commitment key is bytes, str or None")
    _core._set_commit_key(key)


def _commit_key_from_environment() -> None:
    key = os.environ.get("FABRIC_COMMIT_KEY")
    path = os.environ.get("FABRIC_COMMIT_KEY_FILE")
    if key:
        set_commit_key(key)
    elif path:
        with open(path, "rb") as f:
            data = f.read()
        set_commit_key(data[:-1] if data.endswith(b"\n") else data)


_commit_key_from_environment()
