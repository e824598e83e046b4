"""An OpenAI-compatible HTTP server for one run: `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (both with `stream: true` as server-sent events), `GET /health`.

Why the standard library (http.server.ThreadingHTTPServer) and not FastAPI + uvicorn: the server holds one
small model behind one lock, so generation is serialised anyway and an async framework buys nothing; the API
surface is three routes with hand-written validation that must return OpenAI's error shape exactly
({"error": {"message", "type", "param", "code"}}), which FastAPI's default 422 bodies would have to be
overridden for; and it keeps gptlab's dependency list short (no pydantic/starlette/uvicorn stack to pin).
ThreadingHTTPServer answers /v1/models and /health while a generation runs.

Chat: only the last `user` message is used, as the instruction of the book's prompt template (chapter 7);
`system` (and `developer`) messages are prepended to that instruction, separated by a blank line; earlier
user/assistant turns are ignored (the book's model is single-turn). The reply is what the model generates after
"### Response:\n" until <|endoftext|>, a `stop` string or max_tokens.

Sampling: temperature (0 = greedy), top_k (an extension; 0/null = off), seed (reproducible sampling), stop
(a string or up to 4). top_p is accepted but not implemented: a value other than 1 is ignored and the response
carries a `warnings` list (and an X-Gptlab-Warning header). `model` may name anything: there is one model and
responses report its name. Defaults: max_tokens 16 for /v1/completions (as OpenAI's), the server's
max_tokens_limit for chat. A prompt longer than the model's context is refused (400); the generation itself may
run past the context with a sliding window, as `gptlab generate` does.

Compact vocabularies (vocab_map.npy): prompts are GPT-2 BPE as usual; tokens outside the run's vocabulary are
read as <|endoftext|>, and usage counts GPT-2 tokens.

Security: with api_key set, /v1/* need `Authorization: Bearer KEY` (compared in constant time); the key is
never logged or echoed. Bodies are capped (413 above max_body_bytes).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import torch

from gptlab import GptlabError
from gptlab.data.tokenizer import EOT_ID, decode, encode
from gptlab.posttrain.instructions import format_prompt

log = logging.getLogger("gptlab.posttrain.serve")

MAX_BODY_BYTES = 1 << 20
DRAIN_LIMIT = 16 << 20  # an over-size body up to this size is read and dropped before the 413
MAX_STOP = 4


# --------------------------------------------------------------------------------------------
# The model behind a lock
# --------------------------------------------------------------------------------------------


class LoadedModel:
    """A run's model with its tokenizer mapping (compact vocabulary aware) and a generation lock."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from gptlab.data.vocab import RUN_FILE, load_vocab_map
        from gptlab.train import latest_checkpoint, load_run_model

        self.run_dir = Path(run_dir)
        self.model, self.cfg = load_run_model(self.run_dir, device)
        self.vm = load_vocab_map(self.run_dir)
        if self.vm is not None and len(self.vm) != self.cfg.model.vocab_size:
            raise GptlabError(f"{self.run_dir / RUN_FILE}: {len(self.vm)} ids but model.vocab_size is "
                              f"{self.cfg.model.vocab_size}")
        self.device = next(self.model.parameters()).device
        self.context_length = self.cfg.model.context_length
        self.eos_id = int(self.vm.lut[EOT_ID]) if self.vm is not None else EOT_ID
        ck = latest_checkpoint(self.run_dir)
        self.created = int(ck.stat().st_mtime) if ck else int(time.time())
        self.lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """GPT-2 ids (what usage counts)."""
        return encode(text)

    def _to_model(self, ids: list[int]) -> list[int]:
        if self.vm is None:
            return list(ids)
        return self.vm.lut[torch.tensor(ids, dtype=torch.long)].tolist()

    def decode(self, model_ids: list[int]) -> str:
        return decode(self.vm.to_gpt2(model_ids) if self.vm is not None else model_ids)

    def stream(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, stop: list[str] | tuple = (), info: dict | None = None) -> Iterator[str]:
        """Yield text deltas (never splitting a UTF-8 character or emitting part of a stop string). On exit
        `info` holds finish_reason ("stop" or "length") and completion_tokens. Call under `self.lock`."""
        from gptlab.posttrain.generate import generate_ids

        info = {} if info is None else info
        ids = self._to_model(prompt_ids) or [self.eos_id]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        out: list[int] = []
        text, emitted, finish = "", 0, None
        info.update(finish_reason="length", completion_tokens=0)
        for tok in generate_ids(self.model, idx, max_tokens, temperature, top_k or None, eos_id=self.eos_id,
                                generator=gen):
            out.append(tok)
            info["completion_tokens"] = len(out)
            text = self.decode(out)
            hits = [p for p in (text.find(s) for s in stop) if p >= 0]
            if hits:
                text, finish = text[:min(hits)], "stop"
                break
            safe = len(text)
            while safe > emitted and text[safe - 1] == "\ufffd":  # maybe a partial UTF-8 character
                safe -= 1
            hold = 0  # hold back a tail that could be the start of a stop string
            for s in stop:
                for k in range(min(len(s) - 1, safe - emitted), hold, -1):
                    if text[safe - k:safe] == s[:k]:
                        hold = k
                        break
            safe -= hold
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        else:
            if len(out) < max_tokens:
                finish = "stop"  # <|endoftext|>
        if len(text) > emitted:
            yield text[emitted:]
        info["finish_reason"] = finish or "length"

    def complete(self, prompt_ids: list[int], max_tokens: int, **kw) -> tuple[str, dict]:
        info: dict = {}
        with self.lock:
            text = "".join(self.stream(prompt_ids, max_tokens, info=info, **kw))
        return text, info


