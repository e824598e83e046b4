"""The HTTP side of `gptlab serve`: a FastAPI app served by uvicorn, with the model behind a dynamic batcher.

Why FastAPI + uvicorn: generation runs in one worker thread that decodes every waiting request together
(batcher.py), so the HTTP side must hold many open requests cheaply while they wait and stream; an asyncio
server does that without a thread per connection, and FastAPI adds the routing and /docs, /openapi.json for
free. Request bodies are still validated by api.py (not by FastAPI), so every error keeps OpenAI's shape
{"error": {"message", "type", "param", "code"}}, never FastAPI's 422. Streaming uses Starlette's
StreamingResponse, not sse-starlette: OpenAI's stream is only `data: JSON` events and `data: [DONE]`, with no
event ids, retries or keep-alive pings (which some clients of this format do not expect), and
StreamingResponse already stops the stream when the client disconnects.

Sampling: temperature (0 = greedy), top_p (nucleus), top_k (an extension; 0/null = off), seed (reproducible
sampling, also inside a batch), stop (a string or up to 4). `model` names the one model served (as GET
/v1/models lists it) or is left out; any other name gets 404 model_not_found, as GET /v1/models/NAME does.
Defaults: max_tokens 16 for /v1/completions (as OpenAI's), the server's max_tokens_limit for chat. A prompt
longer than the model's context is refused (400); the generation itself may run past the context with a sliding
window, as `gptlab generate` does. Usage counts GPT-2 tokens.

Security: with api_key set, /v1/* need `Authorization: Bearer KEY` (compared in constant time); the key is
never logged or echoed (the request log holds the client, method, path and status only). /health, /docs and
/openapi.json need no key. Bodies are capped (413 above max_body_bytes).

Misbehaving clients: each read of a request body waits at most read_timeout seconds, so a client that sends
headers promising a body and then stalls gets a 408 and is disconnected; an idle keep-alive connection is
closed after read_timeout too (uvicorn's timeout_keep_alive). A client that disconnects mid-body or mid-stream
costs one log line, never a traceback; a streamed request whose client left is dropped from its batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab.posttrain.generate import Generator, Sampling
from gptlab.posttrain.instructions import format_prompt
from gptlab.posttrain.serve.api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Sampled,
    parse,
    parse_body,
)
from gptlab.posttrain.serve.batcher import Batcher, Job
from gptlab.posttrain.serve.responses import Reply, usage

log = logging.getLogger("gptlab.posttrain.serve")

DRAIN_LIMIT = 16 << 20  # an over-size body up to this size is read and dropped before the 413
OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")  # no API key needed
ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health")


@dataclass
class State:
    """What the app serves: the model (through its batcher) and the server's settings."""

    generator: Generator
    batcher: Batcher
    api_key: str | None
    max_tokens_limit: int
    model_name: str
    max_body_bytes: int
    created: int
    read_timeout: float


class ClientGone(Exception):
    """The client disconnected or stopped sending: log one line and close the connection."""


def _error(e: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), e.status, headers)


# --------------------------------------------------------------------------------------------
# The guard: path normalisation, the API key, request bodies (size, read deadline), the request log
# --------------------------------------------------------------------------------------------


