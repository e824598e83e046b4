"""The server of `gptlab serve`: `make_server` loads the run's model, starts its batcher and binds a socket here (so
port=0 is known before uvicorn starts); `GptlabServer` runs the app (app.py) on it with uvicorn; `serve` does both
and serves until interrupted."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from gptlab import GptlabError
from gptlab.posttrain.generate import Generator
from gptlab.posttrain.serve.app import State, create_app
from gptlab.posttrain.serve.batcher import Batcher
from gptlab.posttrain.settings import ServeSettings, resolve
from gptlab.train.checkpoint import latest_checkpoint

log = logging.getLogger("gptlab.posttrain.serve")


class GptlabServer:
    """The app, its bound socket and uvicorn. Like http.server's servers: `url`, `server_address`,
    `serve_forever()` (blocks; run it in a thread to serve in the background), `shutdown()` (from another
    thread: stop serving and wait), `server_close()` (release the socket and stop the batcher)."""

    def __init__(self, sock: socket.socket, state: State):
        self.socket, self.state = sock, state
        self.server_address = sock.getsockname()
        self.app = create_app(state)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_keep_alive=state.read_timeout,
                timeout_graceful_shutdown=5,
            )
        )
        self._serving = threading.Event()
        self._stopped = threading.Event()
        state.batcher.start()

    generator = property(lambda self: self.state.generator)
    model_name = property(lambda self: self.state.model_name)
    batcher = property(lambda self: self.state.batcher)
    lock = property(lambda self: self.state.batcher.lock)  # held while a batch decodes: hold it to pause

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown() (poll_interval: accepted for http.server compatibility, unused)."""
        self._serving.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        if self._serving.is_set():
            self._uvicorn.should_exit = True
            self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self.state.batcher.stop()


def make_server(
    run_dir: str | Path,
    settings: ServeSettings | None = None,
    api_key: str | None = None,
    *,
    overrides: list[str] | None = None,
    **values,
) -> GptlabServer:
    """Load the run's model, start its batcher and bind (not start) the server; `server.url`,
    `server.serve_forever()`, `server.shutdown()`, `server.server_close()`. The settings (ServeSettings: host,
    port, max_tokens_limit, ...) are `settings`, else its defaults, with `values` (e.g. port=0: a free port) and
    `--set NAME=VALUE` `overrides` on top, all checked against their declarations."""
    base = dataclasses.asdict(settings) if settings is not None else {}
    st = resolve(ServeSettings, base | values, overrides, "serve")
    host, port = st.host, st.port
    if api_key is not None and not api_key.strip():
        raise GptlabError("serve: api_key: empty key; unset it to serve without authentication")
    generator = Generator.from_run(run_dir, st.device)
    ck = latest_checkpoint(Path(run_dir))
    created = int(ck.stat().st_mtime) if ck else int(time.time())
    name = st.model_name or Path(run_dir).resolve().name
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise GptlabError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None
    state = State(
        generator,
        Batcher(generator, st.max_batch, st.batch_wait_ms),
        api_key,
        st.max_tokens_limit,
        name,
        st.max_body_bytes,
        created,
        float(st.read_timeout),
    )
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    return GptlabServer(sock, state)


def serve(
    run_dir: str | Path,
    settings: ServeSettings | None = None,
    api_key: str | None = None,
    *,
    overrides: list[str] | None = None,
    **values,
) -> None:
    """make_server(...) and serve until interrupted."""
    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    srv = make_server(run_dir, settings, api_key, overrides=overrides, **values)
    log.info(
        "serving %s (%s, context %d, batches of up to %d) at %s/v1%s",
        srv.model_name,
        srv.generator.device,
        srv.generator.context_length,
        srv.state.batcher.max_batch,
        srv.url,
        " (API key required)" if api_key else "",
    )
    try:
        srv.serve_forever()  # uvicorn handles Ctrl-C (SIGINT/SIGTERM) in the main thread: a graceful stop
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
