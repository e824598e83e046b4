"""The request bodies of /v1/completions and /v1/chat/completions as pydantic models, and the one translation
of a validation failure into OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.

Types are strict (JSON true is not a number, 2.0 is not an integer) and unknown fields are refused. `null`
means "the default" for every optional field. Every number has a declared interval (`in_range`, the same
gptlab.io.Range the config and the CLI use): seed is a signed 64-bit integer, as OpenAI's. A failed `check` reports its
own message ("{param}" in it is replaced by the offending parameter, e.g. messages[0].role); any other wrong type is
reported as "Invalid type for 'PARAM': expected WHAT, got TYPE (VALUE)" with WHAT from `EXPECTED`. Only the first error
is sent: unknown fields first, then a missing required field, then the fields in the order declared below
(where within a message its unknown keys come first).

Chat: only the last `user` message is used, as the instruction of the book's prompt template (chapter 7);
`system` (and `developer`) messages are prepended to it, separated by a blank line; earlier user/assistant
turns are ignored (the book's model is single-turn).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gptlab.data.tokenizer import VOCAB_SIZE
from gptlab.io import Range
from gptlab.posttrain.settings import ServeSettings, declared_range

MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant")

EXPECTED = {  # what a parameter of the wrong type should have been (patterns: [] is any list index)
    "max_tokens": "an integer",
    "temperature": "a number",
    "top_p": "a number",
    "top_k": "a non-negative integer",
    "stop": "a string or a list of strings",
    "seed": "an integer",
    "stream": "a boolean",
    "stream_options": 'an object {"include_usage": boolean}',
    "n": "an integer",
    "model": "a string",
    "user": "a string",
    "prompt": "a string or a list of GPT-2 token ids",
    "messages": "a list of messages",
    "messages[]": "an object with role and content",
    "messages[].content": "a string or a list of text parts",
}


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------
# The body: UTF-8 JSON, an object, nested at most MAX_DEPTH deep
# --------------------------------------------------------------------------------------------
MAX_DEPTH = 32  # lists/objects inside each other; a valid request nests 5 (body, messages, a message, content, a part)


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or an ApiError 400 (invalid_json) in OpenAI's shape: not UTF-8, not
    JSON, not an object, or nested deeper than MAX_DEPTH. Nesting so deep that the JSON parser itself runs out of
    recursion (100,000 `[`) is the same 400, never a 500, and no value deeper than MAX_DEPTH reaches the checks."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8", None, "invalid_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({e.msg} at line {e.lineno} column {e.colno})",
            None,
            "invalid_json",
        ) from None
    except RecursionError:
        body = None  # deeper than the parser goes: certainly deeper than MAX_DEPTH
    if body is None or _depth_over(body, MAX_DEPTH):
        raise ApiError(400, f"the JSON body is nested more than {MAX_DEPTH} levels deep", None, "invalid_json")
    if not isinstance(body, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}", None, "invalid_json")
    return body


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists/objects in `value` nest more than `limit` deep (iterative: no recursion to run out of)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


# --------------------------------------------------------------------------------------------
# Declarative checks
# --------------------------------------------------------------------------------------------


def check(ok: Callable[[Any], bool], message: str | Callable[[Any], str], code: str = "invalid_value"):
    """A constraint: values for which `ok` is false are refused with `message` (or message(value))."""

    def validate(value):
        if not ok(value):
            raise PydanticCustomError(code, message(value) if callable(message) else message)
        return value

    return AfterValidator(validate)


def in_range(param: str, interval: str):
    """A number inside `interval` ("[0, 2]", "[1, inf)", ...)."""
    r = Range(interval)
    return check(lambda v: v in r, lambda v: f"{param} must be {r}, got {v}")


def type_check(ok: Callable[[Any], bool]):
    """A constraint that the JSON types cannot express: failures are reported as a wrong type."""
    return check(ok, "wrong type", "invalid_type")


def _max_tokens_within_limit(value: int, info: ValidationInfo) -> int:
    limit = info.context["max_tokens_limit"]
    if value > limit:
        raise PydanticCustomError(
            "max_tokens_too_large", f"max_tokens is too large: {value}; this server allows at most {limit}"
        )
    return value


def _one_prompt(p):
    """A completion's prompt: one string (alone or in a list) or a list of GPT-2 token ids."""
    if p is None:
        raise PydanticCustomError("missing_required_parameter", "Missing required parameter: 'prompt'")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if any(not 0 <= t < VOCAB_SIZE for t in p):
            raise PydanticCustomError("invalid_value", f"prompt: token ids must be GPT-2 ids in [0, {VOCAB_SIZE})")
        return p
    if isinstance(p, list) and all(isinstance(x, str) for x in p):
        raise PydanticCustomError("invalid_value", "prompt: only one prompt per request is supported")
    raise PydanticCustomError("invalid_type", "wrong type")


