"""Socket stand-ins for network failures, on loopback only."""

from __future__ import annotations

import socket


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full: new connections to it hang, as to a blackholed
    address behind a dropping firewall. Close the listener and the fillers when done."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    return listener, fillers
