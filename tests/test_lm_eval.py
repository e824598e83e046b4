"""Downstream evaluation through the real lm-evaluation-harness, offline: the bundled HellaSwag-format task
(shakespeare_cloze) and task YAMLs written here, on tiny runs. Nothing is downloaded (HF_*_OFFLINE)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported: nothing may reach the network
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")

# E402: these imports come after the environment above and the skip without lm-eval
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import tiny_overrides  # noqa: E402
from conftest_ft import make_tiny_run  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from gptlab import GptlabError  # noqa: E402
from gptlab.data.tokenizer import EOT_ID, encode  # noqa: E402
from gptlab.data.vocab import load_vocab_map  # noqa: E402
from gptlab.interop.downstream import RESULT_FILE, read_results, store_result  # noqa: E402
from gptlab.interop.lm_eval import GptlabLM, bundled_tasks, evaluate_run  # noqa: E402
from gptlab.train import load_run_model  # noqa: E402

TASK = "shakespeare_cloze"
LIMIT = 40


@pytest.fixture
def gptlab_cli(capsys):
    """gptlab_cli(*args) -> (exit code, stdout, stderr) of the CLI, in this process (lm-eval is imported once)."""
    from gptlab.cli import main

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory) -> Path:
    """A 1-layer, 32-dim, 32-token-context run with a corpus vocabulary, trained for a few steps."""
    from gptlab.config import load_config
    from gptlab.train import train

    run = tmp_path_factory.mktemp("lmeval") / "trained"
    train(load_config(None, tiny_overrides(small_data)), run)
    return run


def test_cli_runs_the_harness_stores_reuses_and_recomputes_identically(trained_run, gptlab_cli):
    r = gptlab_cli("eval", str(trained_run), "--task", TASK, "--limit", str(LIMIT), "--json")
    assert r.returncode == 0, r.stderr
    (e,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert e["task"] == TASK and e["n_docs"] == LIMIT and e["reused"] is False and e["chance"] == 0.25
    for m in ("acc", "acc_norm"):
        assert 0 <= e[m] <= 1 and 0 < e[f"{m}_stderr"] < 0.2
    c = e["counts"]  # 4 endings per item; the 32-token context truncates some requests from the left
    assert c["requests"] == 4 * LIMIT and c["requests_truncated"] > 0 and c["tokens_scored"] > 4 * LIMIT
    stored = read_results(trained_run)
    assert len(stored) == 1 and next(iter(stored.values()))["acc_norm"] == e["acc_norm"]
    mtime = (trained_run / RESULT_FILE).stat().st_mtime_ns

    again = gptlab_cli("eval", str(trained_run), "--task", TASK, "--limit", str(LIMIT), "--json")
    (e2,) = [json.loads(line) for line in again.stdout.splitlines()]
    assert e2["reused"] is True and e2["acc_norm"] == e["acc_norm"]
    assert (trained_run / RESULT_FILE).stat().st_mtime_ns == mtime  # read, not rewritten

    forced = gptlab_cli("eval", str(trained_run), "--task", TASK, "--limit", str(LIMIT), "--force")
    assert forced.returncode == 0, forced.stderr
    e3 = next(iter(read_results(trained_run).values()))
    assert e3["evaluated_at"] >= e["evaluated_at"] and e3["seconds"] > 0
    assert (e3["acc"], e3["acc_norm"], e3["acc_stderr"]) == (e["acc"], e["acc_norm"], e["acc_stderr"])
    assert f"{TASK}" in forced.stdout and f"{e['acc_norm']:.4f} ±" in forced.stdout


@pytest.mark.parametrize(
    "arch",
    [
        {},
        dict(
            pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, logit_softcap=15.0, bias=False, tie_weights=True
        ),
    ],
    ids=["book", "rope-rmsnorm-swiglu-qknorm-softcap-tied"],
)
def test_loglikelihood_is_the_models_own_log_prob(tmp_path, arch):
    """Against a direct forward pass: truncation from the left, a token outside a compact vocabulary, batching
    (batch size 1 vs 3 give the same numbers), greedy flags and the rolling log-likelihood; for the book's
    architecture and the modern one."""
    from gptlab.config import ModelConfig
    from gptlab.model import GPTModel

    # a compact vocabulary that lacks " Rome" (it has " Caesar"): the continuation has a token scored as <|endoftext|>
    vocab = encode("Friends , Romans , countrymen , lend me your ears ; I come to bury Caesar , not to praise him")
    run = make_tiny_run(tmp_path / "run", seed=3, vocab_ids=vocab, context_length=16)
    model, cfg = load_run_model(run)
    vm = load_vocab_map(run)
    if arch:
        torch.manual_seed(3)
        model = GPTModel(ModelConfig(**{**cfg.model.__dict__, **arch})).eval()
    long_ctx = "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him."
    reqs = [(long_ctx, " Caesar Rome"), ("I come", " to bury"), ("lend me", " your ears")]

    def direct(ctx: str, cont: str) -> tuple[float, bool]:
        c, w = encode(ctx), encode(ctx + cont)
        tgt_ids = w[len(c) :]
        seq = w[-17:]  # the last context_length + 1 tokens
        x = vm.to_compact(torch.tensor(seq[:-1]))[None]
        with torch.no_grad():
            lp = F.log_softmax(model(x)[0, -len(tgt_ids) :].double(), -1)
        tgt = vm.to_compact(torch.tensor(tgt_ids))
        return lp.gather(-1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())

    got = {}
    for bs in (1, 3):
        lm = GptlabLM(model=model, vocab_map=vm, batch_size=bs)
        got[bs] = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
        assert lm.counts["tokens_outside_vocab"] == 1 and lm.counts["requests_truncated"] == 1
    for (ctx, cont), (ll1, g1), (ll3, g3) in zip(reqs, got[1], got[3], strict=True):
        want, greedy = direct(ctx, cont)
        assert ll1 == pytest.approx(want, abs=1e-4) and ll3 == pytest.approx(want, abs=1e-4)
        assert g1 == g3 == greedy
    assert len(encode(long_ctx)) > 16  # the truncation really happened

    text = "I come to bury Caesar"  # shorter than the context: one window after <|endoftext|>
    (rolling,) = GptlabLM(model=model, vocab_map=vm).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True
    )
    ids = vm.to_compact(torch.tensor([EOT_ID] + encode(text)))
    with torch.no_grad():
        lp = F.log_softmax(model(ids[None, :-1])[0].double(), -1)
    assert rolling == pytest.approx(lp.gather(-1, ids[1:, None]).sum().item(), abs=1e-4)
    with pytest.raises(GptlabError, match="generate_until"):
        GptlabLM(model=model).generate_until([])


def test_random_model_on_an_include_path_task_and_the_registered_name(tmp_path):
    """A task YAML of one's own (--include-path) holding the bundled task's first 40 items scores exactly as
    the bundled task with --limit 40 (same documents, same sha256); lm-eval's registry builds the model from
    its name "gptlab" with the same result."""
    run = make_tiny_run(tmp_path / "rand", seed=0, vocab_ids=list(range(0, 50257, 7)))  # random init
    src = bundled_tasks()[TASK]
    items = (src.parent / f"{TASK}.jsonl").read_text().splitlines()[:LIMIT]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.jsonl").write_text("\n".join(items) + "\n")
    (tasks / "mine.yaml").write_text(
        src.read_text()
        .replace(f"task: {TASK}", "task: my_cloze")
        .replace(f"validation: {TASK}.jsonl", f"validation: {tasks / 'mine.jsonl'}")
    )
    (mine,) = evaluate_run(run, ["my_cloze"], include_path=[str(tasks)])
    (bundled,) = evaluate_run(run, [TASK], limit=LIMIT)
    assert mine["n_docs"] == bundled["n_docs"] == LIMIT and mine["data_sha256"] == bundled["data_sha256"]
    assert (mine["acc"], mine["acc_norm"]) == (bundled["acc"], bundled["acc_norm"])
    assert mine["counts"]["tokens_outside_vocab"] > 0  # most GPT-2 ids are outside this vocabulary: counted
    assert sorted(e["task"] for e in read_results(run).values()) == ["my_cloze", TASK]
    # the same task again is read back; the same documents under an edited prompt are evaluated afresh
    assert evaluate_run(run, ["my_cloze"], include_path=[str(tasks)])[0]["reused"]
    (tasks / "mine.yaml").write_text((tasks / "mine.yaml").read_text() + 'description: "A cloze. "\n')
    (edited,) = evaluate_run(run, ["my_cloze"], include_path=[str(tasks)])
    assert not edited["reused"] and edited["data_sha256"] == mine["data_sha256"]
    assert edited["task_sha256"] != mine["task_sha256"] and len(read_results(run)) == 3

    from gptlab.interop.lm_eval import load_tasks

    tm, loaded = load_tasks([TASK])
    res = lm_eval.simple_evaluate(
        model="gptlab",
        model_args=f"run={run},batch_size=8",
        tasks=list(loaded.values()),
        task_manager=tm,
        limit=LIMIT,
        log_samples=False,
    )
    assert res["results"][TASK]["acc_norm,none"] == bundled["acc_norm"]


def test_exported_run_through_lm_evals_hf_model_agrees(tmp_path):
    """(a) the gptlab model class vs (b) `gptlab export` + lm-eval's own `hf` model class: the same
    log-likelihood for every request and the same acc/acc_norm through the harness."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="lm-eval's hf model class needs accelerate (lm-eval[hf])")
    from lm_eval.models.huggingface import HFLM

    from gptlab.interop.hf import export_run
    from gptlab.interop.lm_eval import evaluate_hf, load_tasks

    # GPT-2 layout, full vocabulary: exportable; a 16-token context, so both cut long requests from the left
    run = make_tiny_run(tmp_path / "full", seed=5, context_length=16)
    hf = export_run(run, tmp_path / "hf")
    _, loaded = load_tasks([TASK])
    task = loaded[TASK]
    task.build_all_requests(limit=10, rank=0, world_size=1)
    reqs = [inst for inst in task.instances]
    lm = GptlabLM(run=str(run), batch_size=4)
    ours = lm.loglikelihood(reqs, disable_tqdm=True)
    assert lm.counts["requests_truncated"] > 10
    theirs = HFLM(pretrained=str(hf), batch_size=4, device="cpu", dtype="float32").loglikelihood(
        reqs, disable_tqdm=True
    )
    assert len(ours) == len(reqs) == 40
    for (a, ga), (b, gb) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-3) and ga == gb
    (a_res,) = evaluate_run(run, [TASK], limit=LIMIT)
    (b_res,) = evaluate_hf(hf, [TASK], limit=LIMIT, batch_size=8)
    assert (a_res["acc"], a_res["acc_norm"]) == (b_res["acc"], b_res["acc_norm"])
    assert a_res["data_sha256"] == b_res["data_sha256"]


