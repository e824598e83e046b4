"""Experiments: a matrix of variants x seeds on one base config, run one after another or N at a time,
resumable (finished runs skipped, partial ones resumed from their checkpoints, never duplicated), with every
result in a real SQLite file and a report written at the end.

Spec (TOML):

    name = "seed-interventions"
    base = "../tiny-cpu.toml"          # relative to the spec file
    seeds = [1, 2, 3]
    baseline = "baseline"              # the variant every other one is compared with
    [overrides.train]                  # optional: applied to every run (same budget for all)
    tokens = 1_000_000
    [[variants]]
    name = "baseline"
    interventions = []
    [[variants]]
    name = "grad_clip"
    interventions = ["grad_clip:max_norm=1.0"]
    reference = 3.678                  # optional published loss, shown in the report
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from gptlab import GptlabError
from gptlab.config import deep_merge, parse_overrides, read_config_toml, read_toml

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class Variant:
    name: str
    interventions: list[str] = field(default_factory=list)
    reference: float | None = None
    seeds: list[int] | None = None  # this variant's own seeds (default: the spec's)


@dataclass
class Spec:
    path: Path
    name: str
    base: Path
    seeds: list[int]
    baseline: str
    variants: list[Variant]
    overrides: dict

    def run_id(self, variant: str, seed: int) -> str:
        return f"{variant}-s{seed}"

    def matrix(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in (v.seeds or self.seeds)]

    def raw_config(self, variant: Variant, seed: int, extra: dict | None = None) -> dict:
        raw = read_config_toml(self.base)
        raw = deep_merge(raw, self.overrides)
        if extra:
            raw = deep_merge(raw, extra)
        raw = deep_merge(raw, {"name": f"{self.name}/{self.run_id(variant.name, seed)}",
                               "train": {"seed": seed, "progress": False}})
        raw["interventions"] = list(raw.get("interventions", [])) + list(variant.interventions)
        return raw


def _seed_list(seeds, where: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GptlabError(f"{where}: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GptlabError(f"{where}: duplicate seeds in {seeds}")
    return seeds


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    d = read_toml(p)
    where = str(p)
    allowed = {"name", "base", "seeds", "baseline", "variants", "overrides", "description"}
    for k in d:
        if k not in allowed:
            import difflib

            close = difflib.get_close_matches(k, allowed, n=1)
            raise GptlabError(f"{where}: {k}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if "base" not in d:
        raise GptlabError(f"{where}: base: missing (the base config TOML, relative to this file)")
    base = (p.parent / d["base"]).resolve()
    if not base.is_file():
        raise GptlabError(f"{where}: base: {d['base']} not found (looked for {base})")
    seeds = _seed_list(d.get("seeds", [1, 2, 3]), f"{where}: seeds")
    variants = []
    for i, v in enumerate(d.get("variants", [])):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not _NAME_RE.match(v["name"]):
            raise GptlabError(f"{where}: variants[{i}].name: expected a name of letters, digits, _ . + -")
        extra = set(v) - {"name", "interventions", "reference", "seeds"}
        if extra:
            raise GptlabError(f"{where}: variants[{i}].{sorted(extra)[0]}: unknown key "
                              f"(name, interventions, reference, seeds)")
        vseeds = _seed_list(v["seeds"], f"{where}: variants[{i}].seeds") if "seeds" in v else None
        ivs = v.get("interventions", [])
        if not isinstance(ivs, list) or not all(isinstance(x, str) for x in ivs):
            raise GptlabError(f"{where}: variants[{i}].interventions: expected a list of strings")
        ref = v.get("reference")
        if ref is not None and not isinstance(ref, (int, float)):
            raise GptlabError(f"{where}: variants[{i}].reference: expected a number")
        variants.append(Variant(v["name"], ivs, float(ref) if ref is not None else None, vseeds))
    if not variants:
        raise GptlabError(f"{where}: variants: at least one [[variants]] entry is needed")
    names = [v.name for v in variants]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise GptlabError(f"{where}: variants: duplicate name {sorted(dup)[0]}")
    baseline = d.get("baseline", "baseline")
    if baseline not in names:
        raise GptlabError(f"{where}: baseline: '{baseline}' is not one of the variants ({', '.join(names)})")
    overrides = d.get("overrides", {})
    if not isinstance(overrides, dict):
        raise GptlabError(f"{where}: overrides: expected a table")
    name = d.get("name", p.stem)
    spec = Spec(p, name, base, seeds, baseline, variants, overrides)
    # validate every run's config now: a typo fails before hours of training, not after
    for v in variants:
        _resolve(spec, v, seeds[0], where=f"{where}: variant {v.name}")
    return spec


def _resolve(spec: Spec, v: Variant, seed: int, extra: dict | None = None, where: str = ""):
    from gptlab.config import from_dict, resolve_preset, validate
    from gptlab.interventions import apply_interventions

    raw = spec.raw_config(v, seed, extra)
    cfg = from_dict(raw, where or str(spec.path))
    resolve_preset(cfg, set(raw.get("model", {})) - {"preset"}, where)
    apply_interventions(cfg, cfg.interventions, where)
    validate(cfg, where)
    return cfg


def _metrics_rows(run_dir: Path) -> list[dict]:
    from gptlab.io import read_jsonl

    by_step: dict[int, dict] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if "step" not in r or r.get("event") == "skipped_batch":
            continue
        row = by_step.setdefault(int(r["step"]), {"step": int(r["step"]), "tokens": r.get("tokens"),
                                                  "train_loss": None, "val_loss": None, "lr": None})
        for k in ("train_loss", "val_loss", "lr", "tokens"):
            if r.get(k) is not None:
                row[k] = r[k]
    return [by_step[k] for k in sorted(by_step)]


def record(db, spec: Spec, v: Variant, seed: int, run_dir: Path) -> dict:
    final = json.loads((run_dir / "final.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    row = {
        "run_id": spec.run_id(v.name, seed), "experiment": spec.name, "variant": v.name, "seed": seed,
        "interventions": json.dumps(v.interventions), "run_dir": str(run_dir), "config_hash": meta.get("config_hash"),
        "git_commit": meta.get("environment", {}).get("git_commit"), "params": final["params"],
        "tokens": final["tokens"], "flops": final["flops"], "train_loss": final.get("train_loss"),
        "val_loss": final["val_loss"], "test_loss": final["test_loss"], "wall_time": final.get("wall_time"),
        "tokens_per_s": final.get("tokens_per_s"), "finished": time.time(),
    }
    db.record_run(row, _metrics_rows(run_dir))
    return row


def print_dry_run(spec: Spec, extra: dict) -> None:
    import torch

    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import flops_per_token, token_budget

    print(f"experiment {spec.name}: {len(spec.variants)} variants, {len(spec.matrix())} runs  (base {spec.base})")
    print(f"{'run':<30} {'params':>12} {'tokens':>14} {'FLOPs':>9} {'lr':>8} {'wd':>7} {'clip':>5} {'drop':>5} "
          f"{'sched':>8} {'prec':>5} {'published':>9}  interventions")
    total_flops = 0.0
    from gptlab.data.vocab import resolve_corpus_vocab

    for v, s in spec.matrix():
        cfg = _resolve(spec, v, s, extra)
        resolve_corpus_vocab(cfg)
        with torch.device("meta"):
            n = count_params(GPTModel(cfg.model))
        t = cfg.train
        tokens = token_budget(cfg, n)
        steps = math.ceil(tokens / (t.global_batch_size * cfg.model.context_length))
        tokens = steps * t.global_batch_size * cfg.model.context_length
        fl = flops_per_token(cfg.model) * tokens
        total_flops += fl
        ref = f"{v.reference:.3f}" if v.reference is not None else ""
        sched = t.schedule if not t.warmup_frac else f"{t.schedule}+w"
        print(f"{spec.run_id(v.name, s):<30} {n:>12,} {tokens:>14,} {fl:>9.2e} {t.lr:>8.2g} "
              f"{t.weight_decay:>7.5g} {t.grad_clip or '-':>5} {cfg.model.drop_rate:>5.2g} {sched:>8} "
              f"{t.precision:>5} {ref:>9}  {', '.join(v.interventions) or '-'}")
    cfg0 = _resolve(spec, spec.variants[0], spec.seeds[0], extra)
    if cfg0.data.vocab == "corpus" and resolve_corpus_vocab(cfg0) is None:
        print(f"(data.vocab = 'corpus' but {cfg0.data.dir} is not prepared yet: sizes above use the full vocabulary)")
    with torch.device("meta"):
        n0 = count_params(GPTModel(cfg0.model))
    if torch.cuda.is_available() or n0 < 50_000_000:
        rate = _measure_flops(cfg0)
        print(f"total {total_flops:.3e} FLOPs; this machine trains the base model at ~{rate:.2e} FLOP/s "
              f"-> estimated {total_flops / rate / 60:.1f} min run one after another")
    else:
        from gptlab.train.flops import PEAK_FLOPS

        node = 8 * PEAK_FLOPS["A100"] * 0.40
        print(f"total {total_flops:.3e} FLOPs; at 40% MFU on 8x A100 (bf16 peak 312 TFLOP/s each): "
              f"~{total_flops / node / 3600:.1f} node-hours (not measured: no GPU here)")


def _measure_flops(cfg) -> float:
    """FLOP/s of the base model's training step (gptlab's own: forward_backward + its optimizers) on this
    machine, best of two after one warm-up (for time estimates)."""
    import torch

    from gptlab.model import GPTModel
    from gptlab.train import (
        build_optimizers,
        forward_backward,
        resolve_device,
        resolve_precision,
    )
    from gptlab.train.flops import flops_per_token

    dev = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dev)
    torch.manual_seed(0)
    model = GPTModel(cfg.model).to(dev)
    opts = build_optimizers(model, cfg, dev)
    T, B = cfg.model.context_length, cfg.train.micro_batch_size
    x = torch.randint(0, cfg.model.vocab_size, (B, T), device=dev)
    times = []
    for _ in range(3):
        t0 = time.time()
        forward_backward(model, x, x, precision, dev)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
    return flops_per_token(cfg.model) * B * T / min(times[1:])


def run_experiment(spec_path: str, out: str | None = None, dry_run: bool = False, parallel: int = 1,
                   overrides: list[str] | None = None, quiet: bool = False, only: list[str] | None = None) -> int:
    from gptlab.experiments.report import format_table, write_report, yardstick_summary
    from gptlab.experiments.results import ResultsDB

    spec = load_spec(spec_path)
    if only:
        names = [v.name for v in spec.variants]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise GptlabError(f"--only: unknown variant '{unknown[0]}'; variants: {', '.join(names)}")
        keep = set(only) | {spec.baseline}  # the baseline always runs: every comparison needs it
        spec.variants = [v for v in spec.variants if v.name in keep]
    extra = parse_overrides(overrides or [])
    if extra:
        for v in spec.variants:
            _resolve(spec, v, spec.seeds[0], extra, where=f"--set (variant {v.name})")
    if dry_run:
        print_dry_run(spec, extra)
        return 0
    exp_dir = Path(out or Path("experiments") / spec.name)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "runs").mkdir(exist_ok=True)
    (exp_dir / "configs").mkdir(exist_ok=True)
    from gptlab.io import atomic_write_text

    atomic_write_text(exp_dir / "spec.toml", spec.path.read_text())

    # data once, before any run starts (runs in parallel must not race to prepare it)
    cfg0 = _resolve(spec, spec.variants[0], spec.seeds[0], extra)
    if not (Path(cfg0.data.dir) / "meta.json").exists():
        if not cfg0.data.source:
            raise GptlabError(f"data.dir: {cfg0.data.dir} has no meta.json; run `gptlab prepare` first")
        from gptlab.data.prepare import prepare

        prepare([s.strip() for s in cfg0.data.source.split(",")], cfg0.data.dir, progress=not quiet)

    db = ResultsDB(exp_dir / "results.sqlite")
    done = db.run_ids()
    todo = [(v, s) for v, s in spec.matrix() if spec.run_id(v.name, s) not in done]
    print(f"experiment {spec.name}: {len(spec.matrix())} runs, {len(spec.matrix()) - len(todo)} already done, "
          f"{len(todo)} to run ({parallel} at a time) -> {exp_dir}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, parallel))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running: list[tuple[subprocess.Popen, Variant, int, Path, float]] = []
    failures = []
    queue = list(todo)
    t_start = time.time()
    n_done = 0
    try:
        while queue or running:
            while queue and len(running) < max(1, parallel):
                v, s = queue.pop(0)
                rid = spec.run_id(v.name, s)
                cfg_path = exp_dir / "configs" / f"{rid}.toml"
                atomic_write_text(cfg_path, tomli_w.dumps(spec.raw_config(v, s, extra)))
                run_dir = exp_dir / "runs" / rid
                log = open(exp_dir / "runs" / f"{rid}.log", "a")
                cmd = [sys.executable, "-m", "gptlab", "train", "--config", str(cfg_path), "--run-dir", str(run_dir),
                       "--resume", "--quiet"]
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), v, s, run_dir,
                                time.time()))
                log.close()
            time.sleep(0.2)
            for item in list(running):
                proc, v, s, run_dir, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                rid = spec.run_id(v.name, s)
                n_done += 1
                if proc.returncode == 0 and (run_dir / "final.json").exists():
                    row = record(db, spec, v, s, run_dir)
                    eta = (time.time() - t_start) / n_done * (len(todo) - n_done)
                    print(f"[{n_done}/{len(todo)}] {rid:<30} test {row['test_loss']:.4f}  val {row['val_loss']:.4f}  "
                          f"{time.time() - t0:6.1f}s  ETA {eta / 60:.1f} min", flush=True)
                else:
                    tail = (exp_dir / "runs" / f"{rid}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                    failures.append(rid)
                    print(f"[{n_done}/{len(todo)}] {rid:<30} FAILED (exit {proc.returncode}): {tail[0]}", flush=True)
    except KeyboardInterrupt:
        for proc, *_ in running:
            proc.terminate()
        for proc, *_ in running:
            proc.wait()
        db.close()
        print("interrupted: finished runs are recorded; re-run the same command to continue", file=sys.stderr)
        return 130
    db.close()
    refs = {v.name: v.reference for v in spec.variants if v.reference is not None}
    try:
        res = write_report(exp_dir, baseline=spec.baseline, experiment=spec.name, reference=refs or None,
                           title=spec.name)
    except GptlabError as e:
        print(f"report not written: {e}", file=sys.stderr)
        return 1
    print(format_table(res["rows"], style="text"))
    print(yardstick_summary(res["yardsticks"]))
    print(f"report: {res['markdown']}  {res['html']}")
    if failures:
        print(f"{len(failures)} run(s) failed: {', '.join(failures)} (logs in {exp_dir / 'runs'}); re-run to retry",
              file=sys.stderr)
        return 1
    return 0
