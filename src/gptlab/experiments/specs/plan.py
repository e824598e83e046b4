"""The plans of `gptlab experiment --dry-run` and `gptlab ladder --dry-run`, returned as lines for the CLI to
print: the matrix with each run's size, budget and recipe, and the total cost, timed on this machine's own
training step where that is practical, otherwise estimated for 8x A100 (a ladder: 1x H100)."""

from __future__ import annotations

import time

from gptlab.experiments.specs.experiment import Spec
from gptlab.experiments.specs.ladder import MIN_SPAN, Ladder
from gptlab.experiments.specs.matrix import PlannedRun

_MEASURABLE_PARAMS = 50_000_000  # without a GPU, time the step only for models below this size


def dry_run_lines(spec: Spec, planned: list[PlannedRun]) -> list[str]:
    """The plan of `gptlab experiment --dry-run` of the planned matrix (matrix.py): a header, one line per run,
    and the total cost."""
    import torch

    from gptlab.model import GPTModel, count_params

    lines = [f"experiment {spec.name}: {len(spec.variants)} variants, {len(planned)} runs  (base {spec.base})"]
    lines.append(
        f"{'run':<30} {'params':>12} {'tokens':>14} {'FLOPs':>9} {'lr':>8} {'wd':>7} {'clip':>5} {'drop':>5} "
        f"{'sched':>8} {'prec':>5} {'published':>9}  interventions"
    )
    total_flops = 0.0
    for p in planned:
        line, fl = _run_line(p)
        lines.append(line)
        total_flops += fl
    cfg0, _, vocab0 = planned[0].resolved
    if cfg0.data.vocab == "corpus" and vocab0 is None:
        lines.append(
            f"(data.vocab = 'corpus' but {cfg0.data.dir} is not prepared yet: sizes above use the full vocabulary)"
        )
    with torch.device("meta"):
        n0 = count_params(GPTModel(cfg0.model))
    if torch.cuda.is_available() or n0 < _MEASURABLE_PARAMS:
        rate = _measure_flops(cfg0)
        lines.append(
            f"total {total_flops:.3e} FLOPs; this machine trains the base model at ~{rate:.2e} FLOP/s "
            f"-> estimated {total_flops / rate / 60:.1f} min run one after another"
        )
    else:
        from gptlab.train.flops import PEAK_FLOPS

        node = 8 * PEAK_FLOPS["A100"] * 0.40
        lines.append(
            f"total {total_flops:.3e} FLOPs; at 40% MFU on 8x A100 (bf16 peak 312 TFLOP/s each): "
            f"~{total_flops / node / 3600:.1f} node-hours (not measured: no GPU here)"
        )
    return lines


def _run_line(p: PlannedRun) -> tuple[str, float]:
    """One run's line of the matrix and its training FLOPs."""
    import torch

    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import flops_per_token, planned_steps

    cfg, v = p.cfg, p.variant
    with torch.device("meta"):
        n = count_params(GPTModel(cfg.model))
    t = cfg.train
    tokens_per_step = t.global_batch_size * cfg.model.context_length
    tokens = planned_steps(cfg, n) * tokens_per_step
    fl = flops_per_token(cfg.model) * tokens
    ref = f"{v.reference:.3f}" if v.reference is not None else ""
    sched = t.schedule if not t.warmup_frac else f"{t.schedule}+w"
    line = (
        f"{p.run_id:<30} {n:>12,} {tokens:>14,} {fl:>9.2e} {t.lr:>8.2g} "
        f"{t.weight_decay:>7.5g} {t.grad_clip or '-':>5} {cfg.model.drop_rate:>5.2g} {sched:>8} "
        f"{t.precision:>5} {ref:>9}  {', '.join(v.interventions) or '-'}"
    )
    return line, fl


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


RUN_OVERHEAD_S = 8.0  # CPU time estimates: process start, data and the test evaluation of one tiny run (2 cores)
_MEASURABLE_STEP_FLOPS = 5e10  # without a GPU, time a rung's step only below this (a few seconds on 2 cores)


def ladder_dry_run_lines(lad: Ladder, extra: dict) -> list[str]:
    """The plan of `gptlab ladder --dry-run`: a line per rung, the spans, the target and the total cost."""
    import torch

    from gptlab.train.flops import PEAK_FLOPS, flops_per_token

    spec = lad.spec
    lines = [
        f"ladder {lad.name}: {len(lad.rungs)} rungs x {len(spec.variants)} variants, "
        f"{sum(len(r.spec.matrix()) for r in lad.rungs)} runs  (base {spec.base})"
    ]
    lines.append(
        f"{'rung':<7} {'non-emb params':>14} {'params':>11} {'tokens/run':>11} {'FLOPs/run':>9} {'runs':>5} "
        f"{'FLOPs':>9} {'est. min':>8}  model"
    )
    total_f, total_s, n_timed, unprepared = 0.0, 0.0, 0, None
    for r in lad.rungs:
        runs = len(r.spec.matrix())
        fl = r.flops * runs
        cfg, _, vocab = r.spec.resolve(r.spec.variants[0], r.spec.seeds[0], extra)
        if vocab is None and cfg.data.vocab == "corpus":
            unprepared = cfg.data.dir
        step_flops = flops_per_token(cfg.model) * cfg.train.micro_batch_size * cfg.model.context_length
        if torch.cuda.is_available() or (r.params < _MEASURABLE_PARAMS and step_flops < _MEASURABLE_STEP_FLOPS):
            secs = fl / _measure_flops(cfg) + (0 if torch.cuda.is_available() else RUN_OVERHEAD_S * runs)
            n_timed += 1
        else:
            secs = fl / (PEAK_FLOPS["H100"] * 0.40)
        total_f, total_s = total_f + fl, total_s + secs
        lines.append(
            f"{r.name:<7} {r.non_embedding:>14,} {r.params:>11,} {r.tokens:>11,} {r.flops:>9.2e} {runs:>5} "
            f"{fl:>9.2e} {secs / 60:>8.1f}  {r.describe()}"
        )
    if unprepared:
        lines.append(
            f"(data.vocab = 'corpus' but {unprepared} is not prepared yet: sizes above use the full vocabulary)"
        )
    c_max = lad.rungs[-1].flops
    lines.append(
        f"non-embedding span {lad.span:.1f}x{'' if lad.span >= MIN_SPAN else f' (< {MIN_SPAN:g}x)'}; "
        f"compute span {c_max / lad.rungs[0].flops:.1f}x per run"
    )
    lines.append(
        f"target {lad.target_config.name}: {lad.target_params:,} params, {lad.target_tokens:.3g} tokens, "
        f"{lad.target_flops:.3e} FLOPs = {lad.target_flops / c_max:.3g}x the largest rung"
    )
    if n_timed == len(lad.rungs):
        how = "this machine's measured FLOP/s for each rung's model" + (
            "" if torch.cuda.is_available() else f" + {RUN_OVERHEAD_S:g} s per run for start and test evaluation"
        )
    else:
        how = (
            f"{len(lad.rungs) - n_timed} rung(s) too big to time without a GPU at 40% MFU of 1x H100 (bf16 peak "
            f"989 TFLOP/s), {n_timed} timed on this machine"
        )
    lines.append(f"total {total_f:.3e} FLOPs; estimated {total_s / 60:.1f} min run one after another ({how})")
    return lines
