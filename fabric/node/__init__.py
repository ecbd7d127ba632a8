"""The network node: ``fabric.Node``, ``fabric.connect`` (``aconnect``) and their protocol.

- ``protocol``: the messages over the frame codec (docs/spec/protocol.md);
- ``auth``: tokens, TLS subjects, grants;
- ``credit``: per-stream credit windows and stream epochs;
- ``scheduler``: the fair queues across principals;
- ``secrets``: ``SecretRef`` and where a node finds secret values;
- ``gossip``: holding-index deltas, anti-entropy, membership, learned links,
  what may be shared, the unauthenticated-link warning (``GossipConfig``);
- ``leases``: one computation per fleet (rendezvous lease holders);
- ``loops``: which event loop a node runs on (asyncio's, or uvloop: the
  ``fast`` extra);
- ``node_args``: ``Node``'s argument checks; ``tls_listen``: a TLS node's
  listener (its own handshakes, so that a refused one is seen);
- ``server``: ``Node``; ``client``: ``connect`` / ``aconnect`` / ``NodeClient``.

This package imports the rest of ``fabric``; nothing in ``fabric`` imports it
but the package's ``__init__``.
"""

from .client import NodeClient, aconnect, connect
from .credit import Credit, StaleStream, StreamTable
from .gossip import GossipConfig
from .protocol import (PROTOCOL_VERSION, Backpressure, LimitExceeded, ProtocolError,
                       Unauthenticated, VersionMismatch)
from .scheduler import FairQueue
from .secrets import SecretRef, SecretStore
from .server import Node, NodeLimits

__all__ = ["Node", "NodeLimits", "NodeClient", "aconnect", "connect", "SecretRef", "SecretStore",
           "PROTOCOL_VERSION", "Backpressure", "LimitExceeded", "ProtocolError",
           "Unauthenticated", "VersionMismatch", "Credit", "StreamTable", "StaleStream",
           "FairQueue", "GossipConfig"]
