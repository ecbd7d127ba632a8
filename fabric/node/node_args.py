"""The checks of ``fabric.Node``'s arguments, made where they are given.

A wrong argument is refused by ``Node(...)`` with a ``TypeError`` or
``ValueError`` naming it, before the node makes anything (a temporary
ledger, a thread, a socket), not later by whatever first uses it.
Imports only the standard library and ``fabric.node.protocol`` /
``fabric.node.gossip`` (their rules for node URLs and ids).
"""

from __future__ import annotations

import ssl
from typing import Any

from . import protocol as P
# The longest node id a gossip members message carries: a node with a longer
# id could not be a member of its fleet.
from .gossip import MAX_NODE_ID


def check_node_id(node_id: Any) -> None:
    """``node_id`` is None or a str of 1..MAX_NODE_ID characters."""
    if node_id is None:
        return
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be a str, not {type(node_id).__name__}")
    if not 0 < len(node_id) <= MAX_NODE_ID:
        raise ValueError(f"node_id must have 1 to {MAX_NODE_ID} characters, not "
                         f"{len(node_id)}")


def check_peers(peers: Any) -> list[str]:
    """``peers`` as a list of node URLs (``fabric://HOST:PORT``,
    ``fabrics://HOST:PORT``)."""
    if isinstance(peers, (str, bytes)) or not hasattr(peers, "__iter__"):
        raise TypeError(f"peers must be an iterable of node URLs (fabric://HOST:PORT), "
                        f"not {type(peers).__name__}")
    out = list(peers)
    for i, url in enumerate(out):
        if not isinstance(url, str):
            raise TypeError(f"peers[{i}]: a node URL is a str, not {type(url).__name__}")
        try:
            P.parse_node_url(url)
        except P.NodeURLError as exc:
            raise P.NodeURLError(f"peers[{i}]: {exc}") from None
    return out


def check_tls(tls: Any) -> None:
    """``tls`` is None or a server ``ssl.SSLContext``."""
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise TypeError(f"tls must be an ssl.SSLContext (fabric.node.auth.server_tls(cert, "
                        f"key, ca) makes one), not {type(tls).__name__}")


def check_home(home: Any) -> None:
    """``home`` is None or a fabric (an object with ``evaluate``)."""
    if home is None or callable(getattr(home, "evaluate", None)):
        return
    hint = (" (a 'MODULE:OBJECT' is what fabric serve --home takes; Node takes the "
            "object)" if isinstance(home, str) else "")
    raise TypeError(f"home must be a fabric (an object with evaluate(), e.g. "
                    f"fabric.LocalFabric()), not {type(home).__name__}{hint}")


def check_flag(name: str, value: Any) -> None:
    """``value`` is a bool (a str such as ``"no"`` would be true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
