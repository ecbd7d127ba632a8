"""StreamControl: the control plane that drives a remote stream.

Eight operations travel as ``CONTROL`` frames whose payload is a canonical
msgpack map ``{"op": <name>, <fields>...}`` (docs/spec/frames.md, "Control
frames"). Each operation needs a capability, and any use over the network
also needs ``stream.remote.network``. Capabilities are checked when a control
is encoded (:meth:`StreamControl.to_frame`) *and* when one is received
(:meth:`StreamControl.from_frame`): a peer cannot talk its way past the
receiver's grants. Unknown operations, unknown fields, missing fields and
fields of the wrong type are refused with :class:`fabric.FrameError` naming
the field and the offset.

:class:`StreamControl` is an extension type over the C core's control codec
(``csrc/control.c``): the rules below are read from it, and the checks a
hostile peer reaches run in C (and are fuzzed there, ``csrc/fuzz``).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Tuple

from . import _core
from ._core import StreamControl

__all__ = [
    "CONTROL_CAPABILITIES",
    "FAULT_KINDS",
    "REMOTE_CAPABILITY",
    "StreamControl",
]

#: Operation -> the capability it needs.
CONTROL_CAPABILITIES: Mapping[str, str] = MappingProxyType(dict(_core.CONTROL_CAPABILITIES))

#: Needed in addition for any remote use (every frame round trip).
REMOTE_CAPABILITY: str = _core.REMOTE_CAPABILITY

#: The faults a ``fault`` operation may inject.
FAULT_KINDS: Tuple[str, ...] = _core.FAULT_KINDS
