"""A TLS node's listener: accepts connections and makes their TLS handshake
itself, so that a handshake the node refuses is seen.

asyncio's own server (``start_server(ssl=...)``, on asyncio's loop and on
uvloop alike) drops a failed handshake without a word to the application:
a client certificate refused (missing, another CA's, expired) would be
neither logged nor counted. Starting TLS on a connection already accepted
as plain TCP (``StreamWriter.start_tls``) races with the client's hello
(uvloop reads it into the stream before TLS begins, and the handshake
then never completes). So this listener accepts the sockets and hands each
to ``loop.connect_accepted_socket(..., ssl=)``: TLS from the first byte,
and the handshake's outcome, a failure too, returned to the caller.

Imports only the standard library.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any, Awaitable, Callable

Connected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TLSListener:
    """Serves ``connected(reader, writer)`` (as ``asyncio.start_server``
    does) for each connection whose TLS handshake, with ``context``,
    completed within ``handshake_timeout`` seconds; calls
    ``refused(peer, exc)`` for each whose did not (``exc`` the
    ``ssl.SSLError``, ``OSError`` or ``TimeoutError`` that ended it).
    ``admit(peer)``, when given, is asked as each connection is accepted,
    before its handshake begins: False closes it at once (no byte read or
    sent: a flood of connections that never finish their handshake costs
    no more than what ``admit`` lets in). ``handshaking`` counts the
    handshakes under way. ``sockets`` and ``close()`` as an
    ``asyncio.Server``'s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 context: ssl.SSLContext, handshake_timeout: float, connected: Connected,
                 refused: Callable[[Any, BaseException], None], limit: int = 1 << 16,
                 admit: Callable[[Any], bool] | None = None):
        self.sockets = sockets
        self._loop = loop
        self._context = context
        self._timeout = handshake_timeout
        self._connected = connected
        self._refused = refused
        self._admit = admit
        self._limit = limit
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Handshakes under way: admitted, neither made nor failed yet.
        self.handshaking = 0
        for s in sockets:
            self._spawn(self._accept_on(s))

    @classmethod
    async def listen(cls, host: str, port: int, *, backlog: int = 100,
                     **kw: Any) -> "TLSListener":
        """Bind ``host:port`` as ``asyncio.start_server`` would (every
        address ``host`` resolves to, port 0 picking one) and listen, with an
        accept queue of ``backlog`` connections (the kernel caps it at
        ``net.core.somaxconn``)."""
        loop = asyncio.get_running_loop()
        bound = await loop.create_server(asyncio.Protocol, host, port, start_serving=False)
        try:  # the bound sockets, ours (dup'ed: the server closes its own)
            socks = [socket.socket(fileno=os.dup(s.fileno())) for s in bound.sockets]
        finally:
            bound.close()
        try:
            for s in socks:
                s.setblocking(False)
                s.listen(backlog)
        except BaseException:
            for s in socks:
                s.close()
            raise
        return cls(loop, socks, **kw)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _handshake_ended(self, _t: asyncio.Task[Any]) -> None:
        # (a callback of the task: counted down even when it is cancelled
        # before it ran, by close())
        self.handshaking -= 1

    async def _accept_on(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, peer = await self._loop.sock_accept(sock)
            except (ConnectionAbortedError, InterruptedError):
                continue  # the peer went before it was accepted
            except OSError:  # too many open files and the like: later
                await asyncio.sleep(0.1)
                continue
            if self._admit is not None and not self._admit(peer):
                conn.close()
                continue
            self.handshaking += 1
            self._spawn(self._handshake(conn, peer)).add_done_callback(self._handshake_ended)

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
        return asyncio.StreamReaderProtocol(reader, self._connected, loop=self._loop)

    async def _handshake(self, conn: socket.socket, peer: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._protocol, conn, ssl=self._context, ssl_handshake_timeout=self._timeout)
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            conn.close()
            self._refused(peer, exc)
        except asyncio.CancelledError:  # close(): the handshake is abandoned
            conn.close()
            raise
        # (once made, the connection's protocol runs connected(): its own task)

    def close(self) -> None:
        """Stop accepting (and abandon the handshakes under way)."""
        for t in list(self._tasks):
            t.cancel()
        for s in self.sockets:
            s.close()

    async def wait_closed(self, bound: float = 2.0) -> None:
        """After ``close()``: wait until its tasks (accepting, handshakes
        abandoned) have ended, for ``bound`` seconds at most."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=bound)
