"""Hostile and damaged inputs: each gives one line naming what is wrong (or a 400 from the server), never a
traceback, and every "how many" option has an upper bound. Through the CLI (in-process `main`, or a subprocess
where the process's own streams matter) and the real server on 127.0.0.1."""

import http.client
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_overrides
from conftest_ft import Running, make_tiny_run, write_records

from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.experiments.results import ResultsDB
from gptlab.experiments.run.session import claim_experiment_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")


def gptlab(*argv, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *argv],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": SRC, **env},
        timeout=300,
    )


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("gptlab: error: "), err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("hostile") / "tiny")


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A finished tiny training run (12 steps, checkpoints every 4) and the argv that trains it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "--run-dir", str(run_dir), "--quiet"]
    for o in tiny_overrides(small_data):
        argv += ["--set", o]
    assert main(argv) == 0
    return run_dir, argv


# ---- the process's own streams ---------------------------------------------------------------------------


def test_closed_pipe_ends_quietly_with_141(tmp_path):
    """`gptlab config X | head -1`: the reader goes away before gptlab writes; no BrokenPipeError traceback."""
    p = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    p.stdout.close()  # long before the interpreter has imported gptlab and printed anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141
    assert err == ""


def test_ascii_stdout_escapes_a_non_ascii_prompt(tiny_run):
    r = gptlab(
        "generate",
        str(tiny_run),
        "--prompt",
        "h\u00e9llo",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
        "--device",
        "cpu",
        PYTHONIOENCODING="ascii",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"h\\xe9llo")


# ---- damaged files -------------------------------------------------------------------------------------


def _spec(tmp_path, data) -> Path:
    (tmp_path / "base.toml").write_text(tomli_w.dumps(parse_overrides(tiny_overrides(data))))
    spec = {
        "name": "t",
        "base": "base.toml",
        "seeds": [1],
        "baseline": "baseline",
        "variants": [{"name": "baseline", "interventions": []}],
    }
    (tmp_path / "exp.toml").write_text(tomli_w.dumps(spec))
    return tmp_path / "exp.toml"


def test_damaged_results_database_is_one_line(small_data, tmp_path, capsys):
    exp = claim_experiment_dir(tmp_path / "exp", "--out")  # an experiment folder gptlab wrote
    db_path = exp / "results.sqlite"
    with ResultsDB(db_path) as db:
        db.record_run({"run_id": "baseline-s1", "experiment": "t", "variant": "baseline", "seed": 1})
    assert db_path.stat().st_size > 8192
    with open(db_path, "r+b") as f:  # a valid header and schema page, then 4 KiB of garbage over the runs table
        f.seek(4096)
        f.write(os.urandom(4096))
    spec = str(_spec(tmp_path, small_data))
    for argv in (["experiment", spec, "--out", str(exp), "--quiet"], ["leaderboard", str(exp)]):
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert str(db_path) in err and "malformed" in err, err
    db_path.write_bytes(os.urandom(4096))  # not SQLite at all
    assert main(["experiment", spec, "--out", str(exp), "--status"]) == 2
    err = one_line_error(capsys)
    assert str(db_path) in err and "not a database" in err, err


def test_non_utf8_line_in_metrics_does_not_stop_a_resume(small_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--run-dir", str(run_dir), "--quiet"]
    for o in tiny_overrides(small_data):
        argv += ["--set", o]
    assert main(argv + ["--stop-after", "5"]) == 0
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:2]) + b'{"step": 2, "train_loss": \xff\xfe}\n' + b"".join(lines[2:]))
    assert main(argv + ["--resume"]) == 0
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert max(steps) == 12 and steps == sorted(steps)


def test_non_json_final_json_is_one_line_naming_it(trained, capsys):
    run_dir, argv = trained
    final = run_dir / "final.json"
    good = final.read_bytes()
    final.write_bytes(b'{"test_loss": 3.1, \x00garbage')
    try:
        assert main(argv + ["--resume"]) == 2
        err = one_line_error(capsys)
        assert f"{final}: not valid JSON (line 1 column" in err and "--resume" in err
        final.unlink()  # what the message says to do: the run is scored again from its last checkpoint
        assert main(argv + ["--resume"]) == 0
        assert json.loads(final.read_text())["test_loss"] == json.loads(good)["test_loss"]
    finally:
        final.write_bytes(good)