class Guard:
    """Pure ASGI middleware in front of the routes. A body is read whole here (so a stalled or over-size body
    never reaches a route) and replayed to the app."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        method, path = scope["method"], scope["path"]
        client = "{}:{}".format(*(scope.get("client") or ("-", "-")))
        sent = {"status": None}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            self._authenticate(scope)
            if method in ("POST", "PUT", "PATCH"):
                receive = await self._read_body(scope, receive, send_logged)
            await self.app(scope, receive, send_logged)
        except ApiError as e:
            await self._answer(
                _error(e, {"WWW-Authenticate": "Bearer"} if e.status == 401 else None),
                scope,
                receive,
                send_logged,
                close=method in ("POST", "PUT", "PATCH"),
            )
        except ClientGone as e:
            log.info("%s %s %s: %s", client, method, path, e)
        finally:
            if sent["status"] is not None:
                log.info('%s "%s %s" %s', client, method, path, sent["status"])

    async def _answer(self, response: JSONResponse, scope, receive, send, close: bool = False) -> None:
        if close:  # an unread body would corrupt the next request on this connection
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    def _authenticate(self, scope) -> None:
        key = self.state.api_key
        if key is None or scope["path"] in OPEN_PATHS:
            return
        auth = _header(scope, b"authorization")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(
                401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'", None, "invalid_api_key"
            )

    async def _read_body(self, scope, receive, send):
        """The whole body (at most max_body_bytes), each read within read_timeout; returns a receive that
        replays it and then hands over to the connection's (which reports a disconnect)."""
        limit, timeout = self.state.max_body_bytes, self.state.read_timeout
        cl = _header(scope, b"content-length")
        n = None
        if cl:
            try:
                n = int(cl)
                if n < 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "invalid Content-Length header", None, "invalid_request") from None
            if n > limit:
                if n <= DRAIN_LIMIT:  # read and drop it, so the client sees the 413 rather than a reset
                    await self._drain(receive, timeout, DRAIN_LIMIT)
                raise ApiError(
                    413, f"request body too large: {n} bytes; the limit is {limit}", None, "request_too_large"
                )
        of = f" of {n}" if n is not None else ""
        chunks, got, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                await self._answer(
                    _error(
                        ApiError(
                            408,
                            f"timed out waiting for the request body ({got}{of} bytes within {timeout:g}s)",
                            None,
                            "request_timeout",
                        )
                    ),
                    scope,
                    receive,
                    send,
                    close=True,
                )
                raise ClientGone(f"timed out after {timeout:g}s with {got}{of} body bytes") from None
            if message["type"] == "http.disconnect":
                raise ClientGone(f"client disconnected after {got}{of} body bytes")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            got += len(chunk)
            more = message.get("more_body", False)
            if got > limit:  # no Content-Length (chunked): the cap applies as it arrives
                if more:
                    await self._drain(receive, timeout, DRAIN_LIMIT - got)
                raise ApiError(413, f"request body too large: over {limit} bytes", None, "request_too_large")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    async def _drain(receive, timeout: float, budget: int) -> None:
        """Read and drop the rest of a body, up to `budget` bytes."""
        while budget > 0:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))