def test_bad_task_and_misuse_are_one_line_errors(tmp_path, gptlab_cli):
    run = make_tiny_run(tmp_path / "run")
    r = gptlab_cli("eval", str(run), "--task", "hellaswg")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--task hellaswg: no such lm-eval task" in r.stderr and "did you mean hellaswag" in r.stderr
    assert "lm-eval ls tasks" in r.stderr
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "gen.yaml").write_text(
        "task: my_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{gen / 'd.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
    )
    (gen / "d.jsonl").write_text('{"q": "a", "a": "b"}\n')
    r = gptlab_cli("eval", str(run), "--task", "my_gen", "--include-path", str(gen))
    assert r.returncode != 0 and "generation task" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (gen / "hub.yaml").write_text(
        (bundled_tasks()[TASK])
        .read_text()
        .replace(f"task: {TASK}", "task: hub_task")
        .replace("dataset_path: json", "dataset_path: gptlab-tests/no-such-dataset")
    )
    r = gptlab_cli("eval", str(run), "--task", "hub_task", "--include-path", str(gen))  # as hellaswag offline
    assert r.returncode == 2 and "need a network the first time" in r.stderr.strip().splitlines()[-1]
    r = gptlab_cli("eval", str(run), "--task", TASK, "--split", "val")
    assert r.returncode != 0 and "--split applies to the loss evaluation only" in r.stderr
    r = gptlab_cli("eval", str(run), "--limit", "5")
    assert r.returncode != 0 and "go with --task" in r.stderr
    (run / RESULT_FILE).write_text("not json")
    with pytest.raises(GptlabError, match="downstream.json: unreadable"):
        read_results(run)
    assert not list(run.glob(".*tmp*"))