def test_damaged_finetune_split_file_is_one_line_naming_it(tiny_run, tmp_path, capsys):
    data = write_records(tmp_path / "records.json")
    out = tmp_path / "sft"
    out.mkdir()
    (out / "split.json").write_bytes(b'{"args": {"seed": \xff}}')
    argv = ["finetune", str(tiny_run), "--data", str(data), "--out", str(out), "--resume", "--device", "cpu", "--quiet"]
    assert main(argv) == 2
    assert f"{out / 'split.json'}: not UTF-8 text (byte 18); start the fine-tune afresh" in one_line_error(capsys)


# ---- upper bounds of the "how many" options --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, option",
    [
        (["sweep", "SPEC", "--param", "train.lr", "--grid", "1e-3:8e-3:1000000"], "--grid"),
        (
            [
                "sweep",
                "SPEC",
                "--param",
                "train.lr",
                "--grid",
                "1e-3:8e-3:3",
                "--seeds",
                ",".join(map(str, range(1001))),
            ],
            "--seeds",
        ),
        (["generate", "RUN", "--prompt", "x", "--max-new-tokens", "100000000"], "--max-new-tokens"),
        (["plan", "SPEC", "--gpus", "1000000000"], "--gpus"),
        (["experiment", "SPEC", "--parallel", "100000"], "--parallel"),
        (["experiment", "SPEC", "--until-decided", "--max-seeds", "1000000"], "--max-seeds"),
        (["serve", "RUN", "--max-batch", "1000000"], "--max-batch"),
        (["judge", "RUN", "--judge-url", "u", "--judge-model", "m", "--concurrency", "100000"], "--concurrency"),
        (["prepare", "--out", "OUT", "--workers", "100000"], "--workers"),
        (["train", "--set", "train.micro_batch_size=100000000"], "train.micro_batch_size"),
    ],
)
def test_how_many_options_have_an_upper_bound(small_data, tiny_run, tmp_path, capsys, argv, option):
    spec = _spec(tmp_path, small_data)
    argv = [{"SPEC": str(spec), "RUN": str(tiny_run), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    try:
        code = main(argv + ["--out", str(tmp_path / "o")] if argv[0] == "sweep" else argv)
    except SystemExit as e:  # argparse: usage and one error line
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and option in err.splitlines()[-1], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("seeds", list(range(1001)), "seeds: 1001 seeds; at most 1000"),
        ("variant_seeds", list(range(1001)), "seeds: 1001 seeds; at most 1000"),
        ("tune_grid", [1e-4 * (i + 1) for i in range(1001)], "tune_grid: 1001 values; at most 1000"),
    ],
)
def test_spec_lists_of_runs_have_an_upper_bound(small_data, tmp_path, capsys, field, value, said):
    spec = _spec(tmp_path, small_data)
    d = tomllib.loads(spec.read_text())
    if field == "variant_seeds":
        d["variants"][0]["seeds"] = value
    elif field == "tune_grid":
        d.update(tune="train.lr", tune_grid=value)
    else:
        d[field] = value
    spec.write_text(tomli_w.dumps(d))
    assert main(["experiment", str(spec), "--dry-run"]) == 2
    assert said in one_line_error(capsys)