def _is_text_part(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _text_parts(content):
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


Number = StrictInt | StrictFloat
INT64 = f"[{-(2**63)}, {2**63 - 1}]"
# a request's max_tokens accepts what the server's limit accepts (ServeSettings.max_tokens_limit), then the limit
MaxTokens = Annotated[
    StrictInt,
    in_range("max_tokens", declared_range(ServeSettings, "max_tokens_limit")),
    AfterValidator(_max_tokens_within_limit),
]
Stop = Annotated[
    list[StrictStr],
    BeforeValidator(lambda s: [s] if isinstance(s, str) else s),
    check(lambda s: len(s) <= MAX_STOP, lambda s: f"stop: at most {MAX_STOP} sequences, got {len(s)}"),
    check(lambda s: "" not in s, "stop: sequences must not be empty"),
]
StreamOptions = Annotated[
    dict, type_check(lambda o: set(o) <= {"include_usage"} and isinstance(o.get("include_usage", False), bool))
]
TextPart = Annotated[
    Any, check(_is_text_part, '{param}: only text parts ({"type": "text", "text": ...}) are supported')
]


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class Sampled(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: MaxTokens | None = None
    temperature: Annotated[Number, in_range("temperature", "[0, 2]")] | None = None
    top_p: Annotated[Number, in_range("top_p", "[0, 1]")] | None = None
    top_k: Annotated[StrictInt, type_check(lambda k: k >= 0)] | None = None  # > vocabulary = every token
    stop: Stop | None = None
    seed: Annotated[StrictInt, in_range("seed", INT64)] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[StrictInt, check(lambda n: n == 1, "n: only n=1 is supported")] | None = None
    model: StrictStr | None = None
    user: StrictStr | None = None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(Sampled):
    prompt: Annotated[str | list[int] | None, PlainValidator(_one_prompt)] = Field(None, validate_default=True)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Annotated[
        Any,
        check(
            lambda r: r in ROLES,
            lambda r: f"{{param}}: expected system, developer, user or assistant, got {json.dumps(r)[:40]}",
        ),
    ] = Field(None, validate_default=True)
    content: Annotated[list[TextPart] | None, BeforeValidator(_text_parts)]
    name: Any = None

    @field_validator("content")
    @classmethod
    def _null_only_for_assistant(cls, content, info: ValidationInfo):
        if content is None and info.data.get("role") != "assistant":
            raise PydanticCustomError("invalid_type", "wrong type")
        return content

    @property
    def text(self) -> str:
        return "".join(part["text"] for part in self.content or [])


class ChatRequest(Sampled):
    messages: Annotated[
        list[Message],
        check(lambda ms: len(ms) > 0, "messages: must contain at least one message"),
        check(lambda ms: any(m.role == "user" for m in ms), "messages: no user message"),
    ]

    @model_validator(mode="before")
    @classmethod
    def _max_completion_tokens(cls, body):
        """max_completion_tokens (the newer name) is read when max_tokens is null or absent."""
        body = dict(body)
        newer = body.pop("max_completion_tokens", None)
        if body.get("max_tokens") is None and newer is not None:
            body["max_tokens"] = newer
        return body

    @property
    def instruction(self) -> str:
        """The book template's instruction: system/developer messages, then the last user message."""
        system = [m.text for m in self.messages if m.role in ("system", "developer") and m.text]
        user = [m.text for m in self.messages if m.role == "user"][-1]
        return "\n\n".join(system + [user])


# --------------------------------------------------------------------------------------------
# Validation errors -> ApiError
# --------------------------------------------------------------------------------------------


def parse(request: type[Sampled], body: dict, max_tokens_limit: int) -> Sampled:
    """The validated request, or the ApiError (400) for the first thing wrong with it."""
    try:
        return request.model_validate(body, context={"max_tokens_limit": max_tokens_limit})
    except ValidationError as e:
        raise _api_error(_first(e.errors()), body) from None


def _first(errors: list[dict]) -> dict:
    def under(prefix: tuple) -> int:
        return next(i for i, e in enumerate(errors) if e["loc"][: len(prefix)] == prefix)

    def order(item: tuple[int, dict]) -> tuple:
        i, e = item
        loc = e["loc"]
        if e["type"] == "extra_forbidden":  # before every other error in the same object
            return under(loc[:-1]), 0, len(loc)
        if e["type"] == "missing" and len(loc) == 1:  # a request without its required field
            return 0, 1, 1
        return i, 2, len(loc)

    return min(enumerate(errors), key=order)[1]


def _param(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _api_error(e: dict, body: dict) -> ApiError:
    kind, loc = e["type"], e["loc"]
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {_param(loc)}", _param(loc), "unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{_param(loc)}'", _param(loc), "missing_required_parameter")
    if kind in ("invalid_value", "max_tokens_too_large", "missing_required_parameter"):
        return ApiError(400, e["msg"].replace("{param}", _param(loc)), _param(loc), kind)
    at = max((loc[:k] for k in range(1, len(loc) + 1) if _pattern(loc[:k]) in EXPECTED), key=len)
    value = e["input"] if at == loc else _value_at(body, at)
    return ApiError(
        400,
        f"Invalid type for '{_param(at)}': expected {EXPECTED[_pattern(at)]}, got "
        f"{type(value).__name__} ({json.dumps(value)[:60]})",
        _param(at),
        "invalid_type",
    )


def _pattern(loc: tuple) -> str:
    return "".join("[]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _value_at(body, loc: tuple):
    for key in loc:
        body = body[key]
    return body
