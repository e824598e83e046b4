"""The server through the official `openai` Python client on 127.0.0.1: models, completions and chat (whole and
streamed), stop strings, seeds, top_p, the client's own exception types for errors, and concurrent requests
(batched by the server) answered as they are alone."""

import threading

import openai
import pytest
from conftest_ft import Running, make_tiny_run
from openai import OpenAI

from gptlab.data.tokenizer import encode
from gptlab.posttrain.generate import generate_text
from gptlab.posttrain.instructions import format_prompt
from gptlab.posttrain.serve import make_server
from gptlab.train import load_run_model

KEY = "sk-test-openai-client-0123456789"
MSGS = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("serve-openai") / "tiny")


@pytest.fixture(scope="module")
def server(run):
    srv = make_server(
        run,
        port=0,
        api_key=KEY,
        max_tokens_limit=256,
        model_name="tiny-sft",
        device="cpu",
        max_batch=8,
        batch_wait_ms=5,
    )
    with Running(srv) as u:
        yield srv, u


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models(client):
    assert [m.id for m in client.models.list()] == ["tiny-sft"]
    assert client.models.retrieve("tiny-sft").owned_by == "gptlab"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found" and e.value.param == "model"


def test_completion_and_its_stream(client, run):
    prompt = "The opposite of hot is"
    done = client.completions.create(model="tiny-sft", prompt=prompt, max_tokens=8, temperature=0)
    model, _ = load_run_model(run, "cpu")
    assert done.choices[0].text == generate_text(model, prompt, 8, temperature=0.0)
    assert done.usage.prompt_tokens == len(encode(prompt)) and done.usage.completion_tokens > 0
    chunks = list(
        client.completions.create(
            model="tiny-sft",
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    assert chunks[-2].choices[0].finish_reason == done.choices[0].finish_reason


def test_chat_and_its_stream(client):
    done = client.chat.completions.create(model="tiny-sft", messages=MSGS, max_tokens=7, temperature=0)
    msg = done.choices[0].message
    assert msg.role == "assistant"
    same = client.completions.create(
        model="tiny-sft",
        prompt=format_prompt({"instruction": "Name a colour.", "input": ""}),
        max_tokens=7,
        temperature=0,
    )
    assert msg.content == same.choices[0].text
    chunks = list(
        client.chat.completions.create(model="tiny-sft", messages=MSGS, max_tokens=7, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason


def test_stop_seed_and_top_p(client):
    full = client.completions.create(model="tiny-sft", prompt="The", max_tokens=12, temperature=0).choices[0].text
    assert len(full) > 6
    stop = full[3:5]
    cut = client.completions.create(model="tiny-sft", prompt="The", max_tokens=12, temperature=0, stop=[stop]).choices[
        0
    ]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    seeded = dict(model="tiny-sft", prompt="Hello", max_tokens=10, temperature=1.0, seed=3)
    a, b = (client.completions.create(**seeded).choices[0].text for _ in range(2))
    assert a == b
    greedy = client.completions.create(model="tiny-sft", prompt="Hello", max_tokens=10, temperature=0).choices[0].text
    assert a != greedy
    assert client.completions.create(**seeded, top_p=0.0).choices[0].text == greedy


def test_errors_are_the_clients_exception_types(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-sft", prompt="x", temperature=3)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-sft", messages=[{"role": "system", "content": "x"}])
    assert "no user message" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-sft", prompt="x", max_tokens=257)
    assert e.value.param == "max_tokens" and "at most 256" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-sft", prompt="word " * 80)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-sft", prompt="x", extra_body={"bogus": 1})
    assert e.value.code == "unknown_parameter" and e.value.param == "bogus"
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing", cast_to=object)
    bad = OpenAI(base_url=server[1] + "/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model="tiny-sft", prompt="x")
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_concurrent_clients_get_the_answers_they_get_alone(server, client):
    """12 threads at once (whole and streamed, different prompts and lengths) through the batcher: each text is
    the one the same request gets alone."""
    srv, _ = server
    jobs = [(f"Item {i}: the" + " very" * (i % 5), 2 + 3 * i, i % 3 == 0) for i in range(12)]

    def ask(prompt, n, stream):
        if stream:
            return "".join(
                c.choices[0].text
                for c in client.completions.create(
                    model="tiny-sft", prompt=prompt, max_tokens=n, temperature=0, stream=True
                )
            )
        return client.completions.create(model="tiny-sft", prompt=prompt, max_tokens=n, temperature=0).choices[0].text

    alone = [ask(*j) for j in jobs]
    before = srv.batcher.batch_sizes.copy()
    got: dict[int, str] = {}
    with srv.lock:  # hold the model so that the requests queue up and are batched when it frees
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ask(*jobs[i]))) for i in range(12)]
        for t in threads:
            t.start()
        while srv.batcher.waiting < 11 and all(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
    for t in threads:
        t.join(timeout=60)
    assert [got[i] for i in range(12)] == alone
    grown = srv.batcher.batch_sizes - before
    assert max(grown) == 8 and sum(k * v for k, v in grown.items()) == 12  # batches of up to --max-batch