def test_plan_says_when_gpus_outnumber_the_batch(small_data, tmp_path, capsys):
    assert main(["plan", str(_spec(tmp_path, small_data).parent / "base.toml"), "--gpus", "64"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("grad accumulation 0.03125 micro-steps") and "under one: more GPUs" in line, line


# ---- the server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_run):
    from gptlab.posttrain.serve import make_server

    srv = make_server(tiny_run, port=0, max_tokens_limit=16, device="cpu")
    with Running(srv):
        yield srv.server_address[:2]


def _post(addr, body: bytes) -> tuple[int, dict]:
    c = http.client.HTTPConnection(*addr, timeout=60)
    try:
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"prompt": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}"])
def test_deeply_nested_request_is_a_400(server, body):
    status, reply = _post(server, body)
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["code"] == "invalid_json"
    assert "nested more than 32 levels" in reply["error"]["message"]
    status, reply = _post(server, json.dumps({"prompt": "Hi", "max_tokens": 2}).encode())  # still serving
    assert status == 200 and reply["choices"]


# ---- prepared data folders ---------------------------------------------------------------------------------


def _train_argv(data_dir, run_dir, **extra) -> list[str]:
    argv = ["train", "--run-dir", str(run_dir), "--quiet"]
    for o in tiny_overrides(str(data_dir), **{"train.tokens": 8 * 32 * 2, **extra}):
        argv += ["--set", o]
    return argv


def test_forged_max_id_is_caught_by_verify_and_train(small_data, tmp_path, capsys):
    """A shard with an id past GPT-2's vocabulary, its sha256 updated in meta.json and max_id left small."""
    import hashlib

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(small_data, data, ignore=shutil.ignore_patterns("verified.json", "corpus_vocab.npz"))
    meta = json.loads((data / "meta.json").read_text())
    sh = meta["splits"]["train"]["shards"][0]
    ids = np.fromfile(data / sh["file"], dtype="<u2")
    ids[10] = 60000
    ids.tofile(data / sh["file"])
    sh["sha256"] = hashlib.sha256((data / sh["file"]).read_bytes()).hexdigest()
    assert sh["max_id"] < 60000
    (data / "meta.json").write_text(json.dumps(meta))
    assert main(["verify", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"shard {data / sh['file']}: token id 60000 >= 50,257" in err and "ids in range" not in err
    assert main(_train_argv(data, tmp_path / "run", **{"data.vocab": "gpt2"})) == 2
    assert "token id 60000 >= 50,257" in one_line_error(capsys)
    sh["max_id"] = 60000  # honest about the id: still past the vocabulary
    (data / "meta.json").write_text(json.dumps(meta))
    assert main(["verify", str(data)]) == 2
    assert "token id 60000 >= 50257" in one_line_error(capsys)


def test_read_only_data_folder_with_corpus_vocab_trains(small_data, tmp_path, mount, capsys):
    ro = tmp_path / "ro"
    mount(ro, "size=16m")
    shutil.copytree(small_data, ro / "data", ignore=shutil.ignore_patterns("verified.json", "corpus_vocab.npz"))
    mount(ro, "ro", remount=True)
    assert main(_train_argv(ro / "data", tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert err.count(f"gptlab: warning: {ro / 'data' / 'corpus_vocab.npz'} not written (Read-only file system)") == 1
    assert (tmp_path / "run" / "final.json").is_file() and not (ro / "data" / "corpus_vocab.npz").exists()


def test_fifo_given_to_prepare_is_named_as_such(tmp_path, capsys):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    assert main(["prepare", str(fifo), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert f"{fifo}: a FIFO (named pipe), not a regular file or folder" in err and "no such file" not in err
    assert not (tmp_path / "out").exists()


# ---- user-supplied YAML and TOML ---------------------------------------------------------------------------


def test_malformed_task_yaml_reports_the_parse_error(tiny_run, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text(
        "task: my_task\ndataset_path: json\ndoc_to_text: !function utils.doc\ndoc_to_choice: [a, b\n"
    )
    assert main(["eval", str(tiny_run), "--task", "my_task", "--include-path", str(tasks), "--device", "cpu"]) == 2
    err = one_line_error(capsys)
    assert f"{tasks / 'mine.yaml'} line 5 column 1:" in err and "no such lm-eval task" not in err, err


def test_malformed_toml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 3e-4\ntokens = = 5\n")
    assert main(["config", str(bad)]) == 2
    err = one_line_error(capsys)
    assert str(bad) in err and "line 3" in err, err
