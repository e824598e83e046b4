"""The LLM judge over real HTTP: our own `gptlab serve` as the judge (a tiny model that never says a number:
every item ends unparsed after the retries), and small stdlib peers that answer like a real judge
("Score: 85", {"A": 70, "B": 40}) so the numeric paths, the SQLite records and the label mapping are checked."""

import json
import re
import threading

import pytest
from conftest_ft import (
    RECORDS,
    FixedPeer,
    Running,
    make_tiny_run,
    record_vocab,
    write_records,
)

from gptlab import GptlabError
from gptlab.cli.posttrain import register as register_cli
from gptlab.data.tokenizer import decode
from gptlab.experiments.results import ResultsDB
from gptlab.posttrain.finetune import finetune
from gptlab.posttrain.judge import (
    chat_url,
    compare_order,
    judge_compare,
    judge_run,
    parse_compare,
    parse_score,
    score_prompt,
)
from gptlab.posttrain.serve import make_server


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A fine-tuned tiny run (compact vocabulary) with a held-out test split of 4 records."""
    d = tmp_path_factory.mktemp("judge")
    base = make_tiny_run(d / "base", vocab_ids=record_vocab())
    finetune(base, write_records(d / "data.json"), d / "sft", epochs=1, lr=5e-3, progress=False)
    return d / "sft"


@pytest.fixture(scope="module")
def own_judge(tmp_path_factory):
    """`gptlab serve` of a tiny model whose vocabulary has no digit token: it can never answer with a score.
    Context 512 so the book's scoring prompt fits."""
    assert not any(ch.isdigit() for i in record_vocab() for ch in decode([i]))
    run = make_tiny_run(tmp_path_factory.mktemp("own") / "judge", seed=5, vocab_ids=record_vocab(), context_length=512)
    with Running(make_server(run, port=0, model_name="tiny-judge", device="cpu")) as u:
        yield u


def test_parse_score():
    assert parse_score("85") == 85
    assert parse_score("Score: 85") == 85
    assert parse_score("**92**/100") == 92
    assert parse_score("I would give it 100.") == 100
    assert parse_score("7.5") == 7.5
    assert parse_score("It is 2024; score 40") == 40  # out-of-range numbers are skipped
    assert parse_score("-5 then 0") == 0
    for bad in ("", None, "excellent", "v2 of 300", "GPT"):
        assert parse_score(bad) is None


def test_parse_compare():
    assert parse_compare('{"A": 70, "B": 40}', ["A", "B"]) == {"A": 70, "B": 40}
    assert parse_compare('Sure!\n```json\n{"Response A": "70", "response b": 40.5}\n```', ["A", "B"]) == {
        "A": 70,
        "B": 40.5,
    }
    assert parse_compare("{'A': 10, 'B': 20}", ["A", "B"]) == {"A": 10, "B": 20}  # fallback for Python dicts
    assert parse_compare('{"A": 70} and later {"A": 1, "B": 2}', ["A", "B"]) == {"A": 1, "B": 2}
    for bad in ('{"A": 70}', '{"A": 170, "B": 3}', "no idea", '{"A": "good", "B": 4}', None):
        assert parse_compare(bad, ["A", "B"]) is None


def test_chat_url():
    assert chat_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    with pytest.raises(GptlabError, match="judge_url"):
        chat_url("localhost:8000")


def test_own_server_as_judge_gives_unparsed_scores(sft, own_judge, tmp_path):
    db = tmp_path / "results.sqlite"
    res = judge_run(
        sft,
        own_judge + "/v1",
        "tiny-judge",
        n=3,
        max_new_tokens=8,
        retries=1,
        db=db,
        judge_max_tokens=4,
        api_key_env=None,
        progress=False,
    )
    assert (res["n"], res["n_parsed"], res["n_unparsed"], res["mean_score"]) == (3, 0, 3, None)
    assert res["judge_calls"] == 3 * 2  # each item asked 1 + retries times
    assert all(it["score"] is None and it["attempts"] == 2 for it in res["items"])
    test = json.loads((sft / "test_data.json").read_text())
    assert [it["instruction"] for it in res["items"]] == [r["instruction"] for r in test[:3]]
    assert json.loads((sft / "judge.json").read_text())["n_unparsed"] == 3
    with ResultsDB(db) as rdb:
        rows = rdb.judge_items("sft", "tiny-judge")
        assert [r["score"] for r in rows] == [None, None, None]
        assert rdb.judge_summary() == {}  # nothing parsed


