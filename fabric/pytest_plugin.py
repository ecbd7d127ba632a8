"""pytest plugin: record a suite's evaluations once, replay them offline.

Loaded through the ``pytest11`` entry point when stream-fabric is installed.
It gives every test a cassette and a fabric over it, and a record mode with
pytest-recording's meanings::

    pytest --fabric-record-mode=once   # record a test's cassette if it has none
    pytest --fabric-record-mode=new    # replay what is held, record what is new
    pytest --fabric-record-mode=none   # replay only (the default): a miss fails
    pytest --fabric-record-mode=all    # record everything afresh

Fixtures:

* ``fabric_record_mode``: the mode in force for the test (a str).
* ``fabric_cassette``: the test's ``EvalCassette``, by default
  ``<test dir>/cassettes/<module>/<test name>.fabl`` (one per test);
  ``@pytest.mark.fabric(cassette="name.fabl")`` names another one (relative to
  ``<test dir>/cassettes/``), which several tests, or a whole module, may share.
  In ``none`` mode (and ``once`` with an existing cassette) it is opened
  read-only.
* ``fabric_fabric``: a ``ContentAddressedFabric`` over that cassette, with a
  ``LocalFabric`` home in the recording modes and no home when replaying
  only. A replay-only miss fails the test with the op's name, its arguments
  (secrets shown as redacted) and the command that records it.

``all`` writes each cassette afresh beside the old one
(``<cassette>.fabric-new``); when the session ends, the controlling process
(the only one, or xdist's controller once every worker is done) replaces
each old cassette with its new one (``os.replace``: atomic), so an
interrupted run leaves the committed cassettes as they were.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from ._core import KEY_SCHEME, EvalCassette, EvalRequest, FabricError, NoHolderError
from .cassette_cli import RequestDecodeError, identity_fields
from .fabrics import LocalFabric
from .resolving import ContentAddressedFabric

__all__ = ["MODES", "CassetteMiss"]

MODES = ("once", "new", "none", "all")
_NEW_SUFFIX = ".fabric-new"
_NEW_KEY = "fabric_new_cassettes"


class CassetteMiss(NoHolderError):
    """A replay-only run asked for a reply its cassette does not hold."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fabric", "stream-fabric cassettes")
    group.addoption(
        "--fabric-record-mode", action="store", default=None, choices=MODES,
        help="record mode for fabric cassettes: once, new, none (default: replay only) "
             "or all (record afresh)")
    parser.addini("fabric_record_mode", "default fabric record mode", default="none")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fabric(cassette=None, record_mode=None): the fabric cassette this "
                   "test uses (a path relative to the test's cassettes/ folder) and, "
                   "optionally, its record mode")
    config.stash[_new_paths] = set()


_new_paths = pytest.StashKey[set]()


def _configured_mode(config: pytest.Config) -> str:
    return str(config.getoption("--fabric-record-mode") or config.getini("fabric_record_mode"))


