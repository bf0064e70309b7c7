"""Running the application on uvicorn: a socket bound before the model is announced (so the address printed is
the one listening, also for --port 0), SIGTERM and Ctrl-C that drain the requests in flight and stop, and a
server in a thread for tests and the benchmark (`running`), stopped by whoever started it."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
import time
from collections.abc import Iterator

from ..errors import UserError
from .app import LOG

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or one line saying why not (port in use, unknown address)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); give another "
                        "--port (0: any free one) or stop what is using it") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app, timeout_s: float):
    """A uvicorn Server for `app` whose stop signals drain the requests in flight (at most a request's timeout
    and a little more), log one line, and end the process normally (uvicorn alone re-raises the signal after
    its shutdown, which ends the process with the signal's status or a KeyboardInterrupt)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                LOG.info("%s: finishing the requests in flight, then stopping (again to stop at once)",
                         signal.Signals(sig).name)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(timeout_s) + 5), timeout_keep_alive=5)
    return Server(config)


def serve_forever(app, sock: socket.socket, timeout_s: float) -> None:
    """Serve `app` on `sock` until SIGTERM or Ctrl-C, then drain and return."""
    uvicorn_server(app, timeout_s).run(sockets=[sock])


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` in a thread on a loopback port while the block runs; yields its URL; stops it (draining)
    and joins the thread on the way out."""
    if not is_loopback(host):
        raise UserError(f"running: {host} is not a loopback address; tests and benchmarks stay on this machine")
    sock = bind(host, port)
    server = uvicorn_server(app, timeout_s)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="transferkit-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s + 10)
        sock.close()
