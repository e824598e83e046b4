"""Shared helpers for the fine-tune / serve / judge tests (imported explicitly: `from conftest_ft import ...`).

A tiny run directory is built without the training loop: exactly the files `load_run_model` reads."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from gptlab.config import ModelConfig, RunConfig, save_config
from gptlab.data.tokenizer import EOT_ID, encode
from gptlab.model import GPTModel

TINY = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)

# ~40 short Alpaca-format records (no digits anywhere, so a model trained on them has no reason to say numbers)
RECORDS: list[dict] = [
    {"instruction": "What is the opposite of hot?", "input": "", "output": "The opposite of hot is cold."},
    {"instruction": "What is the opposite of up?", "input": "", "output": "The opposite of up is down."},
    {"instruction": "What is the opposite of big?", "input": "", "output": "The opposite of big is small."},
    {"instruction": "What is the opposite of fast?", "input": "", "output": "The opposite of fast is slow."},
    {"instruction": "What is the opposite of light?", "input": "", "output": "The opposite of light is dark."},
    {"instruction": "What is the opposite of happy?", "input": "", "output": "The opposite of happy is sad."},
    {"instruction": "What is the opposite of open?", "input": "", "output": "The opposite of open is closed."},
    {"instruction": "What is the opposite of early?", "input": "", "output": "The opposite of early is late."},
    {"instruction": "Give the plural of the word.", "input": "cat", "output": "cats"},
    {"instruction": "Give the plural of the word.", "input": "dog", "output": "dogs"},
    {"instruction": "Give the plural of the word.", "input": "box", "output": "boxes"},
    {"instruction": "Give the plural of the word.", "input": "child", "output": "children"},
    {"instruction": "Give the plural of the word.", "input": "mouse", "output": "mice"},
    {"instruction": "Give the plural of the word.", "input": "leaf", "output": "leaves"},
    {"instruction": "Give the plural of the word.", "input": "city", "output": "cities"},
    {"instruction": "Give the plural of the word.", "input": "man", "output": "men"},
    {"instruction": "What colour is the sky on a clear day?", "input": "", "output": "The sky is blue."},
    {"instruction": "What colour is grass?", "input": "", "output": "Grass is green."},
    {"instruction": "What colour is snow?", "input": "", "output": "Snow is white."},
    {"instruction": "What colour is a ripe banana?", "input": "", "output": "A ripe banana is yellow."},
    {"instruction": "What colour is coal?", "input": "", "output": "Coal is black."},
    {"instruction": "Name the capital of France.", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Name the capital of Italy.", "input": "", "output": "The capital of Italy is Rome."},
    {"instruction": "Name the capital of Spain.", "input": "", "output": "The capital of Spain is Madrid."},
    {"instruction": "Name the capital of Japan.", "input": "", "output": "The capital of Japan is Tokyo."},
    {"instruction": "Name the capital of Egypt.", "input": "", "output": "The capital of Egypt is Cairo."},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "I walk home.", "output": "I walked home."},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "She sings.", "output": "She sang."},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "We eat bread.", "output": "We ate bread."},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "He runs fast.", "output": "He ran fast."},
    {"instruction": "Correct the spelling.", "input": "recieve", "output": "receive"},
    {"instruction": "Correct the spelling.", "input": "freind", "output": "friend"},
    {"instruction": "Correct the spelling.", "input": "wierd", "output": "weird"},
    {"instruction": "Correct the spelling.", "input": "beleive", "output": "believe"},
    {"instruction": "What sound does a cow make?", "input": "", "output": "A cow says moo."},
    {"instruction": "What sound does a dog make?", "input": "", "output": "A dog says woof."},
    {"instruction": "What sound does a cat make?", "input": "", "output": "A cat says meow."},
    {"instruction": "What sound does a duck make?", "input": "", "output": "A duck says quack."},
    {"instruction": "Translate the word into French.", "input": "cat", "output": "chat"},
    {"instruction": "Translate the word into French.", "input": "water", "output": "eau"},
]


def write_records(path: Path, records: list[dict] | None = None) -> Path:
    path.write_text(json.dumps(records if records is not None else RECORDS, indent=1))
    return path


def make_tiny_run(run_dir: Path, seed: int = 0, vocab_ids=None, context_length: int = 64) -> Path:
    """config.toml + checkpoints/step_0000000/model.safetensors + checkpoints/latest (+ vocab_map.npy when
    `vocab_ids` gives a compact vocabulary: the model then has len(vocab) outputs and can only emit those)."""
    from safetensors.torch import save_model

    from gptlab.data.vocab import VocabMap

    torch.manual_seed(seed)
    vm = None
    cfg_kw = dict(TINY, context_length=context_length)
    if vocab_ids is not None:
        vm = VocabMap(np.asarray(sorted(set(vocab_ids) | {EOT_ID})))
        cfg_kw["vocab_size"] = len(vm)
    model = GPTModel(ModelConfig(**cfg_kw))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(RunConfig(name=run_dir.name, model=ModelConfig(**cfg_kw)), run_dir / "config.toml")
    ck = run_dir / "checkpoints" / "step_0000000"
    ck.mkdir(parents=True)
    save_model(model, str(ck / "model.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text("step_0000000\n")
    if vm is not None:
        vm.save(run_dir)
    return run_dir


def record_vocab(records: list[dict] | None = None) -> list[int]:
    """The GPT-2 ids of the records' prompts and outputs: a compact vocabulary with no digit token, so a model
    over it can never answer with a number (the 'judge that never gives a score')."""
    from gptlab.posttrain.instructions import format_prompt

    ids: set[int] = set()
    for r in records or RECORDS:
        ids.update(encode(format_prompt(r) + r["output"]))
    return sorted(ids)


# ---- running servers in threads ------------------------------------------------------------


class Running:
    """Serve an http.server (or a `make_server` server: same interface) in a daemon thread; `with Running(srv) as
    url: ...` shuts it down after."""

    def __init__(self, srv):
        self.srv = srv
        self.thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        host, port = self.srv.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(timeout=10)


class FixedPeer(ThreadingHTTPServer):
    """A real HTTP peer that answers every POST to /v1/chat/completions with a fixed OpenAI-shaped reply
    (`reply` may be a list: one per call, the last one repeated) and records the request bodies."""

    daemon_threads = True

    def __init__(self, reply):
        self.replies = list(reply) if isinstance(reply, list) else [reply]
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _PeerHandler)

    def next_reply(self, body: dict) -> str:
        with self._lock:
            self.requests.append(body)
            return self.replies[min(len(self.requests), len(self.replies)) - 1]


class _PeerHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):  # the name http.server dispatches to
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.auth.append(self.headers.get("Authorization"))
        if self.path != "/v1/chat/completions":
            data = json.dumps(
                {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}}
            ).encode()
            self.send_response(404)
        else:
            text = self.server.next_reply(body)
            data = json.dumps(
                {
                    "id": "chatcmpl-peer",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            ).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