def _header(scope, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return ""


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _body_schema(model: type[Sampled], defs: dict) -> dict:
    """openapi_extra documenting a request body that the route validates itself (api.parse)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(state: State) -> FastAPI:
    """The FastAPI app over `state` (routes, OpenAI-shaped errors, the Guard middleware)."""
    app = FastAPI(title="gptlab serve", summary="An OpenAI-compatible API for one gptlab run", redoc_url=None)
    app.state.gptlab = state
    defs: dict = {}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        path = request.url.path
        if e.status_code == 404:
            return _error(ApiError(404, f"Unknown path {path!r}; routes: {', '.join(ROUTES)}", None, "not_found"))
        if e.status_code == 405:
            allow = (e.headers or {}).get("Allow", "")
            return _error(
                ApiError(
                    405, f"Method {request.method} not allowed on {path}; use {allow}", None, "method_not_allowed"
                ),
                {"Allow": allow},
            )
        return _error(ApiError(e.status_code, str(e.detail), None, None), e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(ApiError(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param, "invalid_value"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # answered in OpenAI's shape; uvicorn still logs the traceback
        return _error(ApiError(500, f"internal server error ({type(e).__name__})", None, None, "server_error"))

    @app.get("/health", summary="Liveness, and what the batcher is doing")
    async def health():
        b = state.batcher
        return {
            "status": "ok",
            "model": state.model_name,
            "waiting": b.waiting,
            "max_batch": b.max_batch,
            "batch_wait_ms": b.batch_wait * 1000,
            "batches": {str(k): v for k, v in sorted(b.batch_sizes.items())},
        }

    def card() -> dict:
        return {
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "gptlab",
            "context_length": state.generator.context_length,
        }

    @app.get("/v1/models", summary="The one model served")
    async def models():
        return {"object": "list", "data": [card()]}

    def served(model_id: str | None) -> None:
        """A request for another model than the one served (None: left out, which means the one served)."""
        if model_id is not None and model_id != state.model_name:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist; this server serves '{state.model_name}'",
                "model",
                "model_not_found",
            )

    @app.get("/v1/models/{model_id:path}", summary="The model's card")
    async def model(model_id: str):
        served(model_id)
        return card()

    @app.post(
        "/v1/completions",
        summary="Continue a prompt (text or GPT-2 token ids)",
        openapi_extra=_body_schema(CompletionRequest, defs),
    )
    async def completions(request: Request):
        req = parse(CompletionRequest, await _json(request), state.max_tokens_limit)
        served(req.model)
        ids = req.prompt if isinstance(req.prompt, list) else state.generator.encode(req.prompt)
        return await _generate(
            state,
            request,
            req,
            ids,
            "prompt",
            min(16, state.max_tokens_limit),
            Reply(state.model_name, False, req.include_usage),
        )

    @app.post(
        "/v1/chat/completions",
        summary="Answer the last user message with the book's prompt template",
        openapi_extra=_body_schema(ChatRequest, defs),
    )
    async def chat(request: Request):
        req = parse(ChatRequest, await _json(request), state.max_tokens_limit)
        served(req.model)
        ids = state.generator.encode(format_prompt({"instruction": req.instruction, "input": ""}))
        return await _generate(
            state,
            request,
            req,
            ids,
            "messages",
            state.max_tokens_limit,
            Reply(state.model_name, True, req.include_usage),
        )

    openapi = app.openapi

    def openapi_with_defs() -> dict:  # the request models' nested schemas (Message) as components
        schema = openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
        return schema

    app.openapi = openapi_with_defs
    app.add_middleware(Guard, state=state)
    return app


async def _json(request: Request) -> dict:
    return parse_body(await request.body())


async def _generate(
    state: State, request: Request, req: Sampled, ids: list[int], prompt_param: str, default_max: int, reply: Reply
):
    ctx = state.generator.context_length
    if len(ids) > ctx:
        raise ApiError(
            400,
            f"This model's maximum context length is {ctx} tokens, however your prompt has {len(ids)} tokens",
            prompt_param,
            "context_length_exceeded",
        )
    max_tokens = req.max_tokens if req.max_tokens is not None else default_max
    sampling = Sampling(
        1.0 if req.temperature is None else float(req.temperature),
        req.top_k,
        req.seed,
        None if req.top_p is None else float(req.top_p),
    )
    job = Job(ids, max_tokens, sampling, req.stop or [], bool(req.stream))
    state.batcher.submit(job)
    if req.stream:
        return StreamingResponse(
            _events(job, reply, len(ids), request),
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
    while True:
        try:
            event = await asyncio.wait_for(job.next(), 1.0)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancelled = True
                raise ClientGone("client disconnected while its completion was generated") from None
            continue
        if event[0] == "done":
            out = event[2]
            return reply.whole(out.text, out.finish_reason, usage(len(ids), out.completion_tokens))
        if event[0] == "error":  # the worker logged it
            raise ApiError(500, f"internal server error ({type(event[1]).__name__})", None, None, "server_error")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _events(job: Job, reply: Reply, prompt_tokens: int, request: Request):
    """Server-sent events: one chunk per text delta, a last chunk with finish_reason (and one with usage), then
    [DONE]. A client that leaves cancels the job (one log line)."""
    done = False
    try:
        if reply.chat:
            yield _sse(reply.chunk("", None, first=True))
        while True:
            kind, *rest = await job.next()
            if kind == "error":
                log.error("generation failed mid-stream (%s): the stream ends without [DONE]", type(rest[0]).__name__)
                done = True
                return
            if rest[0]:
                yield _sse(reply.chunk(rest[0], None))
            if kind == "done":
                done = True
                out = rest[1]
                yield _sse(reply.chunk(None, out.finish_reason))
                if reply.include_usage:
                    yield _sse(reply.usage_chunk(usage(prompt_tokens, out.completion_tokens)))
                yield _sse("[DONE]")
                return
    finally:
        if not done:
            job.cancelled = True
            client = "{}:{}".format(*(request.client or ("-", "-")))
            log.info("%s POST %s: client disconnected mid-stream; its generation is dropped", client, request.url.path)
