"""``conftest.free_port()``: a port for a node bound to it later is chosen
below the kernel's ephemeral range, where no outgoing connection nor bind
of port 0 can take it first."""

import socket

import pytest

from conftest import _ephemeral_low, free_port


def test_free_port_is_below_the_ephemeral_range_and_free():
    low = _ephemeral_low()
    if low <= 11024:
        pytest.skip("no room below the ephemeral range on this machine")
    ports = {free_port() for _ in range(20)}
    assert all(low - 10000 <= p < low for p in ports), (low, sorted(ports))
    assert len(ports) > 1  # chosen at random: parallel test processes rarely collide
    for p in ports:
        with socket.socket() as s:  # free: a node may bind it
            s.bind(("127.0.0.1", p))
