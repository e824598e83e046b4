"""acc / acc_norm of a run on the bundled shakespeare_cloze task through lm-evaluation-harness, beside the
same model with its weights re-initialised (chance level, same architecture and vocabulary), and a diagnostic:
how often each model picks the true ending when the context is replaced by <|endoftext|> (what the ending
alone is worth, e.g. word frequencies) -- the gap to the real acc is what the model gets from the context.

    python benchmarks/downstream_cloze.py runs/tiny-cpu [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gptlab.data.tokenizer import EOT_ID, encode
from gptlab.data.vocab import load_vocab_map
from gptlab.interop.lm_eval import GptlabLM, evaluate_run, load_tasks
from gptlab.model import GPTModel
from gptlab.train import load_run_model

TASK = "shakespeare_cloze"


def harness(lm: GptlabLM) -> dict:
    import lm_eval

    tm, loaded = load_tasks([TASK])
    r = lm_eval.simple_evaluate(model=lm, tasks=list(loaded.values()), task_manager=tm, log_samples=False)
    return r["results"][TASK]


def context_free(lm: GptlabLM) -> tuple[float, float]:
    """(acc, acc_norm) when every ending is scored after <|endoftext|> instead of its context."""
    _, loaded = load_tasks([TASK])
    docs = list(loaded[TASK].eval_docs)
    pairs = [([EOT_ID], encode(" " + e)) for d in docs for e in d["endings"]]
    lls = [ll for ll, _ in lm.score(pairs)]
    acc = norm = 0
    for i, d in enumerate(docs):
        s = lls[4 * i : 4 * i + 4]
        n = [x / len(" " + e) for x, e in zip(s, d["endings"], strict=True)]
        acc += max(range(4), key=s.__getitem__) == d["label"]
        norm += max(range(4), key=n.__getitem__) == d["label"]
    return acc / len(docs), norm / len(docs)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-initialised weights")
    a = p.parse_args()
    model, cfg = load_run_model(a.run, "cpu")
    vm = load_vocab_map(a.run)
    (trained,) = evaluate_run(a.run, [TASK], batch_size=32)
    torch.manual_seed(a.seed)
    rand = GptlabLM(model=GPTModel(cfg.model).eval(), vocab_map=vm, batch_size=32)
    r = harness(rand)
    final = os.path.join(a.run, "final.json")
    test = ""
    if os.path.exists(final):
        import json

        test = f", test loss {json.load(open(final)).get('test_loss', float('nan')):.4f}"
    print(
        f"run {a.run}: {cfg.model.n_layers} layers, {cfg.model.emb_dim}-dim, {cfg.train.tokens:,} training tokens{test}"
    )
    print(f"{'model':<22} {'acc':>16} {'acc_norm':>16}   context-free acc / acc_norm")
    for name, acc, se, norm, nse, lm in (
        (
            "trained (harness)",
            trained["acc"],
            trained["acc_stderr"],
            trained["acc_norm"],
            trained["acc_norm_stderr"],
            GptlabLM(model=model, vocab_map=vm, batch_size=32),
        ),
        (
            f"random init seed {a.seed}",
            r["acc,none"],
            r["acc_stderr,none"],
            r["acc_norm,none"],
            r["acc_norm_stderr,none"],
            rand,
        ),
    ):
        cf = context_free(lm)
        print(f"{name:<22} {acc:.4f} ± {se:.4f}  {norm:.4f} ± {nse:.4f}   {cf[0]:.4f} / {cf[1]:.4f}")
    print(
        f"chance 0.25 (4 endings, {trained['n_docs']} items); lm-eval {trained['lm_eval_version']}; stored in "
        f"{a.run}/downstream.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
