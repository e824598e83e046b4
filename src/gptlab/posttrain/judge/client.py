"""An OpenAI-compatible chat endpoint as the judge: a hosted API, a local Ollama/vLLM/llama.cpp server, or
another `gptlab serve`.

Transport failures (refused connections, timeouts, HTTP 429/5xx) are retried with back-off and then stop the
run with an error; other HTTP errors (401, 400, ...) stop it at once. The API key is sent as a Bearer token
and never written anywhere.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from gptlab import GptlabError


def chat_url(judge_url: str) -> str:
    """.../chat/completions as given; a base URL ending in /v1 gets /chat/completions; any other base gets
    /v1/chat/completions."""
    parts = urlsplit(judge_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GptlabError(f"judge_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {judge_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def public_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print and to record."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


class JudgeClient:
    """POSTs one user message to an OpenAI-compatible chat endpoint and returns the reply's text."""

    def __init__(
        self,
        judge_url: str,
        judge_model: str,
        *,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        timeout: float = 60,
        retries: int = 2,
        backoff: float = 1.0,
    ):
        self.url, self.model, self._key = chat_url(judge_url), judge_model, api_key
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.retries, self.backoff = retries, backoff
        self.calls = 0
        self._count = threading.Lock()  # calls is shared by the threads of a concurrent judgement

    @classmethod
    def from_env(cls, judge_url: str, judge_model: str, api_key_env: str | None, **kw) -> JudgeClient:
        """The API key is read from the environment variable `api_key_env` (None or unset: no key)."""
        key = os.environ.get(api_key_env) if api_key_env else None
        return cls(judge_url, judge_model, api_key=key or None, **kw)

    def ask(self, content: str) -> str:
        """The judge's reply to one user message (retrying transport failures, HTTP 429 and 5xx)."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
        }
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        where = public_url(self.url)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            with self._count:
                self.calls += 1
            try:
                raw = self._post(json.dumps(body).encode())
            except urllib.error.HTTPError as e:
                msg = _error_message(e)
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {msg}"
                    continue
                raise GptlabError(f"judge {where}: HTTP {e.code}: {msg}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
                continue
            return _reply_text(raw, where)
        raise GptlabError(f"judge {where}: no answer after {self.retries + 1} attempt(s) ({last})")

    def _post(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return r.read()


def _reply_text(raw: bytes, where: str) -> str:
    """The assistant message's text from an OpenAI chat completion (content parts joined)."""
    try:
        reply = json.loads(raw.decode("utf-8"))
        text = reply["choices"][0]["message"].get("content")
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        return text or ""
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, IndexError, TypeError, AttributeError):
        raise GptlabError(f"judge {where}: the reply is not an OpenAI chat completion ({raw[:120]!r})") from None


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read()
        return str(json.loads(body)["error"]["message"])[:200]
    except Exception:  # any body: fall back to the reason
        return str(e.reason)[:200]