def test_numeric_judge_scores_are_stored(sft, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-judge-secret")
    peer = FixedPeer(["no idea", "Score: 85"])  # the first item needs one retry
    db = tmp_path / "results.sqlite"
    with Running(peer) as u:
        res = judge_run(
            sft,
            u + "/v1",
            "peer-judge",
            max_new_tokens=8,
            db=db,
            run_id="sft-a",
            api_key_env="MY_JUDGE_KEY",
            progress=False,
            concurrency=1,
        )
    assert res["n"] == 4 and res["n_parsed"] == 4 and res["mean_score"] == 85
    assert [it["attempts"] for it in res["items"]] == [2, 1, 1, 1]
    # the book's prompt, verbatim, for the model's own answer; greedy judge; the key as a Bearer token
    test = json.loads((sft / "test_data.json").read_text())
    first = peer.requests[0]
    assert first["model"] == "peer-judge" and first["temperature"] == 0.0
    assert first["messages"] == [{"role": "user", "content": score_prompt(test[0], res["items"][0]["response"])}]
    assert first["messages"][0]["content"].startswith("Given the input `Below is an instruction")
    assert first["messages"][0]["content"].endswith("Respond with the integer number only.")
    assert set(peer.auth) == {"Bearer sk-judge-secret"}
    assert "sk-judge-secret" not in (sft / "judge.json").read_text()
    with ResultsDB(db) as rdb:
        assert [r["score"] for r in rdb.judge_items("sft-a", "peer-judge")] == [85.0] * 4
        assert rdb.judge_summary("peer-judge") == {"sft-a": 85.0}
    # answers are deterministic: a second judging sees the same responses
    peer2 = FixedPeer("90")
    with Running(peer2) as u:
        again = judge_run(sft, u, "peer-judge", max_new_tokens=8, progress=False, api_key_env=None)
    assert [it["response"] for it in again["items"]] == [it["response"] for it in res["items"]]
    assert peer2.auth == [None] * 4


class TogetherPeer(FixedPeer):
    """Holds every request until `n` are in flight at once (a barrier), then scores each by its answer's
    reference: a judge that sees its requests one at a time breaks the barrier and answers 500."""

    def __init__(self, n: int, timeout: float = 20):
        super().__init__("")
        self.barrier = threading.Barrier(n, timeout=timeout)

    def next_reply(self, body: dict) -> str:
        super().next_reply(body)
        self.barrier.wait()  # BrokenBarrierError -> the handler fails -> the client sees no answer
        prompt = body["messages"][0]["content"]
        return str(next(len(r["output"]) for r in RECORDS if f"`{r['output']}`" in prompt))


def test_judge_requests_are_concurrent_and_keep_item_order(sft):
    """--concurrency 4: four requests are in flight at once (else the peer's barrier breaks), and each item
    gets its own score back whatever order the replies came in."""
    test = json.loads((sft / "test_data.json").read_text())
    with Running(TogetherPeer(4)) as u:
        res = judge_run(
            sft, u, "peer", max_new_tokens=4, retries=0, timeout=30, progress=False, api_key_env=None, concurrency=4
        )
    assert [it["score"] for it in res["items"]] == [len(r["output"]) for r in test]
    assert res["judge_calls"] == 4
    with pytest.raises(GptlabError, match="concurrency: expected a positive number"):
        judge_run(sft, u, "peer", concurrency=0, progress=False)


def test_compare_maps_labels_back_to_models(tmp_path):
    runs = {
        "m1": make_tiny_run(tmp_path / "m1", seed=1, vocab_ids=record_vocab()),
        "m2": make_tiny_run(tmp_path / "m2", seed=2, vocab_ids=record_vocab()),
    }
    data = write_records(tmp_path / "data.json")
    peer = FixedPeer('Here you go: {"A": 70, "B": 40}')
    db = tmp_path / "results.sqlite"
    with Running(peer) as u:
        res = judge_compare(
            runs,
            u + "/v1",
            "peer-judge",
            data_file=data,
            n=8,
            max_new_tokens=6,
            seed=123,
            db=db,
            out=tmp_path / "compare.json",
            api_key_env=None,
            progress=False,
        )
    assert res["n"] == 8 and res["n_unparsed"] == 0 and len(peer.requests) == 8
    orders = [compare_order(["m1", "m2"], 123, i) for i in range(8)]
    assert {tuple(o) for o in orders} == {("m1", "m2"), ("m2", "m1")}  # both positions are used
    for i, (it, order) in enumerate(zip(res["items"], orders, strict=True)):
        assert it["labels"] == {"A": order[0], "B": order[1]}
        assert it["scores"] == {order[0]: 70.0, order[1]: 40.0}
        # the text the judge saw under each label is that model's answer (requests arrive in any order)
        (prompt,) = [p for r in peer.requests if f"`{RECORDS[i]['output']}`" in (p := r["messages"][0]["content"])]
        shown = dict(re.findall(r"Response ([AB]): `(.*?)`\n", prompt + "\n", flags=re.S))
        assert shown == {lb: it["responses"][nm] for lb, nm in it["labels"].items()}
        assert it["instruction"] == RECORDS[i]["instruction"]
    for nm in runs:
        expect = [70.0 if o[0] == nm else 40.0 for o in orders]
        assert res["models"][nm]["mean_score"] == pytest.approx(sum(expect) / 8)
    assert json.loads((tmp_path / "compare.json").read_text())["models"] == res["models"]
    with ResultsDB(db) as rdb:
        assert rdb.judge_summary("peer-judge [compare]") == pytest.approx(
            {nm: res["models"][nm]["mean_score"] for nm in runs}
        )
    # seeded: the same call gives the same orders
    assert [compare_order(["m1", "m2"], 123, i) for i in range(8)] == orders


def test_compare_against_own_server_is_unparsed(sft, own_judge, tmp_path):
    other = make_tiny_run(tmp_path / "other", seed=3, vocab_ids=record_vocab())
    res = judge_compare(
        {"sft": sft, "other": other},
        own_judge,
        "tiny-judge",
        data_file=sft / "test_data.json",
        n=2,
        max_new_tokens=4,
        retries=0,
        judge_max_tokens=4,
        api_key_env=None,
        progress=False,
    )
    assert res["n_unparsed"] == 2 and all(m["mean_score"] is None for m in res["models"].values())


def test_judge_errors(sft, tmp_path, monkeypatch):
    base = make_tiny_run(tmp_path / "base", vocab_ids=record_vocab())
    with pytest.raises(GptlabError, match="no held-out test split"):
        judge_run(base, "http://127.0.0.1:9/v1", "j", progress=False)
    with pytest.raises(GptlabError, match="no answer after 1 attempt"):  # nothing listens on port 9
        judge_run(sft, "http://127.0.0.1:9/v1", "j", n=1, max_new_tokens=2, retries=0, timeout=5, progress=False)
    with pytest.raises(GptlabError, match="at least two runs"):
        judge_compare({"a": sft}, "http://127.0.0.1:9", "j")
    # a judge that wants a key we do not have: HTTP 401 stops at once, with the server's message
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    locked = make_tiny_run(tmp_path / "locked", vocab_ids=record_vocab(), context_length=512)
    with Running(make_server(locked, port=0, api_key="sk-other", device="cpu")) as u:
        with pytest.raises(GptlabError, match="HTTP 401: Missing or incorrect API key"):
            judge_run(sft, u, "j", n=1, max_new_tokens=2, progress=False)


def test_cli_verbs(sft, tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="verb", required=True)
    register_cli(sub)
    peer = FixedPeer('{"A": 60, "B": 50}')
    with Running(peer) as u:
        a = p.parse_args(
            [
                "judge",
                str(sft),
                "--judge-url",
                u,
                "--judge-model",
                "j",
                "--n",
                "1",
                "--max-new-tokens",
                "2",
                "--quiet",
                "--db",
                str(tmp_path / "r.sqlite"),
            ]
        )
        assert a.fn(a) == 0
        assert "mean score 60.0 / 100 over 1 item(s)" in capsys.readouterr().out
        a = p.parse_args(
            [
                "judge-compare",
                f"x={sft}",
                f"y={sft}",
                "--judge-url",
                u,
                "--judge-model",
                "j",
                "--n",
                "2",
                "--max-new-tokens",
                "2",
                "--quiet",
                "--json",
            ]
        )
        assert a.fn(a) == 0
        out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and set(out["models"]) == {"x", "y"}
    # --concurrency reaches judge-compare: one request at a time never gets a peer that waits for two
    with Running(TogetherPeer(2, timeout=3)) as u:
        a = p.parse_args(
            [
                "judge-compare",
                f"x={sft}",
                f"y={sft}",
                "--judge-url",
                u,
                "--judge-model",
                "j",
                "--n",
                "2",
                "--max-new-tokens",
                "2",
                "--quiet",
                "--retries",
                "0",
                "--concurrency",
                "1",
            ]
        )
        with pytest.raises(GptlabError, match="no answer after 1 attempt"):
            a.fn(a)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"choices": ' + b"[" * 100_000])
def test_a_deeply_nested_judge_reply_is_one_line(raw):
    from gptlab.posttrain.judge.client import _reply_text

    with pytest.raises(GptlabError, match=r"^judge http://j: the reply is not an OpenAI chat completion"):
        _reply_text(raw, "http://j")