def test_report_shows_the_mean_acc_norm_beside_test_loss(tmp_path):
    """A variant whose every run has the result gets its mean; one with a run lacking it gets a dash."""
    from gptlab.experiments.report import write_report
    from gptlab.experiments.results import ResultsDB
    from gptlab.interop.downstream import checkpoint_id
    from gptlab.train import latest_checkpoint

    exp = tmp_path / "exp"
    accs = {("baseline", 0): 0.30, ("baseline", 1): 0.34, ("other", 0): 0.40, ("other", 1): None}
    with ResultsDB(exp / "results.sqlite") as db:
        for (variant, seed), acc in accs.items():
            run = make_tiny_run(exp / "runs" / f"{variant}-s{seed}")
            if acc is not None:
                store_result(
                    run,
                    "k",
                    dict(
                        task=TASK,
                        n_docs=200,
                        acc=0.25,
                        acc_norm=acc,
                        data_sha256="abc",
                        checkpoint=checkpoint_id(latest_checkpoint(run)),
                        evaluated_at="2026-01-01T00:00:00",
                    ),
                )
            db.record_run(
                dict(
                    run_id=run.name,
                    experiment="e",
                    variant=variant,
                    seed=seed,
                    run_dir=str(run),
                    test_loss=4.0 + seed / 100 + (variant == "other") / 10,
                    tokens=1000,
                )
            )
    res = write_report(exp)
    md = Path(res["markdown"]).read_text()
    header = f"mean {TASK} acc_norm (n=200)"
    lines = res["table"].splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cols.index(header) == cols.index("95% CI") + 1
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}
    assert rows["baseline"][cols.index(header)] == "0.3200" and rows["other"][cols.index(header)] == "—"
    assert f"{TASK} acc_norm (n=200)" in md and "0.4000" in md  # the runs table shows each run's value
    weights = latest_checkpoint(exp / "runs" / "other-s0") / "model.safetensors"  # new weights, same step name:
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # its result is stale
    assert "0.4000" not in Path(write_report(exp)["markdown"]).read_text()
    damaged = exp / "runs" / "baseline-s0"  # an entry whose acc_norm is not a number: left out, no traceback
    store_result(
        damaged,
        "bad",
        dict(
            task=TASK,
            n_docs=200,
            acc_norm="x",
            data_sha256="abc",
            checkpoint=checkpoint_id(latest_checkpoint(damaged)),
            evaluated_at="2027",
        ),
    )
    assert "0.3200" in write_report(exp)["table"]
    shutil.rmtree(exp / "runs" / "baseline-s1" / "checkpoints")  # no checkpoint: no result for it
    assert "0.3200" not in write_report(exp)["table"]


def test_a_vocabulary_map_of_another_size_is_one_line_everywhere(tmp_path):
    """A run whose vocab_map.npy does not match model.vocab_size: the harness's model class, generation and
    loss evaluation all stop with the same one line (data/vocab.load_vocab_map), not an index error later."""
    import numpy as np

    from gptlab.cli import main
    from gptlab.posttrain.generate import Generator

    run = make_tiny_run(tmp_path / "run", vocab_ids=list(range(0, 50257, 7)))
    np.save(run / "vocab_map.npy", np.array([*range(9), 50256], dtype=np.int64))
    for load in (lambda: GptlabLM(run=str(run)), lambda: Generator.from_run(run, "cpu")):
        with pytest.raises(GptlabError, match=r"vocab_map\.npy: 10 ids but model\.vocab_size is 7181$"):
            load()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
