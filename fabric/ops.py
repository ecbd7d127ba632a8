"""Registered operations: ``@fabric.op`` and the registry fabrics run from.

An op is a plain function given a name and a version. Its requests are
``EvalRequest`` objects whose key covers the name, the version, the arguments,
the declared capabilities and the op's sharing class, so changing the version
changes every key (the way to say "the function changed, recompute").

Sharing classes (``sharing=``): ``"pure"`` (the default) is a function of its
arguments, recorded and shared freely; ``"recorded"`` is recorded where it is
computed (what peers may do with it comes with the fleet work);
``"uncacheable"`` is never recorded by any fabric, so every call computes.

Volatile arguments (``ignore=``): keyword arguments such as ``verbose`` or
``progress`` that do not change the result. They stay out of the key and
travel in the request's ``volatile_kwargs``, which a ``LocalFabric`` passes to
the function with the others. A reply served from a cassette or a peer was
computed with whatever volatile values its first caller gave, and a request
sent to another node over the network carries none (the op runs there with
its defaults).

A generator function (``def f(...): yield ...``) is a *stream op*: its
requests carry ``stream=True`` and fabrics stream its items as they are
produced. ``async def`` functions and async generators are ops too; fabrics
await them on the caller's event loop.

While an op runs, ``fabric.diagnostic(kind, message, **fields)`` attaches a
diagnostic to its reply (or, in a stream op, to the stream at that point);
diagnostics are recorded and replayed with the reply.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import threading
from typing import Any, Callable, Generic, Iterable, Iterator, Literal, ParamSpec, TypeVar

from ._core import EvalRequest, OpNotFound

__all__ = ["Op", "OpRegistry", "REGISTRY", "op", "diagnostic"]

#: An op's sharing class (see the module docstring).
Sharing = Literal["pure", "recorded", "uncacheable"]

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

# The diagnostics collector of the op running in this context (a list), or
# None outside an op. A ContextVar keeps threads and asyncio tasks apart.
_collector: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "fabric_diagnostics", default=None)


def diagnostic(kind: str, message: str = "", **fields: Any) -> dict[str, Any]:
    """Attach a diagnostic to the reply of the op that is running.

    ``kind`` names the diagnostic (``"Diagnostic"``, ``"LimitExceeded"``,
    ...), ``message`` says what happened, and ``fields`` add keyable detail.
    Outside an op this raises ``RuntimeError``: a diagnostic must belong to a
    reply. Returns the diagnostic as recorded (a dict).
    """
    sink = _collector.get()
    if sink is None:
        raise RuntimeError("fabric.diagnostic() called outside a running op")
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"diagnostic kind must be a non-empty str, not {kind!r}")
    if not isinstance(message, str):
        raise TypeError(f"diagnostic message must be a str, not {type(message).__name__}")
    d = {"kind": kind, "message": message}
    for name, value in fields.items():
        if name in d:
            raise TypeError(f"diagnostic field {name!r} is reserved")
        d[name] = value
    sink.append(d)
    return d


class Op(Generic[P, R]):
    """A registered function: its name, version, capabilities and kind.

    Made by ``@fabric.op(name, version=...)``; it keeps the function's
    signature and return type (``Op[P, R]``), so a type checker checks the
    arguments of ``op(...)``, ``op.request(...)`` and ``fab.call(op, ...)``
    and knows what they return.

    Calling an ``Op`` directly runs the function in this process with no
    fabric (handy in a notebook); ``op.request(*args, **kwargs)`` builds the
    ``EvalRequest`` a fabric evaluates, and ``fab.call(op, *args, **kwargs)``
    does both in one line. ``is_stream`` tells a stream op (a generator or
    async generator function) and ``is_async`` an ``async def`` one.
    """

    def __init__(self, name: str, fn: Callable[P, R], *, version: int | str = 0,
                 capabilities: Iterable[str] = (), sharing: Sharing = "pure",
                 ignore: Iterable[str] = ()):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"op name must match [a-z][a-z0-9_.-]{{0,63}}, got {name!r}")
        if isinstance(capabilities, str):
            raise TypeError("capabilities must be an iterable of str, not a single string "
                            "(wrap it in a tuple)")
        self.name = name
        self.version = version
        self.capabilities = tuple(sorted(set(capabilities)))
        self.sharing = sharing
        self.ignore, self._ignore_from = _volatile_names(name, fn, ignore)
        self.fn = fn
        self.is_stream = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        functools.update_wrapper(self, fn, assigned=("__module__", "__name__", "__qualname__"),
                                 updated=())
        # Validate name, version and capabilities once, by building a request.
        EvalRequest(name, (), None, version=version, required_capabilities=self.capabilities,
                    stream=self.is_stream, sharing=sharing)
        self._made = True

    #: What makes an op's requests: fixed once the op is made (a fabric may
    #: keep the requests it built for repeated arguments).
    _FIXED = frozenset({"name", "version", "capabilities", "sharing", "ignore", "_ignore_from",
                        "fn", "is_stream", "is_async"})
    #: True once __init__ has set every field: from then on those of _FIXED
    #: cannot change. (Not ``name in self.__dict__``: reading an object's
    #: ``__dict__`` turns its attributes into a plain dict, and every later
    #: read of one, ``op.fn`` on each miss of a fabric, is then ~4x slower.)
    _made = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._made and (name in Op._FIXED or name == "_made"):
            raise AttributeError(f"an op's {name} is fixed when it is made (make a new op "
                                 f"with @fabric.op instead)")
        object.__setattr__(self, name, value)

    def request(self, *args: P.args, **kwargs: P.kwargs) -> EvalRequest:
        """The ``EvalRequest`` for calling this op with these arguments.

        Request options that are not arguments (``answer_limit``,
        ``deadline``, ``trace``, ...) are set with ``.replace(...)`` on the
        result. The op's ``ignore``d keyword arguments go into the request's
        ``volatile_kwargs``, out of its key; passing one of them by position
        is a ``TypeError`` (it would be keyed).
        """
        if not self.ignore:
            return EvalRequest(self.name, args, kwargs, version=self.version,
                               required_capabilities=self.capabilities, stream=self.is_stream,
                               sharing=self.sharing)
        if self._ignore_from is not None and len(args) > self._ignore_from[0]:
            raise TypeError(f"op {self.name!r}: pass {self._ignore_from[1]!r} by keyword: "
                            f"it is ignored by the key (ignore=) and a positional value "
                            f"would be keyed")
        volatile = {k: kwargs.pop(k) for k in self.ignore if k in kwargs}
        return EvalRequest(self.name, args, kwargs, version=self.version,
                           required_capabilities=self.capabilities, stream=self.is_stream,
                           sharing=self.sharing, volatile_kwargs=volatile)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, with no fabric, cassette or key."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        kind = "stream op" if self.is_stream else "op"
        caps = f", capabilities={self.capabilities!r}" if self.capabilities else ""
        sharing = f", sharing={self.sharing!r}" if self.sharing != "pure" else ""
        ignore = f", ignore={self.ignore!r}" if self.ignore else ""
        return f"<{kind} {self.name!r} version={self.version!r}{caps}{sharing}{ignore}>"

    def _repr_html_(self) -> str:
        import html
        return f"<code>{html.escape(repr(self))}</code>"

    def __reduce__(self) -> tuple[Any, ...]:
        # An op travels to worker processes and Dask workers by reference:
        # (module, qualified name, name, version), imported there. One
        # defined in __main__, a notebook or a function body cannot be
        # imported elsewhere: its function travels by value (cloudpickle).
        mod, qual = self.__module__, getattr(self, "__qualname__", self.name)
        if mod in ("__main__", "__mp_main__") or "<locals>" in qual or \
                _find_op(mod, qual) is not self:
            try:
                import cloudpickle  # type: ignore[import-untyped]  # Dask's dependency
            except ImportError:
                import pickle
                raise pickle.PicklingError(
                    f"op {self.name!r} is defined in {mod} and cannot be imported by "
                    f"another process: sending it by value needs cloudpickle "
                    f"(pip install 'stream-fabric[dask]')") from None
            return (_op_by_value, (self.name, cloudpickle.dumps(self.fn), self.version,
                                   self.capabilities, self.sharing, self.ignore))
        return (_op_by_reference, (mod, qual, self.name, self.version))


def _find_op(module: str, qualname: str) -> Any:
    """The object at module.qualname if that module is already imported."""
    import sys
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _op_by_reference(module: str, qualname: str, name: str, version: Any) -> Op[..., Any]:
    """Unpickles an op sent by reference: imports it, or ``OpNotFound``."""
    import importlib
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise OpNotFound(f"op {name!r} version {version!r} cannot be imported here: module "
                         f"{module!r} is not importable in this process ({exc})") from None
    found = _find_op(module, qualname)
    if not isinstance(found, Op) or found.name != name or found.version != version:
        raise OpNotFound(f"op {name!r} version {version!r} cannot be imported here: "
                         f"{module}.{qualname} is {_describe(found)}")
    return found


def _describe(obj: Any) -> str:
    if obj is None:
        return "missing"
    if isinstance(obj, Op):
        return f"op {obj.name!r} version {obj.version!r}"
    return f"a {type(obj).__name__}, not an op"


def _op_by_value(name: str, fn_bytes: bytes, version: Any, capabilities: tuple[str, ...],
                 sharing: Sharing = "pure", ignore: tuple[str, ...] = ()) -> Op[..., Any]:
    """Unpickles an op sent by value (its function pickled by cloudpickle)."""
    import pickle
    return Op(name, pickle.loads(fn_bytes), version=version, capabilities=capabilities,
              sharing=sharing, ignore=ignore)


def _volatile_names(name: str, fn: Callable[..., Any], ignore: Iterable[str]
                    ) -> tuple[tuple[str, ...], tuple[int, str] | None]:
    """The op's ignored keyword names (sorted, unique), checked against the
    function's signature, and (position, name) of the first one that can
    also be passed by position (None if none can)."""
    if isinstance(ignore, (str, bytes)):
        raise TypeError("ignore must be an iterable of parameter names, not a single string "
                        "(wrap it in a tuple)")
    names = tuple(sorted(set(ignore)))
    if not names:
        return (), None
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise TypeError(f"op {name!r}: ignore holds parameter names (str), found {n!r}")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return names, None
    by_name = {p.name: (i, p) for i, p in enumerate(params)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    first: tuple[int, str] | None = None
    for n in names:
        found = by_name.get(n)
        if found is None or found[1].kind in (found[1].VAR_POSITIONAL, found[1].VAR_KEYWORD):
            if not var_kw:
                raise TypeError(f"op {name!r}: ignore names {n!r}, which is not a keyword "
                                f"parameter of {getattr(fn, '__qualname__', fn)!r}")
            continue
        i, p = found
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"op {name!r}: ignore names {n!r}, a positional-only parameter "
                            f"(only keyword arguments can be kept out of the key)")
        if p.kind is p.POSITIONAL_OR_KEYWORD and (first is None or i < first[0]):
            first = (i, n)
    return names, first


class OpRegistry:
    """Ops by (name, version). Thread-safe; registering twice replaces.

    ``@fabric.op(..., registry=reg)`` adds to ``reg``; ``LocalFabric(reg)``
    runs only the ops of ``reg``. ``reg.find(request)`` is the op a request
    names, ``op in reg`` and ``iter(reg)`` what it holds.
    """

    def __init__(self, ops: Iterable[Op[..., Any]] = ()):
        self._lock = threading.Lock()
        self._ops: dict[tuple[str, Any], Op[..., Any]] = {}
        for o in ops:
            self.add(o)

    def add(self, o: Op[P, R]) -> Op[P, R]:
        """Register ``o`` (replacing any op with the same name and version)."""
        if not isinstance(o, Op):
            raise TypeError(f"OpRegistry holds Op objects (from @fabric.op), not "
                            f"{type(o).__name__}")
        with self._lock:
            self._ops[(o.name, o.version)] = o
        return o

    def find(self, request: EvalRequest) -> Op[..., Any]:
        """The op a request names, or ``OpNotFound`` saying what is registered."""
        o = self._ops.get((request.op, request.version))
        if o is not None:
            return o
        versions = sorted((repr(v) for (n, v) in list(self._ops) if n == request.op))
        if versions:
            raise OpNotFound(f"op {request.op!r} version {request.version!r} is not registered "
                             f"here (registered versions: {', '.join(versions)})")
        raise OpNotFound(f"op {request.op!r} is not registered here")

    def named(self, name: str) -> list[Op[..., Any]]:
        """The registered ops called ``name`` (one per version)."""
        return [o for (n, _v), o in list(self._ops.items()) if n == name]

    def __iter__(self) -> Iterator[Op[..., Any]]:
        return iter(list(self._ops.values()))

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, o: object) -> bool:
        return isinstance(o, Op) and self._ops.get((o.name, o.version)) is o

    def __repr__(self) -> str:
        names = ", ".join(f"{o.name}@{o.version}" for o in self)
        return f"OpRegistry({names})"


#: The registry ``@fabric.op`` adds to; ``LocalFabric()`` runs from it.
REGISTRY = OpRegistry()


def op(name: str, *, version: int | str = 0, capabilities: Iterable[str] = (),
       sharing: Sharing = "pure", ignore: Iterable[str] = (),
       registry: OpRegistry | None = None) -> Callable[[Callable[P, R]], Op[P, R]]:
    """Register a function as an op: ``@fabric.op("embed", version=1)``.

    ``name`` is the op's identity in every key (``[a-z][a-z0-9_.-]*``);
    ``version`` changes every key when the function's behaviour changes;
    ``capabilities`` are the grants a caller needs to run it; ``sharing``
    (``"pure"``, ``"recorded"`` or ``"uncacheable"``) is the op's sharing
    class, part of every key (an ``"uncacheable"`` reply is never recorded);
    ``ignore`` names keyword arguments kept out of the key (``verbose``,
    ``progress``): the function still receives them when it runs, and a
    recorded reply was computed with its first caller's values. A generator
    function becomes a stream op. The op goes into ``registry`` (the global
    ``fabric.ops.REGISTRY`` by default).
    """
    reg = REGISTRY if registry is None else registry

    def register(fn: Callable[P, R]) -> Op[P, R]:
        if isinstance(fn, Op):
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"@fabric.op decorates a function, not {type(fn).__name__}")
        return reg.add(Op(name, fn, version=version, capabilities=capabilities,
                          sharing=sharing, ignore=ignore))

    return register
