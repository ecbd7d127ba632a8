"""``SecretRef``: a secret named in a request and resolved where the op runs.

A ``fabric.Secret``'s value never leaves the process that holds it, so a
request holding one is refused for remote compute. ``SecretRef(name)``
travels instead: its *name* (not a value) enters the content key, as the
array ``["fabric.SecretRef", name]`` (the key encoder has no way yet to key a
type of its own; that is the documented tagged form, docs/spec/protocol.md).
The computing node replaces each ``SecretRef`` with ``fabric.Secret(value)``
before calling the op, the value read from its environment
(``FABRIC_SECRET_<NAME>``, the name upper-cased with ``-`` and ``.`` as ``_``)
or its secrets file (JSON object name -> str). A principal needs the grant
``secret:<name>`` (or ``secret:*``) for a node to resolve a secret for it.

Names that spell one environment variable name one secret: ``db-password``,
``db.password`` and ``DB_PASSWORD`` are the same secret everywhere (its
variable, its file entry, its grant), so a grant of one spelling cannot
reach another secret's value; a secrets file with two spellings of one
name is refused.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

from .._core import CapabilityDenied, EvalRequest, Secret
from .auth import read_json_file
from .protocol import SECRET_REF_TAG

__all__ = ["SecretRef", "SecretStore"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def secret_ident(name: str) -> str:
    """The one spelling of a secret's name: upper-cased, ``-`` and ``.`` as
    ``_`` (its variable is ``FABRIC_SECRET_`` + this)."""
    return name.replace("-", "_").replace(".", "_").upper()


def granted(name: str, grants: Iterable[str]) -> bool:
    """Whether ``grants`` allow resolving the secret ``name``: ``*``,
    ``secret:*`` or ``secret:<a spelling of name>``."""
    if "*" in grants or "secret:*" in grants or f"secret:{name}" in grants:
        return True
    ident = secret_ident(name)
    return any(g.startswith("secret:") and secret_ident(g[7:]) == ident for g in grants)


class SecretRef(tuple):
    """A reference to a secret by name, resolved on the node that computes.

    ``SecretRef("db-password")`` keys as ``["fabric.SecretRef",
    "db-password"]``; the op receives ``fabric.Secret(value)``.
    """

    __slots__ = ()

    def __new__(cls, name: str) -> "SecretRef":
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"a SecretRef name is 1-128 of [A-Za-z0-9_.-], not {name!r}")
        return tuple.__new__(cls, (SECRET_REF_TAG, name))

    @property
    def name(self) -> str:
        """The secret's name."""
        return str(self[1])

    def __repr__(self) -> str:
        return f"fabric.SecretRef({self.name!r})"

    def __reduce__(self) -> Any:
        return (SecretRef, (self.name,))


class SecretStore:
    """Where a computing node finds secret values: its environment, then a
    secrets file (a JSON object of name -> str)."""

    def __init__(self, path: "str | os.PathLike[str] | Mapping[str, str] | None" = None,
                 environ: Mapping[str, str] | None = None):
        self._env = os.environ if environ is None else environ
        self._file: dict[str, str] = {}
        if path is None:
            return
        if isinstance(path, Mapping):
            data: Any = dict(path)
            where = "secrets (a dict)"
        elif isinstance(path, (str, os.PathLike)):
            where = os.fspath(path)
            data = read_json_file(where, "secrets")  # (OSError if it cannot be read)
        else:
            raise TypeError(f"secrets must be the path of a JSON secrets file or a dict of "
                            f"name -> str, not {type(path).__name__}")
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{where}: a secrets file is a JSON object of name -> str")
        spelled: dict[str, str] = {}
        for name, value in data.items():
            ident = secret_ident(name)
            if ident in spelled:
                raise ValueError(f"{where}: {spelled[ident]!r} and {name!r} name one secret "
                                 f"(FABRIC_SECRET_{ident}): keep one of them")
            spelled[ident] = name
            self._file[ident] = value

    def __getstate__(self) -> dict[str, Any]:
        # Pickled only to reach a worker process of this machine's fabrics
        # (PlacementFabric, ReplicaGroup), once at spawn: just what resolves,
        # the FABRIC_SECRET_* variables and the file's entries.
        env = {k: v for k, v in self._env.items() if k.startswith("FABRIC_SECRET_")}
        return {"_env": env, "_file": dict(self._file)}

    def __repr__(self) -> str:
        return f"<fabric.SecretStore: {len(self._file)} from a file, values not shown>"

    def value(self, name: str) -> str | None:
        """The secret's value (its variable first, then the file), or None."""
        ident = secret_ident(name)
        env = "FABRIC_SECRET_" + ident
        if env in self._env:
            return self._env[env]
        return self._file.get(ident)

    def resolve(self, request: EvalRequest, grants: Iterable[str]) -> EvalRequest | None:
        """The request with every SecretRef replaced by a Secret of its value,
        or None when it holds none. ``CapabilityDenied`` without the grant or
        when this node does not know the secret."""
        g = frozenset(grants)
        found = False

        def sub(v: Any, depth: int) -> Any:
            nonlocal found
            if isinstance(v, SecretRef):
                found = True
                name = v.name
                if not granted(name, g):
                    raise CapabilityDenied(f"resolving SecretRef({name!r}) needs the grant "
                                           f"'secret:{name}'")
                value = self.value(name)
                if value is None:
                    raise CapabilityDenied(f"this node has no secret named {name!r}")
                return Secret(value)
            if depth > 300:
                return v
            t = type(v)
            if t is list or t is tuple or t is set or t is frozenset:
                return t(sub(x, depth + 1) for x in v)
            if isinstance(v, (list, tuple)):  # (a subclass: as a list)
                return [sub(x, depth + 1) for x in v]
            if isinstance(v, dict):  # its keys too (a SecretRef is hashable, so is a Secret)
                return {sub(k, depth + 1): sub(x, depth + 1) for k, x in v.items()}
            return v

        args = tuple(sub(a, 0) for a in request.args)
        kwargs = {k: sub(v, 0) for k, v in request.kwargs.items()}
        if not found:
            return None
        return request.replace(args=args, kwargs=kwargs)
