"""The OpenAI-compatible server over real HTTP (urllib) on 127.0.0.1: models, completions, chat, SSE streaming,
stop strings, seeds, top_p, every 4xx case, the API key (and that it never reaches the logs), dynamic batching
(a request answered inside a batch gets what it gets alone), responsiveness, /docs. The official client's view is
in test_serve_openai.py."""

import json
import logging
import time
import urllib.error
import urllib.request

import pytest
from conftest_ft import Running, make_tiny_run, record_vocab

from gptlab import GptlabError
from gptlab.data.tokenizer import encode
from gptlab.posttrain.generate import generate_text
from gptlab.posttrain.instructions import format_prompt
from gptlab.posttrain.serve import make_server
from gptlab.train import load_run_model

KEY = "sk-test-0123456789abcdef-SECRET"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("serve") / "tiny")  # full GPT-2 vocabulary, context 64


@pytest.fixture(scope="module")
def server(run):
    srv = make_server(run, port=0, max_tokens_limit=512, model_name="tiny-sft", device="cpu")
    with Running(srv) as u:
        yield srv, u


@pytest.fixture(scope="module")
def url(server):
    return server[1]


def call(url, path, body=None, method=None, key=None, raw: bytes | None = None, headers=None):
    """(status, parsed JSON body or raw text, response headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text, hdrs = r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        status, text, hdrs = e.code, e.read().decode(), e.headers
    try:
        return status, json.loads(text), hdrs
    except json.JSONDecodeError:
        return status, text, hdrs


def sse(text: str) -> list:
    """Parse a text/event-stream body into its data payloads (JSON objects, or the string "[DONE]")."""
    assert text.endswith("\n\n")
    out = []
    for event in text.strip("\n").split("\n\n"):
        assert event.startswith("data: "), event
        payload = event[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_models(url):
    status, body, _ = call(url, "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-sft"] and body["data"][0]["context_length"] == 64
    assert call(url, "/v1/models/tiny-sft")[1]["id"] == "tiny-sft"
    assert call(url, "/v1/models/other")[0] == 404
    assert call(url, "/health")[1]["status"] == "ok"


def test_completion_matches_generate_text(url, run):
    prompt = "The opposite of hot is"
    status, body, _ = call(
        url, "/v1/completions", {"model": "tiny-sft", "prompt": prompt, "max_tokens": 6, "temperature": 0}
    )
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "tiny-sft"
    choice = body["choices"][0]
    model, _ = load_run_model(run, "cpu")
    assert choice["text"] == generate_text(model, prompt, 6, temperature=0.0)  # greedy, same as `gptlab generate`
    u = body["usage"]
    assert (
        u["prompt_tokens"] == len(encode(prompt)) and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    )
    assert (choice["finish_reason"], u["completion_tokens"]) in (("length", 6),) or choice["finish_reason"] == "stop"
    # token-id prompts are accepted too
    assert (
        call(url, "/v1/completions", {"prompt": encode(prompt), "max_tokens": 6, "temperature": 0})[1]["choices"][0][
            "text"
        ]
        == choice["text"]
    )


def text_of(url, body) -> str:
    return call(url, "/v1/completions", body)[1]["choices"][0]["text"]


def test_seed_makes_sampling_reproducible_and_top_p_is_applied(url):
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 1.0, "top_k": 50, "seed": 7}
    a, b = text_of(url, body), text_of(url, body)
    assert a == b
    greedy = text_of(url, {"prompt": "Hello", "max_tokens": 8, "temperature": 0})
    assert a != greedy
    status, c, hdrs = call(url, "/v1/completions", dict(body, top_p=1e-6))  # only the most likely token
    assert status == 200 and c["choices"][0]["text"] == greedy
    assert "warnings" not in c and "X-Gptlab-Warning" not in hdrs
    assert text_of(url, dict(body, top_p=1)) == a


def test_chat_uses_the_book_template(url):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    status, body, _ = call(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 5, "temperature": 0})
    assert status == 200 and body["object"] == "chat.completion"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    prompt = format_prompt({"instruction": "Be brief.\n\nName a colour.", "input": ""})
    same = call(url, "/v1/completions", {"prompt": prompt, "max_tokens": 5, "temperature": 0})[1]
    assert msg["content"] == same["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == len(encode(prompt))
    # earlier turns are ignored; content parts are joined
    multi = [
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "reply"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]},
    ]
    assert (
        call(url, "/v1/chat/completions", {"messages": multi, "max_tokens": 5, "temperature": 0})[1]["choices"][0][
            "message"
        ]["content"]
        == msg["content"]
    )


def test_streaming_completion_and_chat(url):
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    plain = call(url, "/v1/completions", body)[1]
    status, text, hdrs = call(url, "/v1/completions", dict(body, stream=True, stream_options={"include_usage": True}))
    assert status == 200 and hdrs["Content-Type"] == "text/event-stream"
    events = sse(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)

    msgs = [{"role": "user", "content": "Name a colour."}]
    plain = call(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 7, "temperature": 0})[1]
    events = sse(
        call(url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 7, "temperature": 0, "stream": True})[1]
    )
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    assert "".join(d.get("content", "") for d in deltas) == plain["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_stop_strings(url):
    body = {"prompt": "The", "max_tokens": 12, "temperature": 0}
    full = call(url, "/v1/completions", body)[1]["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:5]
    cut = full[: full.find(stop)]
    got = call(url, "/v1/completions", dict(body, stop=[stop, "\u2603never"]))[1]
    assert got["choices"][0]["text"] == cut and got["choices"][0]["finish_reason"] == "stop"
    events = sse(call(url, "/v1/completions", dict(body, stop=stop, stream=True))[1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == cut
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def _err(status_body, status, param=None, match=None):
    st, body, _ = status_body
    assert st == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    if match:
        assert match in err["message"]
    return err


def test_4xx_errors_in_openai_shape(url):
    _err(call(url, "/v1/completions", raw=b"{not json"), 400, match="parse the JSON")
    _err(call(url, "/v1/completions", raw=b"[1, 2]"), 400, match="must be an object")
    _err(
        call(url, "/v1/completions", {"prompt": "x", "frequency_penalty": 1}),
        400,
        "frequency_penalty",
        "frequency_penalty",
    )
    _err(call(url, "/v1/completions", {"prompt": "x", "max_tokens": "5"}), 400, "max_tokens")
    _err(call(url, "/v1/completions", {"prompt": "x", "temperature": True}), 400, "temperature")
    _err(call(url, "/v1/completions", {"prompt": "x", "stream": "yes"}), 400, "stream")
    _err(call(url, "/v1/completions", {"prompt": 5}), 400, "prompt")
    _err(call(url, "/v1/completions", {"max_tokens": 3}), 400, "prompt")
    _err(call(url, "/v1/completions", {"prompt": "x", "max_tokens": 513}), 400, "max_tokens", "at most 512")
    long_prompt = "word " * 80  # > 64 tokens
    assert (
        _err(call(url, "/v1/completions", {"prompt": long_prompt}), 400, "prompt")["code"] == "context_length_exceeded"
    )
    _err(call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}]}), 400, "messages")
    _err(call(url, "/v1/chat/completions", {"messages": "hi"}), 400, "messages")
    _err(call(url, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}), 400, "messages[0].role")
    _err(
        call(url, "/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}),
        400,
        "messages",
        "no user message",
    )
    _err(
        call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tone": 1}]}),
        400,
        "messages[0].tone",
    )
    _err(call(url, "/v1/chat/completions", {"prompt": "x"}), 400, "prompt")
    assert _err(call(url, "/v1/completions", raw=b" " * ((1 << 20) + 1)), 413)["code"] == "request_too_large"
    _err(call(url, "/v1/nothing"), 404)
    _err(call(url, "/v1/completions"), 405)
    _err(call(url, "/v1/models", {"x": 1}), 405)
    _err(call(url, "/v1/models", method="DELETE"), 405)
    # the server still works after all that
    assert call(url, "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200


def test_api_key_required_and_never_logged(run, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    srv = make_server(run, port=0, api_key=KEY, device="cpu")
    bodies = []
    with Running(srv) as u:
        for key in (None, "wrong-key", KEY + "x"):
            err = _err(call(u, "/v1/models", key=key), 401)
            bodies.append(json.dumps(err))
            _err(call(u, "/v1/completions", {"prompt": "x"}, key=key), 401)
        assert call(u, "/v1/models", key=KEY)[0] == 200
        status, body, _ = call(u, "/v1/completions", {"prompt": "x", "max_tokens": 2}, key=KEY)
        assert status == 200
        bodies.append(json.dumps(body))
        assert call(u, "/health")[0] == 200  # health checks need no key, nor the API docs
        assert call(u, "/openapi.json")[0] == 200
        _err(call(u, "/v1/nothing"), 401)  # the key is checked before the route
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "POST /v1/completions" in caplog.text  # requests are logged ...
    assert KEY not in logged and "wrong-key" not in logged  # ... keys never
    assert not any(KEY in b or "wrong-key" in b for b in bodies)


BATCHED = [  # (path, body): prompts and lengths differ; greedy and seeded; plain, streamed, with a stop string
    ("/v1/completions", {"prompt": "The", "max_tokens": 20, "temperature": 0}),
    (
        "/v1/completions",
        {"prompt": "What is the opposite of hot? The opposite of hot is", "max_tokens": 3, "temperature": 0},
    ),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": True}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 9, "temperature": 0},
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 15,
            "temperature": 0,
            "stream": True,
        },
    ),
    ("/v1/completions", {"prompt": "A duck says", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 11}),
    ("/v1/completions", {"prompt": "The", "max_tokens": 20, "temperature": 0, "stop": ["e"]}),
]


def answer(url, path, body) -> tuple[str, str | None, int | None]:
    """(text, finish_reason, completion_tokens) of a whole or streamed request."""
    status, got, _ = call(url, path, body)
    assert status == 200, got
    if not body.get("stream"):
        c = got["choices"][0]
        return (
            c["message"]["content"] if "message" in c else c["text"],
            c["finish_reason"],
            got["usage"]["completion_tokens"],
        )
    events = sse(got)[:-1]
    text = "".join(
        e["choices"][0]["delta"].get("content", "") if "delta" in e["choices"][0] else e["choices"][0]["text"]
        for e in events
    )
    return text, events[-1]["choices"][0]["finish_reason"], None


def test_requests_answered_in_one_batch_get_what_they_get_alone(server):
    """Requests queued while the model is busy (its lock held, as during a long generation) are decoded as one
    batch when it frees; each, greedy or seeded, whole or streamed, gets exactly the answer it gets alone.
    Meanwhile /v1/models still answers."""
    from concurrent.futures import ThreadPoolExecutor

    srv, url = server
    alone = [answer(url, path, body) for path, body in BATCHED]
    assert len({a[2] for a in alone if a[2] is not None}) > 2  # the rows really end at different steps
    before = srv.batcher.batch_sizes.copy()
    with ThreadPoolExecutor(len(BATCHED)) as pool:
        with srv.lock:
            futures = [pool.submit(answer, url, path, body) for path, body in BATCHED]
            deadline = time.time() + 30
            while srv.batcher.waiting < len(BATCHED) - 1 and time.time() < deadline:  # one is taken, waiting
                time.sleep(0.01)  # for the lock
            status, models, _ = call(url, "/v1/models")
            assert status == 200 and models["data"][0]["id"] == "tiny-sft"
            assert not any(f.done() for f in futures)
        together = [f.result(timeout=60) for f in futures]
    assert srv.batcher.batch_sizes - before == {len(BATCHED): 1}  # one batch held them all
    assert together == alone


def test_max_batch_one_decodes_one_request_at_a_time(run):
    from concurrent.futures import ThreadPoolExecutor

    srv = make_server(run, port=0, device="cpu", max_batch=1)
    with Running(srv) as u, ThreadPoolExecutor(4) as pool:
        with srv.lock:
            futures = [pool.submit(answer, u, path, body) for path, body in BATCHED[:4]]
            deadline = time.time() + 30
            while srv.batcher.waiting < 3 and time.time() < deadline:
                time.sleep(0.01)
        assert [f.result(timeout=60) for f in futures] == [answer(u, path, body) for path, body in BATCHED[:4]]
    assert srv.batcher.batch_sizes == {1: 8}


def test_docs_and_openapi(url):
    status, spec, _ = call(url, "/openapi.json")
    assert status == 200 and {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(spec["paths"])
    body = spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "max_tokens", "top_p", "stream_options"} <= set(body["properties"])
    assert "Message" in spec["components"]["schemas"]  # the chat request's nested model resolves
    status, html, _ = call(url, "/docs")
    assert status == 200 and "swagger" in html.lower()


def test_compact_vocabulary_run(tmp_path):
    run = make_tiny_run(tmp_path / "compact", vocab_ids=record_vocab())
    srv = make_server(run, port=0, device="cpu")
    with Running(srv) as u:
        body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        plain = call(u, "/v1/completions", body)[1]
        text = plain["choices"][0]["text"]
        vocab = set(record_vocab())
        assert set(encode(text)) <= vocab  # decoded through the vocabulary map
        events = sse(call(u, "/v1/completions", dict(body, stream=True))[1])
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == text
        assert plain["usage"]["prompt_tokens"] == len(encode(body["prompt"]))


def test_bad_server_arguments(run, tmp_path):
    with pytest.raises(GptlabError, match="not a run directory"):
        make_server(tmp_path, port=0)
    with pytest.raises(GptlabError, match="max_tokens_limit"):
        make_server(run, port=0, max_tokens_limit=0)
    with pytest.raises(GptlabError, match="empty key"):
        make_server(run, port=0, api_key="  ")
    with pytest.raises(GptlabError, match="max_batch"):
        make_server(run, port=0, max_batch=0)
    with pytest.raises(GptlabError, match="batch_wait_ms"):
        make_server(run, port=0, batch_wait_ms=-1)


def test_bounded_load_mixed_requests(server):
    """200 requests, 16 at a time, to the real server on 127.0.0.1: valid, malformed and oversized mixed.
    Every valid one is answered 200, every bad one gets a 4xx, the server is alive after, memory stays bounded."""
    import resource
    from concurrent.futures import ThreadPoolExecutor

    _, url = server
    kinds = ["valid_completion", "valid_chat", "bad_json", "unknown_field", "too_many_tokens", "oversized"]

    def one(i):
        kind = kinds[i % len(kinds)]
        if kind == "valid_completion":
            return kind, call(url, "/v1/completions", {"prompt": f"Hello {i}", "max_tokens": 3, "seed": i})[0]
        if kind == "valid_chat":
            return kind, call(
                url,
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 3},
            )[0]
        if kind == "bad_json":
            return kind, call(url, "/v1/completions", raw=b'{"prompt": "x", ')[0]
        if kind == "unknown_field":
            return kind, call(url, "/v1/completions", {"prompt": "x", "max_tokens": 2, "bogus": 1})[0]
        if kind == "too_many_tokens":
            return kind, call(url, "/v1/completions", {"prompt": "x", "max_tokens": 100_000})[0]
        return kind, call(url, "/v1/completions", raw=b'{"prompt": "' + b"a" * (2 << 20) + b'"}')[0]

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    valid = [s for k, s in results if k.startswith("valid")]
    bad = [s for k, s in results if not k.startswith("valid")]
    assert len(results) == 200 and valid and bad
    assert all(s == 200 for s in valid), sorted(set(valid))
    assert all(400 <= s < 500 for s in bad), sorted(set(bad))
    assert call(url, "/v1/models")[0] == 200  # alive
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 512, grown_mib  # oversized bodies are not buffered whole, threads do not pile up


def test_cli_serve_passes_the_batching_options_and_stops_on_ctrl_c(run):
    """`gptlab serve` as a process: --max-batch and --batch-wait-ms reach the server (its /health says so), and
    SIGINT stops it cleanly (exit 0, no traceback)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import gptlab

    env = dict(os.environ, PYTHONPATH=str(Path(gptlab.__file__).parents[1]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from gptlab.cli import main; raise SystemExit(main())",
            "serve",
            str(run),
            "--port",
            "0",
            "--device",
            "cpu",
            "--max-batch",
            "3",
            "--batch-wait-ms",
            "2",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if m := re.search(r"at (http://\S+)/v1", line):
                break
        assert m, "".join(lines)
        assert "batches of up to 3" in line
        health = call(m.group(1), "/health")[1]
        assert health["status"] == "ok" and health["max_batch"] == 3 and health["batch_wait_ms"] == 2
        assert call(m.group(1), "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "Traceback" not in "".join(lines) + rest


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(max_batch=True), "max_batch"),
        (dict(max_tokens_limit=True), "max_tokens_limit"),
        (dict(port=70000), "port"),
        (dict(max_batch=5000), "max_batch"),
        (dict(host=8000), "host"),
        (dict(max_batch_size=4), "max_batch_size"),
    ],
)
def test_server_settings_are_checked_against_their_declaration(run, bad, field):
    """One declaration (posttrain/settings.py) for the CLI and the library: a boolean is not a count, a port is
    in [0, 65535], the CLI's upper bounds hold here too, and an unknown name is refused, each as one line."""
    with pytest.raises(GptlabError, match=rf"^serve: {field}: ") as e:
        make_server(run, device="cpu", **dict(dict(port=0), **bad))
    assert "\n" not in str(e.value)


def test_server_from_a_settings_object_and_set_overrides(run):
    from gptlab.posttrain.settings import ServeSettings

    srv = make_server(run, ServeSettings(port=0, device="cpu", max_batch=2), overrides=["batch_wait_ms=3"])
    with Running(srv) as u:
        health = call(u, "/health")[1]
    assert health["max_batch"] == 2 and health["batch_wait_ms"] == 3


def test_cli_serve_set_is_checked(run, capsys):
    from gptlab.cli import main

    assert main(["serve", str(run), "--device", "cpu", "--port", "0", "--set", "max_batch=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gptlab: error: serve: max_batch: must be >= 1, got 0", err
