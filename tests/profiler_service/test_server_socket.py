"""The listening socket of ``serve``: connections it accepts send small answers without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

from profiler_service.api.server import bind_socket


def test_bound_socket_is_tcp_so_accepted_connections_get_nodelay() -> None:
    """asyncio turns TCP_NODELAY on only for sockets whose proto is IPPROTO_TCP; with proto 0 every answer smaller
    than a segment waited ~40 ms for the client's delayed ACK (headers and body are two writes)."""
    listener = bind_socket("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
