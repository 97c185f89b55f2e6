"""Running `sbert serve`: bind_socket (listen first, so a taken port fails before the model loads), make_server
(uvicorn with a graceful stop on SIGINT/SIGTERM) and serve (load, listen, serve until a signal)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Callable

from fastapi import FastAPI

from sbert_cli.errors import ConfigError
from sbert_cli.serve.app import create_app
from sbert_cli.serve.service import ModelService, ServeOptions


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or ConfigError naming the problem (port in use, bad host)."""
    from sbert_cli.limits import check_range

    check_range("port", port, 0, 65535, "TCP ports are 16-bit; 0 picks a free one")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"`host` {host}: cannot listen there ({e})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen ({e.strerror}); choose another `port` or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: FastAPI, graceful_timeout_s: float = 30.0, on_started: Callable[[], None] | None = None):
    """A uvicorn server for `app`; `server.run(sockets=[sock])` serves until SIGINT/SIGTERM.

    On a signal (or `server.handle_exit(signal.SIGTERM, None)` from another thread) it stops accepting
    connections, lets in-flight requests finish (at most graceful_timeout_s), shuts the batcher down,
    and returns normally: the process exits 0.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises the signal once it has shut down, which ends the process with it (exit
            # 130 or 143); a graceful stop is a normal exit here, so only the flags are set.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
            self.should_exit = True

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s, server_header=False)
    return Server(config)


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServeOptions | None = None,
    on_started: Callable[[ModelService, str], None] | None = None,
    **model_options,
) -> None:
    """Load `model`, listen on host:port and serve until SIGINT/SIGTERM. model_options go to ModelService."""
    options = options or ServeOptions()
    options.validate()
    sock = bind_socket(host, port)  # before loading: a taken port fails in a second, not after the model loads
    try:
        service = ModelService(model, batch_size=options.max_batch_size, **model_options)
        app = create_app(service, options)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        server = make_server(app, options.graceful_timeout_s,
                             on_started=(lambda: on_started(service, url)) if on_started else None)
        server.run(sockets=[sock])
        if not server.started:
            raise ConfigError(f"the server on {url} did not start; see the messages above")
    finally:
        sock.close()
