"""Running `sbert serve`: bind_socket (listen first, so a taken port fails before the model loads), make_server
(uvicorn with a graceful stop on SIGINT/SIGTERM) and serve (load, listen, serve until a signal)."""

from __future__ import annotations

import os
import signal
import socket
import sys
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


def _half_close_protocol():
    """uvicorn's h11 protocol, except that a client which shuts down its sending side after a complete request
    (`shutdown(SHUT_WR)`, `nc -N`) still gets the answer: the connection closes after it, not at once."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HalfCloseProtocol(H11Protocol):
        def eof_received(self):
            cycle = self.cycle
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                cycle.keep_alive = False  # answer, then close
                return True  # keep the transport open for writing
            return None  # nothing asked, or the request is cut short: close, as before

    return HalfCloseProtocol


def make_server(app: FastAPI, graceful_timeout_s: float = 30.0, on_started: Callable[[], None] | None = None):
    """A uvicorn server for `app`; `server.run(sockets=[sock])` serves until SIGINT/SIGTERM.

    On a signal (or `server.handle_exit(signal.SIGTERM, None)` from another thread) it stops accepting
    connections, lets in-flight requests finish (at most graceful_timeout_s; a second Ctrl-C stops waiting),
    shuts the batcher down without waiting for a model call still running, and returns.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # uvicorn re-raises the signal once it has shut down, which ends the process with it (exit
            # 130 or 143); a graceful stop is a normal exit here, so only the flags are set.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
            self.should_exit = True

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            if self.force_exit and self.started:
                await self.lifespan.shutdown()  # uvicorn skips it when forced; the batcher must still stop (it is quick)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=_half_close_protocol(),
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
    """Load `model`, listen on host:port and serve until SIGINT/SIGTERM. model_options go to ModelService.

    Returns once stopped, unless a model call still runs after the graceful time (options.graceful_timeout_s):
    a thread cannot be interrupted and Python would wait for it at exit, so the process then says how many texts
    it abandons and ends at once with exit code 1.
    """
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
        abandoned = app.state.batcher.abandoned_texts
        if abandoned:
            sock.close()
            sys.stderr.write(f"stopped after the graceful {options.graceful_timeout_s:g} s with a model call of "
                             f"{abandoned} text{'s' if abandoned != 1 else ''} still running; abandoned it\n")
            sys.stderr.flush()
            os._exit(1)
    finally:
        sock.close()
