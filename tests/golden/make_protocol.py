"""Writes tests/golden/protocol.json, the node protocol's golden frames
(docs/spec/protocol.md): ``python tests/golden/make_protocol.py`` (with
``--check``: exit 1 when the file is out of date). Every frame is made by
the encoder the node or the client sends it with; tests/test_node_units.py
checks the file byte for byte against ``golden_frames()`` and that the
receiving side's parser accepts each gossip frame."""

import os
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout's own fabric (built in place) and the tests' helpers.
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]

import fabric  # noqa: E402
from fabric.frames import FrameKind  # noqa: E402
from fabric.node import gossip as G  # noqa: E402
from fabric.node import protocol as P  # noqa: E402
from golden import write_or_check  # noqa: E402

OUT = os.path.join(HERE, "protocol.json")

#: The epoch of the gossiping node "a" in the vectors (a node draws a random
#: 62-bit number when it starts: FleetGossip.epoch).
EPOCH = 0x0123456789ABCDEF

#: Why a vector is there, where it is not plain from its name.
NOTES = {
    "gossip_delta": "an older sender's delta, without epoch: no node sends it any more "
                    "(split_delta always adds epoch), still accepted (the receiver applies "
                    "the facts and keeps no bookmark for the origin)",
    "gossip_delta_epoch": "a delta as a node sends it today (split_delta): node a's one "
                          "fact, versions 0..1, with its epoch",
    "gossip_pull": "a pull from a node with no bookmark of the linked node's index "
                   "(FleetGossip.pull_body before any delta from it; also a client's pull "
                   "when no node set its gossip_pull): sent today, accepted",
    "gossip_pull_epoch": "a pull with the bookmark (epoch, version 1) of node a's index "
                         "(FleetGossip.pull_body once a delta from a was seen)",
    "gossip_members": "a members sample (FleetGossip._members_body): node a itself first "
                      "(it computes), then the member b it knows",
}


def gossip_for(node_id: str = "a") -> G.FleetGossip:
    """A node's gossip state, outside a node: the epoch fixed to ``EPOCH``.
    (FleetGossip reads nothing of its node when it is made but its output
    buffer cap; encoding a message reads only its own state.)"""
    g = G.FleetGossip(SimpleNamespace(node_id=node_id,
                                      limits=SimpleNamespace(output_buffer=64 << 20)))
    g.epoch = EPOCH
    return g


def golden_frames() -> dict:
    req = fabric.EvalRequest("double", (21,), version=1)
    enc = P.encoder()
    # node b's gossip, which saw node a's index up to version 1 (epoch EPOCH)
    b = gossip_for("b")
    b.seen["a"] = (EPOCH, 1)
    # node a's gossip: it listens on 127.0.0.1:7411, computes, knows member b
    a = gossip_for("a")
    a.members.me = G.Member("a", "fabric://127.0.0.1:7411", True)
    a.members.learn([G.Member("b", "fabric://127.0.0.1:7412", False)])
    (delta,) = G.split_delta("a", EPOCH, 0, [(req.key, "a")], 1 << 20)
    return {
        "client_hello": enc.encode_value(FrameKind.HELLO, P.hello(
            node="b", max_frame=1 << 20, window=4 << 20, caps=["gossip"], token=None)),
        # what fabric.connect sends: it asks for the value-encoded reply record
        "client_hello_values": enc.encode_value(FrameKind.HELLO, P.hello(
            node=None, max_frame=1 << 20, window=4 << 20, caps=["values"], token=None)),
        "server_hello": enc.encode_value(FrameKind.HELLO, P.hello(
            node="a", max_frame=1 << 20, window=4 << 20, caps=["gossip"],
            principal="alice", grants=["node.compute"])),
        "request_open": fabric.StreamControl.open(1, P.open_metadata(
            req, want="value", scope="compute", grants=[], timeout=None)).to_frame(
            ["stream.open", "stream.remote.network"]).encode(),
        "cancel": fabric.StreamControl.cancel(1).to_frame(
            ["stream.cancel", "stream.remote.network"]).encode(),
        "close": fabric.StreamControl.close(1).to_frame(
            ["stream.cancel", "stream.remote.network"]).encode(),
        "end_drained": enc.encode_value(FrameKind.STREAM_END, {
            "chunks": 2, "bytes": 2000, "truncated": True}, stream_id=1, seq=3),
        "credit": enc.encode_value(FrameKind.CREDIT, {"consumed": 65536}, stream_id=3),
        # the form of an older sender (no epoch): made by hand, no code sends it
        "gossip_delta": enc.encode_value(FrameKind.GOSSIP, {
            "origin": "a", "start": 0, "end": 1,
            "facts": [[req.key.digest, "a"]]}),
        "gossip_delta_epoch": enc.encode_value(FrameKind.GOSSIP, delta),
        "gossip_pull": enc.encode_value(FrameKind.GOSSIP, b.pull_body("c")),
        "gossip_pull_epoch": enc.encode_value(FrameKind.GOSSIP, b.pull_body("a")),
        "gossip_members": enc.encode_value(FrameKind.GOSSIP, a._members_body()),
        "error": enc.encode_value(FrameKind.ERROR, P.error_payload(
            fabric.ContentNotHeld("node 'a' does not hold it")), stream_id=1),
        "error_idle": enc.encode_value(FrameKind.ERROR, P.error_payload(
            P.IdleTimeout("idle for 300.0 s", 1234))),
    }


def build() -> dict:
    return {
        "spec": "docs/spec/protocol.md",
        "note": "generated by tests/golden/make_protocol.py",
        "notes": NOTES,
        "frames": {k: v.hex() for k, v in golden_frames().items()},
    }


def main(argv):
    return write_or_check(OUT, build(), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
