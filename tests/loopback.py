"""Ports on the loopback interface for tests that start several real TensorFlow processes."""

import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free at the time of the call (all held open together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
