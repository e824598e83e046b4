"""The response bodies: a completion (text or chat) whole, or as server-sent-event chunks."""

from __future__ import annotations

import time
import uuid


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Reply:
    """One response's id, time and shape: /v1/chat/completions (chat) or /v1/completions."""

    def __init__(self, model_name: str, chat: bool, include_usage: bool = False):
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model_name, self.chat, self.include_usage = model_name, chat, include_usage

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_name, "choices": choices}

    def whole(self, text: str, finish_reason: str, usage_: dict) -> dict:
        choice: dict = {"index": 0, "finish_reason": finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        out = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        out["usage"] = usage_
        return out

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, delta: str | None, finish_reason: str | None, first: bool = False) -> dict:
        """One streamed piece; a chat stream starts with the assistant's role (first=True)."""
        if self.chat:
            d: dict = {}
            if first:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason}
        out = self._envelope(self._chunk_object, [choice])
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage_: dict) -> dict:
        """The last chunk of a stream with stream_options.include_usage."""
        out = self._envelope(self._chunk_object, [])
        out["usage"] = usage_
        return out