# --------------------------------------------------------------------------------------------
# Request validation
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(param: str, expected: str, v) -> ApiError:
    return ApiError(400, f"Invalid type for '{param}': expected {expected}, got {type(v).__name__} ({json.dumps(v)[:60]})",
                    param, "invalid_type")


def _common_params(body: dict, limit: int, default_max: int) -> dict:
    """The sampling fields shared by both endpoints (null = default)."""
    g = lambda k: body.get(k)  # noqa: E731
    out = {"warnings": []}
    mt = g("max_tokens")
    if mt is None:
        mt = g("max_completion_tokens")
    if mt is None:
        mt = default_max
    elif not _is_int(mt):
        raise _bad("max_tokens", "an integer", mt)
    if mt < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {mt}", "max_tokens", "invalid_value")
    if mt > limit:
        raise ApiError(400, f"max_tokens is too large: {mt}; this server allows at most {limit}", "max_tokens",
                       "max_tokens_too_large")
    out["max_tokens"] = mt
    t = g("temperature")
    if t is None:
        t = 1.0
    elif not _is_num(t):
        raise _bad("temperature", "a number", t)
    if not 0 <= t <= 2:
        raise ApiError(400, f"temperature must be between 0 and 2, got {t}", "temperature", "invalid_value")
    out["temperature"] = float(t)
    tp = g("top_p")
    if tp is not None:
        if not _is_num(tp):
            raise _bad("top_p", "a number", tp)
        if not 0 <= tp <= 1:
            raise ApiError(400, f"top_p must be between 0 and 1, got {tp}", "top_p", "invalid_value")
        if tp != 1:
            out["warnings"].append(f"top_p={tp} is not supported by this server and was ignored (use top_k)")
    k = g("top_k")
    if k is not None and (not _is_int(k) or k < 0):
        raise _bad("top_k", "a non-negative integer", k)
    out["top_k"] = k or None
    s = g("stop")
    if s is None:
        s = []
    elif isinstance(s, str):
        s = [s]
    elif not (isinstance(s, list) and all(isinstance(x, str) for x in s)):
        raise _bad("stop", "a string or a list of strings", s)
    if len(s) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} sequences, got {len(s)}", "stop", "invalid_value")
    if any(x == "" for x in s):
        raise ApiError(400, "stop: sequences must not be empty", "stop", "invalid_value")
    out["stop"] = s
    seed = g("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("seed", "an integer", seed)
    out["seed"] = seed
    st = g("stream")
    if st is not None and not isinstance(st, bool):
        raise _bad("stream", "a boolean", st)
    out["stream"] = bool(st)
    so = g("stream_options")
    if so is not None:
        if not isinstance(so, dict) or set(so) - {"include_usage"} or not isinstance(so.get("include_usage", False), bool):
            raise _bad("stream_options", "an object {\"include_usage\": boolean}", so)
    out["include_usage"] = bool((so or {}).get("include_usage"))
    n = g("n")
    if n is not None:
        if not _is_int(n):
            raise _bad("n", "an integer", n)
        if n != 1:
            raise ApiError(400, "n: only n=1 is supported", "n", "invalid_value")
    for key in ("model", "user"):
        if g(key) is not None and not isinstance(g(key), str):
            raise _bad(key, "a string", g(key))
    return out


_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "stream_options", "n",
           "user"}
COMPLETION_FIELDS = _COMMON | {"prompt"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}


def _check_fields(body: dict, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")


def _completion_prompt(body: dict) -> list[int]:
    if "prompt" not in body or body["prompt"] is None:
        raise ApiError(400, "Missing required parameter: 'prompt'", "prompt", "missing_required_parameter")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, str):
        return encode(p)
    if isinstance(p, list) and p and all(_is_int(t) for t in p):
        if any(not 0 <= t < 50257 for t in p):
            raise ApiError(400, "prompt: token ids must be GPT-2 ids in [0, 50257)", "prompt", "invalid_value")
        return list(p)
    if isinstance(p, list) and all(isinstance(x, str) for x in p):
        raise ApiError(400, "prompt: only one prompt per request is supported", "prompt", "invalid_value")
    raise _bad("prompt", "a string or a list of GPT-2 token ids", p)