def _mode(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("fabric")
    mode = marker.kwargs.get("record_mode") if marker else None
    if mode is None:
        mode = _configured_mode(request.config)
    if mode not in MODES:
        raise pytest.UsageError(f"fabric record mode must be one of {', '.join(MODES)}, "
                                f"not {mode!r}")
    return str(mode)


def _cassette_path(request: pytest.FixtureRequest) -> Path:
    base = Path(request.node.path).parent / "cassettes"
    marker = request.node.get_closest_marker("fabric")
    name = marker.kwargs.get("cassette") if marker else None
    if name is not None:
        path = Path(name)
        return path if path.is_absolute() else base / path
    module = Path(request.node.path).stem
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    return base / module / f"{test}.fabl"


@pytest.fixture
def fabric_record_mode(request: pytest.FixtureRequest) -> str:
    """The fabric record mode in force for this test."""
    return _mode(request)


@pytest.fixture
def fabric_cassette(request: pytest.FixtureRequest,
                    fabric_record_mode: str) -> Iterator[EvalCassette]:
    """This test's cassette, opened for the record mode in force."""
    path = _cassette_path(request)
    mode = fabric_record_mode
    if mode == "once":
        mode = "none" if path.exists() else "new"
    if mode == "none":
        if not path.exists():
            pytest.fail(
                f"fabric cassette {path} does not exist and the record mode is 'none' "
                f"(replay only); record it with:\n"
                f"    pytest --fabric-record-mode=once {request.node.nodeid}",
                pytrace=False)
        cassette = EvalCassette(str(path), "r")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "all":
            # Leftovers of an interrupted run were removed when the
            # session started, so this one starts empty.
            path = path.with_name(path.name + _NEW_SUFFIX)
            request.config.stash[_new_paths].add(str(path))
        cassette = EvalCassette(str(path), durability="os")
    try:
        yield cassette
    finally:
        cassette.close()


class _ReplayFabric(ContentAddressedFabric):
    """A ``ContentAddressedFabric`` with no home whose misses say how to fix them.

    An ``uncacheable`` op's reply is never recorded, so replaying cannot
    answer it: it runs here, in a ``LocalFabric``, on every replay."""

    _nodeid = ""
    _local: LocalFabric | None = None

    def _uncacheable(self) -> LocalFabric:
        if self._local is None:
            self._local = LocalFabric()
        return self._local

    def _cassette_miss(self, request: EvalRequest, exc: NoHolderError) -> CassetteMiss:
        args = ", ".join([_short(repr(a)) for a in request.args]
                         + [f"{k}={_short(repr(v))}" for k, v in request.kwargs.items()])
        miss = CassetteMiss(
            f"{request.op}({args}) is not in the fabric cassette {self.cassette.path} "
            f"(record mode 'none': replay only).\n"
            f"  key: {request.key}\n"
            f"  record it with: pytest --fabric-record-mode=new {self._nodeid}"
            + "".join("\n" + line for line in _explain(self.cassette, request)))
        miss.attempts = getattr(exc, "attempts", [])
        return miss

    @contextlib.contextmanager
    def _misses(self, request: EvalRequest) -> Iterator[None]:
        """A ``NoHolderError`` inside becomes the ``CassetteMiss`` that says
        how to record ``request``."""
        try:
            yield
        except CassetteMiss:
            raise
        except NoHolderError as exc:
            raise self._cassette_miss(request, exc) from None

    def evaluate(self, request: EvalRequest, *args: Any, **kwargs: Any) -> Any:
        if request.sharing == "uncacheable":
            return self._uncacheable().evaluate(request, *args, **kwargs)
        with self._misses(request):
            return super().evaluate(request, *args, **kwargs)

    async def aevaluate(self, request: EvalRequest, *args: Any, **kwargs: Any) -> Any:
        if request.sharing == "uncacheable":
            return await self._uncacheable().aevaluate(request, *args, **kwargs)
        with self._misses(request):
            return await super().aevaluate(request, *args, **kwargs)

    def stream(self, request: EvalRequest, *args: Any, **kwargs: Any) -> Any:
        if request.sharing == "uncacheable":
            return self._uncacheable().stream(request, *args, **kwargs)
        with self._misses(request):
            return super().stream(request, *args, **kwargs)


def _lines(fields: dict[str, Any]) -> list[str]:
    """A decoded identity, one field (one argument) a line, for a diff."""
    out = [f"{name}: {_short(repr(fields[name]))}"
           for name in ("op", "version", "required_capabilities", "mode", "answer_limit",
                        "stream_buffer", "stream", "trace")]
    out += [f"args[{i}]: {_short(repr(a))}" for i, a in enumerate(fields["args"])]
    out += [f"kwargs[{k!r}]: {_short(repr(v))}" for k, v in sorted(fields["kwargs"].items())]
    return out


def _explain(cassette: Any, request: EvalRequest, limit: int = 40) -> list[str]:
    """Lines that explain a miss from the cassette's recorded requests: a
    diff against the closest recorded request of the same op, and a hint to
    re-key a cassette recorded under an older key scheme. Both sides are
    decoded identity bytes, so a secret shows as its marker, never its value."""
    try:
        recorded = list(cassette.requests())
        _, wanted = identity_fields(request.identity_bytes())
    except (FabricError, OSError, RequestDecodeError, AttributeError):
        return []
    older: set[str] = set()
    same_op: list[list[str]] = []
    for _key, ident in recorded:
        try:
            scheme, fields = identity_fields(ident)
        except RequestDecodeError:
            continue
        if scheme != KEY_SCHEME:
            older.add(scheme)
        if fields["op"] == request.op:
            same_op.append(_lines(fields))
    out = []
    if older:
        out.append(f"  the cassette holds records of an older key scheme "
                   f"({', '.join(sorted(older))}; now {KEY_SCHEME}): re-key it with "
                   f"`fabric cassette rekey {cassette.path}`")
    if not recorded:
        out.append("  (its records carry no request bytes to compare with)")
    elif not same_op:
        out.append(f"  no recorded request of {request.op!r} to compare with")
    else:
        mine = _lines(wanted)
        text = "\n".join(mine)
        # closest: the most similar text (so 4 is closer to 40 than 3 is)
        closest = max(same_op, key=lambda theirs: difflib.SequenceMatcher(
            None, "\n".join(theirs), text, autojunk=False).ratio())
        diff = list(difflib.unified_diff(
            closest, mine, f"closest recorded request ({len(same_op)} of this op)",
            "this request", n=1, lineterm=""))
        out += ["  " + line for line in diff[:limit]]
        if len(diff) > limit:
            out.append(f"  ... ({len(diff) - limit} more lines)")
    return out


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@pytest.fixture
def fabric_fabric(request: pytest.FixtureRequest,
                  fabric_cassette: EvalCassette) -> Iterator[ContentAddressedFabric]:
    """A ``ContentAddressedFabric`` over ``fabric_cassette``: a ``LocalFabric``
    home when recording, none when replaying only."""
    if fabric_cassette.mode == "r":
        fab = _ReplayFabric("pytest", fabric_cassette)
        fab._nodeid = request.node.nodeid
        yield fab
        if fab._local is not None:
            fab._local.close()
    else:
        home = LocalFabric()
        yield ContentAddressedFabric("pytest", fabric_cassette, home=home)
        close = getattr(home, "close", None)
        if close is not None:
            close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _swap(paths: set[str]) -> None:
    """Replaces each old cassette with the new one written beside it."""
    for new in sorted(paths):
        if os.path.exists(new):
            os.replace(new, new[: -len(_NEW_SUFFIX)])
        _unlink(new + ".lock")


def _leftovers(roots: list[Path]) -> Iterator[str]:
    """New cassettes an interrupted ``all`` run left under ``roots``."""
    skip = {"__pycache__", "node_modules", "site-packages"}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip]
            for f in filenames:
                if f.endswith(_NEW_SUFFIX) or f.endswith(_NEW_SUFFIX + ".lock"):
                    yield os.path.join(dirpath, f)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _is_xdist_worker(config) or _configured_mode(config) != "all":
        return
    roots = [Path(a.split("::")[0]) for a in config.args] or [config.rootpath]
    for path in _leftovers([r if r.is_dir() else r.parent for r in roots]):
        _unlink(path)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    paths = config.stash.get(_new_paths, set())
    if _is_xdist_worker(config):
        # The controller swaps once every worker is done.
        config.workeroutput[_NEW_KEY] = sorted(paths)  # type: ignore[attr-defined]
        return
    _swap(paths)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: collect the new cassettes a worker wrote (swapped at session end)."""
    paths = getattr(node, "workeroutput", {}).get(_NEW_KEY, [])
    node.config.stash.setdefault(_new_paths, set()).update(paths)
