"""`gptlab export` and `gptlab import-hf`: argument parsing and printing only."""

from __future__ import annotations

from gptlab.cli.common import verb_parser


def cmd_export(a) -> int:
    from gptlab.interop.hf import export_run

    out = export_run(a.run, a.out, push=a.push, force=a.force)
    print(f"wrote {out} (load with GPT2LMHeadModel.from_pretrained('{out}'))")
    if a.push:
        print(f"pushed to https://huggingface.co/{a.push}")
    return 0


def cmd_import_hf(a) -> int:
    from gptlab.config import config_from_run
    from gptlab.interop.hf import import_to_run

    run = import_to_run(a.hf_dir, a.run_dir, data_dir=a.data)
    cfg = config_from_run(run)
    m = cfg.model
    print(
        f"imported {a.hf_dir}: {m.n_layers} layers, {m.n_heads} heads, width {m.emb_dim}, context "
        f"{m.context_length}, vocab {m.vocab_size}, {'tied' if m.tie_weights else 'untied'} head"
    )
    print(f"run directory: {run}  (e.g. gptlab eval {run} --split test)")
    return 0


def register(sub) -> None:
    s = verb_parser(
        sub,
        "export",
        "write a run's latest checkpoint as a Hugging Face GPT-2 folder (optionally push it)",
        "gptlab export runs/tiny-cpu --out hf/tiny-cpu\n"
        "HF_TOKEN=hf_... gptlab export runs/tiny-cpu --out hf/tiny-cpu --push user/tiny-cpu",
    )
    s.add_argument("run", help="run directory")
    s.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty or an earlier export (a folder holding other files is refused)",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="write into --out even if it holds files gptlab did not "
        "write (its README.md, config.json and other export files are overwritten)",
    )
    s.add_argument("--push", metavar="REPO", help="also upload to this Hub model repo (token from $HF_TOKEN)")
    s.set_defaults(fn=cmd_export)

    s = verb_parser(
        sub,
        "import-hf",
        "turn a local Hugging Face GPT-2 folder into a run directory",
        "gptlab import-hf ~/models/gpt2 --run-dir runs/openai-gpt2 --data data/shakespeare\n"
        "gptlab eval runs/openai-gpt2 --split test",
    )
    s.add_argument("hf_dir", help="folder with config.json + model.safetensors or pytorch_model.bin")
    s.add_argument("--run-dir", required=True, help="run directory to create")
    s.add_argument("--data", help="prepared data folder recorded as the run's data.dir (default data/shakespeare)")
    s.set_defaults(fn=cmd_import_hf)
