"""`gptlab prepare`, `train`, `verify`, `generate`, `interventions`, `config` and `plan` (and `eval`, from evaluate.py,
registered in its place among them): argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gptlab import GptlabError
from gptlab.cli.common import (
    COUNT,
    FRACTION,
    MAX_BATCH,
    MAX_GPUS,
    MAX_SHARD_TOKENS,
    MAX_TOKENS,
    MAX_WORKERS,
    POSITIVE,
    SEED,
    Number,
    device,
    upto,
    verb_parser,
)
from gptlab.cli.evaluate import outside_line, print_result_table, register_eval, unigram


def cmd_prepare(a) -> int:
    from gptlab.data import HFDataset, prepare, unigram_loss

    sources = a.sources or ["bundled"]
    if a.hf_dataset:
        if a.sources:
            raise GptlabError("prepare: give either files/folders or --hf-dataset, not both")
        sources = [
            HFDataset(
                a.hf_dataset, a.hf_name, a.hf_split, a.hf_revision, tuple(a.hf_data_files) if a.hf_data_files else None
            )
        ]
    elif a.hf_name or a.hf_revision or a.hf_data_files or a.hf_split != "train":
        raise GptlabError("prepare: --hf-name/--hf-split/--hf-revision/--hf-data-files need --hf-dataset")
    meta = prepare(
        sources,
        a.out,
        text_field=a.text_field,
        val_frac=a.val_frac,
        test_frac=a.test_frac,
        shard_tokens=a.shard_tokens,
        workers=a.workers,
        progress=not a.quiet,
        max_docs=a.max_docs,
        force=a.force,
    )
    for split, info in meta["splits"].items():
        print(
            f"{split:<6} {info['tokens']:>12,} tokens  {info['documents']:>8,} documents  "
            f"{len(info['shards'])} shard(s)"
        )
    print(f"unigram baseline (test loss of a unigram model fitted on train): {unigram_loss(a.out):.4f}")
    print(f"wrote {a.out}/meta.json")
    return 0


def _named_run_dir(cfg) -> Path:
    """out_dir / name without --run-dir: each /-separated part of the config's name a plain name, so the run
    folder stays inside out_dir (an experiment's runs are named EXP/RUN_ID)."""
    from gptlab.io import confined

    path = Path(cfg.out_dir)
    for part in str(cfg.name).split("/"):
        path = confined(path, part, "config name: part")
    return path


def cmd_train(a) -> int:
    from gptlab.config import load_config
    from gptlab.train import train

    if a.continue_with and not a.resume:
        raise GptlabError("train: --continue-with changes a run it resumes; add --resume")
    cfg = load_config(a.config, a.set)
    saved = Path(a.run_dir or _named_run_dir(cfg)) / "config.toml"
    if a.resume and a.config is None and saved.is_file():
        # resuming without --config: the run folder's config (resolved: its interventions are applied already)
        cfg = load_config(saved, a.set, apply_interventions=False)
    run_dir = Path(a.run_dir or _named_run_dir(cfg))
    from gptlab.train.signals import EXIT_PREEMPTED

    final = train(cfg, run_dir, resume=a.resume, stop_after=a.stop_after, continue_with=a.continue_with, quiet=a.quiet)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if "preempted" in final:
        if main_rank:
            print(
                f"preempted ({final['preempted']}) at step {final['stopped_at']}/{final['total_steps']}: checkpoint "
                f"written; continue with --resume",
                file=sys.stderr,
            )
        return EXIT_PREEMPTED
    if main_rank:
        if "stopped_at" in final:
            print(f"stopped at step {final['stopped_at']}/{final['total_steps']}; continue with --resume")
        else:
            print_result_table([final], unigram=unigram(cfg.data.dir))
            if "test_tokens_outside_vocab" in final:
                print(outside_line(final["test_tokens_outside_vocab"], final["test_tokens_evaluated"], cfg.eval.split))
            print(f"run directory: {run_dir}")
    return 0


def cmd_verify(a) -> int:
    from gptlab.data.verify import shard_failures

    failures, hashed = shard_failures(a.dir, force=True)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        raise GptlabError(f"{a.dir}: {len(failures)} of {hashed} shard(s) failed verification")
    print(f"{a.dir}: {hashed} shards, ids in range, sha256 as in meta.json")
    return 0


def cmd_generate(a) -> int:
    from gptlab.posttrain.generate import Generator, Sampling, read_prompts

    if (a.prompt is None) == (a.prompts is None):
        raise GptlabError("generate: give either --prompt TEXT or --prompts FILE")
    if a.prompts is None and a.batch is not None:
        raise GptlabError("generate: --batch needs --prompts FILE")
    gen = Generator.from_run(a.run, a.device)
    sampling = Sampling(a.temperature, a.top_k, a.seed, a.top_p)
    if a.prompt is not None:
        print(a.prompt + gen.complete(gen.encode(a.prompt), a.max_new_tokens, sampling).text)
        return 0
    prompts = read_prompts(a.prompts)
    outs = gen.complete_batch([gen.encode(p) for p in prompts], a.max_new_tokens, sampling, batch_size=a.batch or 8)
    for p, out in zip(prompts, outs, strict=True):
        print(
            json.dumps(
                {
                    "prompt": p,
                    "completion": out.text,
                    "finish_reason": out.finish_reason,
                    "completion_tokens": out.completion_tokens,
                }
            )
        )
    return 0


def cmd_interventions(a) -> int:
    from gptlab.interventions import describe

    print(describe())
    return 0


def cmd_config(a) -> int:
    from gptlab.config import load_config
    from gptlab.model import GPTModel, count_params

    cfg = load_config(a.config, a.set)
    print(cfg.to_toml())
    import torch

    with torch.device("meta"):
        n = count_params(GPTModel(cfg.model))
    from gptlab.train.flops import flops_per_token, token_budget

    tokens = token_budget(cfg, n)
    print(
        f"# params {n:,}  tokens {tokens:,}  FLOPs/token {flops_per_token(cfg.model):.3e}  "
        f"total FLOPs {flops_per_token(cfg.model) * tokens:.3e}  config hash {cfg.hash()}"
    )
    return 0


def cmd_plan(a) -> int:
    from gptlab.config import load_config
    from gptlab.plan import format_plan, plan
    from gptlab.train.flops import peak_of, tokens_for_flops

    cfg = load_config(a.config, a.set)
    budget = a.flops
    if a.gpu_hours:
        budget = a.gpu_hours * 3600 * peak_of(a.gpu_type) * a.mfu
    if budget:
        cfg.train.tokens, cfg.train.flops = tokens_for_flops(cfg.model, budget), 0.0
        print(f"FLOP budget {budget:.3e} -> {cfg.train.tokens:,} tokens")
    print(format_plan(plan(cfg, a.gpus, a.gpu_type, a.mfu, a.price, a.fsdp)))
    return 0


def register(sub) -> None:
    s = verb_parser(
        sub,
        "prepare",
        "tokenise text into uint16 shards with a train/val/test split by document",
        "gptlab prepare --out data/shakespeare                     # the bundled corpus\n"
        "gptlab prepare ~/fineweb/sample/10BT --out data/fineweb    # a folder of parquet files\n"
        "gptlab prepare notes.jsonl --text-field body --out data/notes\n"
        "gptlab prepare --hf-dataset HuggingFaceFW/fineweb --hf-name sample-10BT --out data/fineweb10B\n"
        "    # streams FineWeb's 10B sample from the Hub (pip install -e '.[fineweb]')",
    )
    s.add_argument("sources", nargs="*", help="files or folders (.txt, .jsonl, .parquet, .bin) or 'bundled' (default)")
    s.add_argument(
        "--out",
        required=True,
        help="output folder for shards + meta.json: new, empty or a prepared "
        "folder, which is replaced as a whole (a file, or a folder holding other files, is refused)",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds files prepare did not write (they are deleted with the old folder)",
    )
    s.add_argument("--text-field", default="text", help="jsonl field / parquet or dataset column holding the text")
    s.add_argument(
        "--hf-dataset",
        metavar="ID",
        help="stream a Hugging Face dataset instead of files, e.g. "
        "HuggingFaceFW/fineweb (needs the 'datasets' package: pip install -e '.[fineweb]')",
    )
    s.add_argument("--hf-name", metavar="CONFIG", help="with --hf-dataset: the dataset config, e.g. sample-10BT")
    s.add_argument(
        "--hf-split",
        default="train",
        metavar="SPLIT",
        help="with --hf-dataset: the split to read (default: train; gptlab makes its own train/val/test split from it)",
    )
    s.add_argument(
        "--hf-revision",
        metavar="REV",
        help="with --hf-dataset: branch, tag or commit (default: main; "
        "the commit it resolves to is recorded in meta.json)",
    )
    s.add_argument(
        "--hf-data-files",
        action="append",
        metavar="FILE",
        help="with --hf-dataset: data files for a "
        "packaged builder (e.g. --hf-dataset parquet --hf-data-files a.parquet); repeatable",
    )
    s.add_argument("--max-docs", type=COUNT, default=0, help="stop after this many documents (0 = all)")
    s.add_argument("--val-frac", type=FRACTION, default=0.05)
    s.add_argument("--test-frac", type=FRACTION, default=0.05)
    s.add_argument("--shard-tokens", type=upto(MAX_SHARD_TOKENS), default=100_000_000)
    s.add_argument("--workers", type=upto(MAX_WORKERS, 0), default=0, help="tokeniser processes (0 = all cores)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_prepare)
    s = verb_parser(
        sub,
        "train",
        "train a model (one process, or many under torchrun)",
        "gptlab train --config configs/tiny-cpu.toml\n"
        "gptlab train --config configs/tiny-cpu.toml --set train.lr=1e-3 --set model.drop_rate=0\n"
        "gptlab train --config configs/tiny-cpu.toml --run-dir runs/tiny-cpu --resume\n"
        "gptlab train --run-dir runs/tiny-cpu --resume --continue-with train.tokens=2000000 "
        "--continue-with train.lr=1e-4\n"
        "torchrun --nproc_per_node 8 -m gptlab train --config configs/gpt2-small-baseline.toml",
    )
    s.add_argument("--config", help="TOML config (defaults if omitted; with --resume, the run folder's config.toml)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    s.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME from the config)")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's latest checkpoint (a missing or damaged one: from the newest "
        "intact checkpoint, said in one line; none intact: stop, nothing deleted)",
    )
    s.add_argument(
        "--continue-with",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --resume: change a field from the checkpoint's step on (repeatable): "
        "train.tokens/flops/tokens_per_param (the length: warmups keep their steps, and a cosine or "
        "linear lr decays from where it was to min_lr_frac at the new end), train.lr/muon_lr (the "
        "base lr the schedule multiplies from that step on), "
        "train.eval_interval/checkpoint_interval/keep_checkpoints/log_interval. config.toml is "
        "rewritten and meta.json's history records {step, changes}. Without it, --resume refuses a "
        "config other than the one the checkpoint was trained under, listing the changed fields",
    )
    s.add_argument("--stop-after", type=POSITIVE, help=argparse.SUPPRESS)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train)
    register_eval(sub)
    s = verb_parser(
        sub,
        "verify",
        "check a prepared data folder: every shard present, ids in range, sha256 as in "
        "meta.json (train does this too, before its first step, for shards it has not verified before)",
        "gptlab verify data/shakespeare",
    )
    s.add_argument("dir", help="prepared data folder (holding meta.json)")
    s.set_defaults(fn=cmd_verify)
    s = verb_parser(
        sub,
        "generate",
        "sample text from a run's latest checkpoint",
        'gptlab generate runs/tiny-cpu --prompt "To be, or not" --max-new-tokens 40 --temperature 0.8 --top-k 50\n'
        "gptlab generate runs/tiny-cpu --prompts prompts.txt --batch 16 --temperature 0",
    )
    s.add_argument("run")
    s.add_argument("--prompt", help="continue this text and print prompt + continuation")
    s.add_argument(
        "--prompts",
        metavar="FILE",
        help='continue every prompt in FILE (one per line, or JSONL {"prompt": ...} when it ends in '
        ".jsonl); prints one JSON line per prompt, in order",
    )
    s.add_argument(
        "--batch",
        type=upto(MAX_BATCH),
        metavar="N",
        help="with --prompts: decode N prompts at a time as one batch (default 8); a seeded "
        "batch samples as if each prompt were alone with that seed",
    )
    s.add_argument("--max-new-tokens", type=upto(MAX_TOKENS), default=50)
    s.add_argument("--temperature", type=Number(float, "[0, inf)"), default=1.0)
    s.add_argument("--top-k", type=upto(65_536, 0), default=0, help="0 = off")
    s.add_argument(
        "--top-p",
        type=Number(float, "[0, 1]"),
        default=None,
        help="nucleus sampling: keep the most likely tokens whose probabilities add up to P (1 = off)",
    )
    s.add_argument("--seed", type=SEED, default=None)
    s.add_argument("--device", default="auto", type=device)
    s.set_defaults(fn=cmd_generate)
    s = verb_parser(
        sub,
        "interventions",
        "list the registered interventions with their parameters and sources",
        "gptlab interventions",
    )
    s.set_defaults(fn=cmd_interventions)
    s = verb_parser(
        sub,
        "config",
        "print the resolved config, parameter count and FLOPs",
        "gptlab config configs/gpt2-small-baseline.toml\n"
        'gptlab config configs/tiny-cpu.toml --set interventions=["qkv_bias"]',
    )
    s.add_argument("config", nargs="?")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_config)
    s = verb_parser(
        sub,
        "plan",
        "what a config costs: FLOPs, tokens, wall time, price, memory per GPU, grad accumulation",
        "gptlab plan configs/gpt2-small-baseline.toml --gpus 8 --gpu-type A100\n"
        "gptlab plan configs/gpt2-small-baseline.toml --gpus 1 --gpu-type RTX3090 --gpu-hours 48   # the seed's 2 days",
    )
    s.add_argument("config")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--gpus", type=upto(MAX_GPUS), default=1)
    s.add_argument(
        "--gpu-type",
        default="H100",
        help="A100, A100-80, H100, H100-PCIE, H100-NVL, H200, H800, B200, L40S, L4, A10G, RTX4090, ... "
        "(the keys of gptlab.train.flops.PEAK_FLOPS, or a device name)",
    )
    s.add_argument("--mfu", type=Number(float, "(0, 1]"), default=0.4, help="assumed model FLOPs utilisation")
    s.add_argument("--price", type=Number(float, "[0, inf)"), help="USD per GPU-hour")
    s.add_argument("--fsdp", action="store_true", help="shard weights/grads/optimizer state over the GPUs")
    s.add_argument("--flops", type=Number(float, "(0, inf)"), help="FLOP budget: set the token budget from it")
    s.add_argument(
        "--gpu-hours", type=Number(float, "(0, 1e12]"), help="FLOP budget as GPU-hours of --gpu-type at --mfu"
    )
    s.set_defaults(fn=cmd_plan)
