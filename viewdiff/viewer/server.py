"""The viewer's viser server on a host and port: the port asked for, or an error.

viser moves to the next free port when the one asked for is taken; a person who was told
``ssh -L 8080:localhost:8080`` would then look at another program, so a taken port is refused
here instead (checked before viser binds, and again after).
"""

from __future__ import annotations

import contextlib
import io
import socket

import viser

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080


class PortInUse(ValueError):
    """The port asked for is taken (or cannot be bound) on that host."""


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails now (``port`` 0, any free port, never does)."""
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As asyncio's server binds: a port held only by closed connections is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def start_server(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, label: str = "viewdiff"
) -> viser.ViserServer:
    """A running viser server on exactly ``host:port`` (``port`` 0: a free one), the scene's up
    +z as in the normalised scenes; a PortInUse error when the port is taken."""
    taken = f"port {port} on {host} is in use (another viewer?): choose another with --port"
    if port_in_use(host, port):
        raise PortInUse(taken)
    # viser prints its own address box; the command prints the URL and the tunnel line instead.
    with contextlib.redirect_stdout(io.StringIO()):
        server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
    if port and server.get_port() != port:  # taken between the check and the bind
        server.stop()
        raise PortInUse(taken)
    server.scene.set_up_direction("+z")
    return server


def server_url(server: viser.ViserServer) -> str:
    """The address to open: http://HOST:PORT (localhost for a server on every interface)."""
    host = server.get_host()
    host = "localhost" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.get_port()}"


def tunnel_hint(port: int) -> str:
    """How to reach a viewer on a remote node from a laptop's browser."""
    return (
        f"on a remote node, tunnel it first: ssh -L {port}:localhost:{port} user@node, "
        f"then open http://localhost:{port}"
    )