def _message_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                    f"supported", f"{where}[{j}]", "invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(where, "a string or a list of text parts", content)


def chat_instruction(messages) -> str:
    """The instruction for the book's template: system/developer messages + the last user message."""
    if not isinstance(messages, list):
        raise _bad("messages", "a list of messages", messages)
    if not messages:
        raise ApiError(400, "messages: must contain at least one message", "messages", "invalid_value")
    system, user = [], None
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, "an object with role and content", m)
        for key in m:
            if key not in ("role", "content", "name"):
                raise ApiError(400, f"Unrecognized request argument supplied: {where}.{key}", f"{where}.{key}",
                               "unknown_parameter")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"{where}.role: expected system, developer, user or assistant, got "
                                f"{json.dumps(role)[:40]}", f"{where}.role", "invalid_value")
        if "content" not in m:
            raise ApiError(400, f"Missing required parameter: '{where}.content'", f"{where}.content",
                           "missing_required_parameter")
        if m["content"] is None and role == "assistant":
            continue
        text = _message_text(m["content"], f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            user = text
    if user is None:
        raise ApiError(400, "messages: no user message", "messages", "invalid_value")
    return "\n\n".join([s for s in system if s] + [user])


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

ROUTES = {"/v1/models": ("GET",), "/v1/completions": ("POST",), "/v1/chat/completions": ("POST",),
          "/health": ("GET",)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gptlab"
    sys_version = ""
    server: "GptlabServer"

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

    # -- responses
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

    def _send_error(self, e: ApiError, headers: dict | None = None) -> None:
        self._send_json(e.status, {"error": {"message": e.message, "type": e.type, "param": e.param,
                                             "code": e.code}}, headers)

    # -- routing
    def _dispatch(self, method: str) -> None:
        srv = self.server
        self._streaming = False
        body_read = False
        try:
            path = urlsplit(self.path).path
            if len(path) > 1:
                path = path.rstrip("/")
            if srv.api_key is not None and path != "/health":
                auth = self.headers.get("Authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not given or not hmac.compare_digest(given.encode(), srv.api_key.encode()):
                    raise ApiError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'", None,
                                   "invalid_api_key")
            allowed = ROUTES.get(path)
            if allowed is None and path.startswith("/v1/models/"):
                allowed = ("GET",)
            if allowed is None:
                raise ApiError(404, f"Unknown path {path!r}; routes: {', '.join(ROUTES)}", None, "not_found")
            if method not in allowed:
                raise ApiError(405, f"Method {method} not allowed on {path}; use {'/'.join(allowed)}", None,
                               "method_not_allowed")
            if method == "GET":
                self._get(path)
                return
            body = self._read_json()
            body_read = True
            if path == "/v1/completions":
                self._completions(body)
            else:
                self._chat(body)
        except ApiError as e:
            if not body_read and method in ("POST", "PUT", "PATCH"):
                self.close_connection = True  # the unread body would corrupt the next request
            headers = {"Allow": ", ".join(ROUTES.get(urlsplit(self.path).path.rstrip("/"), ("GET",)))} \
                if e.status == 405 else None
            if e.status == 401:
                headers = {"WWW-Authenticate": "Bearer"}
            self._send_error(e, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must not kill the server; log it, answer 500
            log.exception("internal error on %s %s", method, urlsplit(self.path).path)
            self.close_connection = True
            if self._streaming:  # headers already sent: just end the stream
                return
            try:
                self._send_error(ApiError(500, f"internal server error ({type(e).__name__})", None, None,
                                          "server_error"))
            except OSError:
                pass

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
            if n <= DRAIN_LIMIT:  # read and drop it, so the client sees the 413 rather than a reset connection
                left = n
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise ApiError(413, f"request body too large: {n} bytes; the limit is {self.server.max_body_bytes}",
                           None, "request_too_large")
        raw = self.rfile.read(n)
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

    def _get(self, path: str) -> None:
        srv = self.server
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": srv.model_name})
            return
        card = {"id": srv.model_name, "object": "model", "created": srv.lm.created, "owned_by": "gptlab",
                "context_length": srv.lm.context_length}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [card]})
        elif path[len("/v1/models/"):] == srv.model_name:
            self._send_json(200, card)
        else:
            raise ApiError(404, f"The model '{path[len('/v1/models/'):]}' does not exist; this server serves "
                                f"'{srv.model_name}'", "model", "model_not_found")

    def _check_prompt(self, ids: list[int], param: str) -> None:
        ctx = self.server.lm.context_length
        if len(ids) > ctx:
            raise ApiError(400, f"This model's maximum context length is {ctx} tokens, however your prompt has "
                                f"{len(ids)} tokens", param, "context_length_exceeded")

    def _completions(self, body: dict) -> None:
        _check_fields(body, COMPLETION_FIELDS)
        p = _common_params(body, self.server.max_tokens_limit, min(16, self.server.max_tokens_limit))
        ids = _completion_prompt(body)
        self._check_prompt(ids, "prompt")
        self._generate(ids, p, chat=False)

    def _chat(self, body: dict) -> None:
        _check_fields(body, CHAT_FIELDS)
        if "messages" not in body:
            raise ApiError(400, "Missing required parameter: 'messages'", "messages", "missing_required_parameter")
        p = _common_params(body, self.server.max_tokens_limit, self.server.max_tokens_limit)
        instruction = chat_instruction(body["messages"])
        ids = encode(format_prompt({"instruction": instruction, "input": ""}))
        self._check_prompt(ids, "messages")
        self._generate(ids, p, chat=True)

    def _generate(self, ids: list[int], p: dict, chat: bool) -> None:
        srv = self.server
        kw = dict(temperature=p["temperature"], top_k=p["top_k"], seed=p["seed"], stop=p["stop"])
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        headers = {"X-Gptlab-Warning": "; ".join(p["warnings"])} if p["warnings"] else {}
        for w in p["warnings"]:
            log.warning("%s", w)

        def usage(n: int) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}

        if not p["stream"]:
            text, info = srv.lm.complete(ids, p["max_tokens"], **kw)
            choice = {"index": 0, "finish_reason": info["finish_reason"]}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice.update(text=text, logprobs=None)
            out = {"id": rid, "object": obj, "created": created, "model": srv.model_name, "choices": [choice],
                   "usage": usage(info["completion_tokens"])}
            if p["warnings"]:
                out["warnings"] = p["warnings"]
            self._send_json(200, out, headers)
            return

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict:
            if chat:
                d: dict = {}
                if first:
                    d["role"] = "assistant"
                if delta is not None:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            c = {"id": rid, "object": chunk_obj, "created": created, "model": srv.model_name, "choices": [choice]}
            if p["include_usage"]:
                c["usage"] = None
            return c

        def send(obj_: dict | str) -> None:
            data = obj_ if isinstance(obj_, str) else json.dumps(obj_)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        self.close_connection = True  # the body ends when the connection closes
        self._streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        info: dict = {}
        with srv.lm.lock:
            if chat:
                send(chunk("", None, first=True))
            for delta in srv.lm.stream(ids, p["max_tokens"], info=info, **kw):
                send(chunk(delta, None))
        send(chunk(None, info["finish_reason"]))
        if p["include_usage"]:
            send({"id": rid, "object": chunk_obj, "created": created, "model": srv.model_name, "choices": [],
                  "usage": usage(info["completion_tokens"])})
        send("[DONE]")


class GptlabServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, lm: LoadedModel, api_key: str | None, max_tokens_limit: int, model_name: str,
                 max_body_bytes: int):
        self.lm, self.api_key, self.max_tokens_limit = lm, api_key, max_tokens_limit
        self.model_name, self.max_body_bytes = model_name, max_body_bytes
        super().__init__(addr, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                max_tokens_limit: int = 512, model_name: str | None = None, *, device: str = "auto",
                max_body_bytes: int = MAX_BODY_BYTES) -> GptlabServer:
    """Load the run's model and bind (not start) the server; `server.url`, `server.serve_forever()`,
    `server.shutdown()`. port=0 picks a free port."""
    if not isinstance(max_tokens_limit, int) or max_tokens_limit < 1:
        raise GptlabError(f"serve: max_tokens_limit: expected a positive integer, got {max_tokens_limit!r}")
    if api_key is not None and not api_key.strip():
        raise GptlabError("serve: api_key: empty key; unset it to serve without authentication")
    lm = LoadedModel(run_dir, device)
    name = model_name or Path(run_dir).resolve().name
    try:
        srv = GptlabServer((host, port), lm, api_key, max_tokens_limit, name, max_body_bytes)
    except OSError as e:
        raise GptlabError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    return srv


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_tokens_limit: int = 512, model_name: str | None = None, *, device: str = "auto",
          max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """make_server(...) and serve until interrupted."""
    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    srv = make_server(run_dir, host, port, api_key, max_tokens_limit, model_name, device=device,
                      max_body_bytes=max_body_bytes)
    log.info("serving %s (%s, context %d) at %s/v1%s", srv.model_name, srv.lm.device, srv.lm.context_length,
             srv.url, " (API key required)" if api_key else "")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


__all__ = ["make_server", "serve", "LoadedModel", "chat_instruction", ]
