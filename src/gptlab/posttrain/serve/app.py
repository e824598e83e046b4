"""The HTTP plumbing of `gptlab serve`: routing, the API key, reading bodies, answering whole or streamed.

Why the standard library (http.server.ThreadingHTTPServer) and not FastAPI + uvicorn: the server holds one
small model behind one lock, so generation is serialised anyway and an async framework buys nothing.
ThreadingHTTPServer answers /v1/models and /health while a generation runs.

Sampling: temperature (0 = greedy), top_k (an extension; 0/null = off), seed (reproducible sampling), stop
(a string or up to 4). top_p is accepted but not implemented: a value other than 1 is ignored and the response
carries a `warnings` list (and an X-Gptlab-Warning header). `model` may name anything: there is one model and
responses report its name. Defaults: max_tokens 16 for /v1/completions (as OpenAI's), the server's
max_tokens_limit for chat. A prompt longer than the model's context is refused (400); the generation itself may
run past the context with a sliding window, as `gptlab generate` does. Usage counts GPT-2 tokens.

Security: with api_key set, /v1/* need `Authorization: Bearer KEY` (compared in constant time); the key is
never logged or echoed. Bodies are capped (413 above max_body_bytes).

Misbehaving clients: every socket read or write waits at most read_timeout seconds, so a client that sends headers
promising a body and then stalls gets a 408 and is disconnected (an idle keep-alive connection is closed the same
way) instead of holding a handler thread forever. A client that disconnects mid-body or mid-stream costs one log
line, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from gptlab import GptlabError
from gptlab.io import Range
from gptlab.posttrain.generate import Generator, Sampling
from gptlab.posttrain.instructions import format_prompt
from gptlab.posttrain.serve.api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Sampled,
    parse,
)
from gptlab.posttrain.serve.responses import Reply, usage
from gptlab.train import latest_checkpoint

log = logging.getLogger("gptlab.posttrain.serve")

MAX_BODY_BYTES = 1 << 20
READ_TIMEOUT = 30.0  # seconds a socket read or write may wait for the client
DRAIN_LIMIT = 16 << 20  # an over-size body up to this size is read and dropped before the 413
ROUTES = {"/v1/models": ("GET",), "/v1/completions": ("POST",), "/v1/chat/completions": ("POST",),
          "/health": ("GET",)}


def _route(path: str) -> tuple[str, ...]:
    """The methods allowed on a path (404 when none)."""
    allowed = ROUTES.get(path) or (("GET",) if path.startswith("/v1/models/") else None)
    if allowed is None:
        raise ApiError(404, f"Unknown path {path!r}; routes: {', '.join(ROUTES)}", None, "not_found")
    return allowed


class ClientGone(Exception):
    """The client disconnected or stopped sending: log one line and close the connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptlab"
    sys_version = ""
    server: GptlabServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # StreamRequestHandler.setup applies it to the socket
        super().setup()

    # -- logging: the request line and status only (never headers, so never the key)
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._dispatch("PATCH")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_OPTIONS(self):  # noqa: N802
        self._dispatch("OPTIONS")

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- routing
    def _dispatch(self, method: str) -> None:
        self._streaming = self._body_read = False
        try:
            path = urlsplit(self.path).path
            if len(path) > 1:
                path = path.rstrip("/")
            self._authenticate(path)
            allowed = _route(path)
            if method not in allowed:
                raise ApiError(405, f"Method {method} not allowed on {path}; use {'/'.join(allowed)}", None,
                               "method_not_allowed")
            if method == "GET":
                self._get(path)
                return
            body = self._read_json()
            self._body_read = True
            if path == "/v1/completions":
                self._completions(body)
            else:
                self._chat(body)
        except ApiError as e:
            self._refuse(e, method)
        except ClientGone as e:
            log.info("%s %s %s: %s", self.address_string(), method, urlsplit(self.path).path, e)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:  # while answering
            log.info("%s %s %s: client gone while answering (%s)", self.address_string(), method,
                     urlsplit(self.path).path, type(e).__name__)
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must not kill the server; log it, answer 500
            log.exception("internal error on %s %s", method, urlsplit(self.path).path)
            self.close_connection = True
            if self._streaming:  # headers already sent: just end the stream
                return
            try:
                self._send_json(500, ApiError(500, f"internal server error ({type(e).__name__})", None, None,
                                              "server_error").body())
            except OSError:
                pass

    def _authenticate(self, path: str) -> None:
        key = self.server.api_key
        if key is None or path == "/health":
            return
        auth = self.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")

    def _refuse(self, e: ApiError, method: str) -> None:
        if not self._body_read and method in ("POST", "PUT", "PATCH"):
            self.close_connection = True  # the unread body would corrupt the next request
        headers = None
        if e.status == 405:
            headers = {"Allow": ", ".join(ROUTES.get(urlsplit(self.path).path.rstrip("/"), ("GET",)))}
        elif e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        self._send_json(e.status, e.body(), headers)

    def _read_json(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length", None,
                           "length_required")
        cl = self.headers.get("Content-Length")
        if cl is None:
            raise ApiError(411, "Content-Length header required", None, "length_required")
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "invalid Content-Length header", None, "invalid_request") from None
        if n > self.server.max_body_bytes:
            self._drain(n)
            raise ApiError(413, f"request body too large: {n} bytes; the limit is {self.server.max_body_bytes}",
                           None, "request_too_large")
        raw = self._read_body(n)
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not UTF-8", None, "invalid_json") from None
        except json.JSONDecodeError as e:
            raise ApiError(400, f"We could not parse the JSON body of your request ({e.msg} at line {e.lineno} "
                                f"column {e.colno})", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}", None, "invalid_json")
        return body

    def _read_body(self, n: int) -> bytes:
        """Exactly n bytes, or ClientGone (after a 408 when the client stalled past the read timeout)."""
        chunks, got = [], 0
        try:
            while got < n:
                chunk = self.rfile.read1(n - got)
                if not chunk:
                    raise ClientGone(f"client disconnected after {got} of {n} body bytes")
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            self.close_connection = True
            try:
                self._send_json(408, ApiError(408, f"timed out waiting for the request body ({got} of {n} bytes "
                                                   f"within {self.server.read_timeout:g}s)", None,
                                              "request_timeout").body())
            except OSError:
                pass
            raise ClientGone(f"timed out after {self.server.read_timeout:g}s with {got} of {n} body bytes") \
                from None
        except ConnectionError:
            raise ClientGone(f"client disconnected after {got} of {n} body bytes") from None
        return b"".join(chunks)

    def _drain(self, n: int) -> None:
        """Read and drop an over-size body (up to DRAIN_LIMIT), so the client sees the 413, not a reset."""
        left = n if n <= DRAIN_LIMIT else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    # -- the routes
    def _get(self, path: str) -> None:
        srv = self.server
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": srv.model_name})
            return
        card = {"id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "gptlab",
                "context_length": srv.generator.context_length}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [card]})
        elif path[len("/v1/models/"):] == srv.model_name:
            self._send_json(200, card)
        else:
            raise ApiError(404, f"The model '{path[len('/v1/models/'):]}' does not exist; this server serves "
                                f"'{srv.model_name}'", "model", "model_not_found")

    def _completions(self, body: dict) -> None:
        limit = self.server.max_tokens_limit
        req = parse(CompletionRequest, body, limit)
        ids = req.prompt if isinstance(req.prompt, list) else self.server.generator.encode(req.prompt)
        self._generate(req, ids, "prompt", min(16, limit), Reply(self.server.model_name, False, req.include_usage))

    def _chat(self, body: dict) -> None:
        limit = self.server.max_tokens_limit
        req = parse(ChatRequest, body, limit)
        ids = self.server.generator.encode(format_prompt({"instruction": req.instruction, "input": ""}))
        self._generate(req, ids, "messages", limit, Reply(self.server.model_name, True, req.include_usage))

    def _generate(self, req: Sampled, ids: list[int], prompt_param: str, default_max: int, reply: Reply) -> None:
        srv = self.server
        ctx = srv.generator.context_length
        if len(ids) > ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens, however your prompt has "
                                f"{len(ids)} tokens", prompt_param, "context_length_exceeded")
        for w in req.warnings:
            log.warning("%s", w)
        headers = {"X-Gptlab-Warning": "; ".join(req.warnings)} if req.warnings else {}
        max_tokens = req.max_tokens if req.max_tokens is not None else default_max
        sampling = Sampling(1.0 if req.temperature is None else float(req.temperature), req.top_k, req.seed)
        if req.stream:
            self._stream(ids, max_tokens, sampling, req.stop or [], reply, headers)
            return
        with srv.lock:
            out = srv.generator.complete(ids, max_tokens, sampling, req.stop or [])
        self._send_json(200, reply.whole(out.text, out.finish_reason, usage(len(ids), out.completion_tokens),
                                         req.warnings), headers)

    def _stream(self, ids: list[int], max_tokens: int, sampling: Sampling, stop: list[str], reply: Reply,
                headers: dict) -> None:
        """Server-sent events: one chunk per text delta, a last chunk with finish_reason (and one with usage),
        then [DONE]; the body ends when the connection closes."""
        def send(data: dict | str) -> None:
            self.wfile.write(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        self.close_connection = True
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        with self.server.lock:
            if reply.chat:
                send(reply.chunk("", None, first=True))
            out = self.server.generator.stream(ids, max_tokens, sampling, stop)
            for delta in out:
                send(reply.chunk(delta, None))
        send(reply.chunk(None, out.finish_reason))
        if reply.include_usage:
            send(reply.usage_chunk(usage(len(ids), out.completion_tokens)))
        send("[DONE]")


class GptlabServer(ThreadingHTTPServer):
    """Serves one Generator; `lock` lets one generation run at a time."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, generator: Generator, api_key: str | None, max_tokens_limit: int, model_name: str,
                 max_body_bytes: int, created: int, read_timeout: float = READ_TIMEOUT):
        self.generator, self.api_key, self.max_tokens_limit = generator, api_key, max_tokens_limit
        self.model_name, self.max_body_bytes, self.created = model_name, max_body_bytes, created
        self.read_timeout = read_timeout
        self.lock = threading.Lock()
        super().__init__(addr, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_tokens_limit: int = 512, model_name: str | None = None, *, device: str = "auto",
                max_body_bytes: int = MAX_BODY_BYTES, read_timeout: float = READ_TIMEOUT) -> GptlabServer:
    """Load the run's model and bind (not start) the server; `server.url`, `server.serve_forever()`,
    `server.shutdown()`. port=0 picks a free port."""
    if not isinstance(max_tokens_limit, int) or max_tokens_limit < 1:
        raise GptlabError(f"serve: max_tokens_limit: expected a positive integer, got {max_tokens_limit!r}")
    if read_timeout not in Range("(0, inf)"):
        raise GptlabError(f"serve: read_timeout: expected a positive number of seconds, got {read_timeout!r}")
    if api_key is not None and not api_key.strip():
        raise GptlabError("serve: api_key: empty key; unset it to serve without authentication")
    generator = Generator.from_run(run_dir, device)
    ck = latest_checkpoint(Path(run_dir))
    created = int(ck.stat().st_mtime) if ck else int(time.time())
    name = model_name or Path(run_dir).resolve().name
    try:
        srv = GptlabServer((host, port), generator, api_key, max_tokens_limit, name, max_body_bytes, created,
                           read_timeout)
    except OSError as e:
        raise GptlabError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    return srv


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_tokens_limit: int = 512, model_name: str | None = None, *, device: str = "auto",
          max_body_bytes: int = MAX_BODY_BYTES, read_timeout: float = READ_TIMEOUT) -> None:
    """make_server(...) and serve until interrupted."""
    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    srv = make_server(run_dir, host, port, api_key, max_tokens_limit, model_name, device=device,
                      max_body_bytes=max_body_bytes, read_timeout=read_timeout)
    log.info("serving %s (%s, context %d) at %s/v1%s", srv.model_name, srv.generator.device,
             srv.generator.context_length, srv.url, " (API key required)" if api_key else "")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
