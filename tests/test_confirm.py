"""The confirmation plan at the target (analysis/confirm.py, report/confirm.py) and `gptlab ladder
--emit-confirmation` (spec/confirm.py), on constructed data whose answer is known, and the emitted spec run for real
on a tiny CPU target."""

import json
import math
import re
import sqlite3

import numpy as np
import pytest
import tomli_w
from test_ladder import record, shifted, write_ladder

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.experiments.analysis import confirm
from gptlab.experiments.analysis.seeds import ANCHOR_SD_124M
from gptlab.experiments.analysis.sequential import schedule
from gptlab.experiments.report.confirm import write_confirmation_spec
from gptlab.experiments.report.ladder import write_ladder_report
from gptlab.experiments.specs.confirm import HEADER, check_target_file
from gptlab.experiments.specs.ladder import load_ladder
from gptlab.plan import PRICE_PER_GPU_HOUR


def runs_with_sd(sd: float, n: int, flops: float, mean: float = 5.0) -> list[dict]:
    """n runs whose losses have sample SD exactly `sd`."""
    z = np.linspace(-1, 1, n)
    z = z / np.std(z, ddof=1) if n > 1 else z * 0
    return [{"test_loss": mean + sd * x, "flops": flops} for x in z]


def test_an_sd_that_halves_per_rung_is_predicted_at_the_target_within_its_interval():
    """SD 0.04, 0.02, 0.01 at 1e12, 1e13, 1e14 FLOPs (20 seeds each): the trend gives 0.0025 at 1e16 inside its
    interval; one rung with 2+ seeds fits no trend, and the plan says it uses the 124M anchor band."""
    base = [runs_with_sd(0.04 / 2**k, 20, 10.0 ** (12 + k)) for k in range(3)]
    rows = confirm.rung_sds(base)
    assert [(c, round(s, 6), n) for c, s, n in rows] == [(1e12, 0.04, 20), (1e13, 0.02, 20), (1e14, 0.01, 20)]
    sd = confirm.predict_sd(rows, 1e16)
    assert sd["source"] == "trend" and sd["low"] < 0.0025 < sd["high"]
    assert sd["sd"] == pytest.approx(0.0025, rel=0.05) and sd["high"] < 0.01
    thin = confirm.predict_sd(confirm.rung_sds([runs_with_sd(0.04, 5, 1e12), runs_with_sd(0.0, 1, 1e13)]), 1e16)
    assert thin["source"] == "anchor" and (thin["low"], thin["high"]) == ANCHOR_SD_124M
    assert thin["sd"] == ANCHOR_SD_124M[1] and "anchor band" in thin["note"]


def test_a_screens_large_delta_is_sized_down_to_the_smallest_effect_worth_confirming():
    """A tiny model's Δ of -0.5 nats says little about the target's: the plan is sized for min_effect (0.014 by
    default, the seed's gradient clipping), which needs more seeds than -0.5 would; a Δ already smaller is kept."""
    e = {"variant": "v", "per_rung": [{"diff": -0.5}], "extrapolation": None}
    per = {"hours": 1.0, "gpus": 8, "cost": 10.0}
    capped = confirm.lead_plan(e, {"sd": 0.01}, math.nan, 0.05, 1, per)
    assert capped["delta"] == -0.014 and capped["delta_source"].startswith("min_effect (measured at the largest rung")
    loose = confirm.lead_plan(e, {"sd": 0.01}, math.nan, 0.05, 1, per, min_effect=1.0)
    assert loose["delta"] == -0.5 and capped["n_fixed"] > loose["n_fixed"]
    small = {"variant": "v", "per_rung": [{"diff": -0.005}], "extrapolation": None}
    assert confirm.lead_plan(small, {"sd": 0.002}, math.nan, 0.05, 1, per)["delta"] == -0.005


def test_an_sd_trend_too_uncertain_at_the_target_is_not_planned_with():
    """3 seeds per rung, SDs that rise and fall, extrapolated 6 decades: the trend's interval at the target spans
    more than two orders of magnitude, so the plan uses the anchor band's upper end and says why."""
    rows = confirm.rung_sds([runs_with_sd(sd, 3, 10.0 ** (11 + k)) for k, sd in enumerate((0.01, 0.03, 0.015))])
    sd = confirm.predict_sd(rows, 1e18)
    assert sd["source"] == "anchor" and sd["sd"] == ANCHOR_SD_124M[1]
    assert sd["trend_high"] / sd["trend_low"] > confirm.MAX_SD_SPREAD and "too uncertain" in sd["note"]


def test_pooled_correlation_centres_each_rung():
    """The rungs' means move together (5.0 -> 4.0 for both), but within each rung the variant's loss falls where
    the baseline's rises: the pooled ρ is -1, not the +1 the rung means alone would give."""
    pairs = [([5.0, 5.1, 5.2], [5.2, 5.1, 5.0]), ([4.0, 4.05, 4.1], [4.1, 4.05, 4.0])]
    rho, n = confirm.pooled_correlation(pairs)
    assert rho == pytest.approx(-1.0) and n == 6
    rho, _ = confirm.pooled_correlation([([5.0, 5.1, 5.2], [5.01, 5.12, 5.19]), ([4.0, 4.1], [4.0, 4.1])])
    assert 0.9 < rho < 1.0


def test_more_paired_correlation_needs_fewer_seeds():
    """The same Δ and SD: with ρ 0.9 the paired design needs fewer seeds than with ρ 0.3, and is chosen."""
    e = {"variant": "v", "per_rung": [{"diff": -0.003}], "extrapolation": None}
    sd = {"sd": 0.002, "low": 0.0014, "high": 0.002}
    per_run = {"hours": 2.0, "gpus": 8, "cost": 2.0 * 8 * 1.3}
    lo, hi = (confirm.lead_plan(e, sd, rho, 0.05, 1, per_run) for rho in (0.3, 0.9))
    assert hi["design"] == "paired" and hi["n_fixed"] < lo["n_fixed"]
    assert lo["seeds"]["independent"] == hi["seeds"]["independent"]
    assert hi["seeds"]["paired"] < lo["seeds"]["paired"]
    # the sequential design's expected seeds lie below its max, and its max keeps the power
    for p in (lo, hi):
        seq = p["sequential"]
        assert seq["expected"] < seq["max_seeds"] and seq["power"] >= confirm.PLAN_POWER
        assert p["runs"] == 2 * p["n_fixed"] and p["cost"] == pytest.approx(p["runs"] * 2.0 * 8 * 1.3)


def constructed(tmp_path, small_data, confirm_table=None, paired=False, target=None, gain=0.2):
    """A 2-rung ladder with recorded results: `good` gains `gain` nats at both rungs, `bad` loses 0.05."""
    ladder = {"bootstrap": 50, "target": target or {"config": "target.toml"}}
    if confirm_table is not None:
        ladder["confirm"] = confirm_table
    variants = [
        {"name": "baseline"},
        {"name": "good", "interventions": ["no_dropout"]},
        {"name": "bad", "interventions": ["grad_clip:max_norm=1.0"]},
    ]
    spec = write_ladder(tmp_path, small_data, ladder, seeds=(1, 2, 3), variants=variants)
    if paired:
        d = __import__("tomllib").loads(spec.read_text())
        d["design"] = "paired"
        spec.write_text(tomli_w.dumps(d))
    lad = load_ladder(spec)
    base = [[5.01, 5.00, 4.99], [4.51, 4.50, 4.49]]
    out = tmp_path / "out"
    record(lad, out, {"baseline": base, "good": shifted(base, (-gain, -gain)), "bad": shifted(base, (0.05, 0.05))})
    return spec, lad, out


def test_the_cost_is_runs_times_gpu_hours_times_the_price(small_data, tmp_path):
    """[ladder.confirm] on 4 x H100: the plan's cost is its runs x the GPU-hours `gptlab plan` gives one run x the
    H100's price per GPU-hour; only the lead is planned for, and the report and ladder.json say so."""
    _, lad, out = constructed(tmp_path, small_data, {"gpu": "H100", "gpus": 4})
    res = write_ladder_report(lad, out)
    plan = res["analysis"]["confirmation"]
    (lead,) = plan["leads"]
    per = plan["per_run"]
    assert lead["variant"] == "good" and per["gpus"] == 4 and per["gpu_type"] == "H100"
    gpu_hours = per["hours"] * 4
    assert lead["gpu_hours"] == pytest.approx(lead["runs"] * gpu_hours)
    assert lead["cost"] == pytest.approx(lead["runs"] * gpu_hours * PRICE_PER_GPU_HOUR["H100"])
    assert plan["total"]["cost"] == pytest.approx(plan["total"]["runs"] * gpu_hours * PRICE_PER_GPU_HOUR["H100"])
    md = (out / "report.md").read_text()
    assert "## Confirmation plan at the target" in md and "Not planned for: bad." in md
    row = [x for x in md.splitlines() if x.startswith("| good |")][-1]  # the last table: the confirmation plan
    assert f"${lead['cost']:,.0f}" in row and "not measured" in row  # an independent ladder measures no ρ
    js = json.loads((out / "ladder.json").read_text())["confirmation"]
    assert js["leads"][0]["variant"] == "good" and js["total"]["runs"] == plan["total"]["runs"]


@pytest.mark.parametrize(
    "table, match",
    [
        ({"gpu": "Z80"}, r"ladder\.confirm\.gpu: unknown GPU type 'Z80'; expected one of A100, "),
        ({"gpus": 0}, r"ladder\.confirm\.gpus: expected a whole number of GPUs per run from 1 to 65536, got 0"),
        ({"gpus": 2.5}, r"ladder\.confirm\.gpus: expected a whole number"),
        ({"mfu": 1.5}, r"ladder\.confirm\.mfu: expected a fraction in \(0, 1\], got 1\.5"),
        ({"price": -1}, r"ladder\.confirm\.price: expected a positive price in USD per GPU-hour, got -1"),
        ({"gpu": "B200"}, r"ladder\.confirm\.gpu: no price known for 'B200' .*give price"),
        ({"prices": 1.0}, r"ladder\.confirm\.prices: unknown key \(did you mean 'price'\?\)"),
        ({"min_effect": 0}, r"ladder\.confirm\.min_effect: expected a gain in nats, above 0 and below 10, got 0"),
    ],
)
def test_bad_confirm_settings_are_one_line_errors(small_data, tmp_path, table, match):
    _, lad, out = constructed(tmp_path, small_data, table)
    with pytest.raises(GptlabError, match=match) as e:
        write_ladder_report(lad, out)
    assert "\n" not in str(e.value) and str(lad.path) in str(e.value)


def test_a_mistyped_confirm_table_stops_the_ladder_before_any_run(small_data, tmp_path, capsys):
    """Checked when the ladder is loaded (a dry run too), not only when the report is written after the runs."""
    _, lad, out = constructed(tmp_path, small_data, {"gpu": "Z80"})
    fresh = tmp_path / "fresh"
    assert main(["ladder", str(lad.path), "--dry-run"]) == 2
    assert "ladder.confirm.gpu: unknown GPU type 'Z80'" in capsys.readouterr().err
    assert main(["ladder", str(lad.path), "--out", str(fresh)]) == 2
    assert "ladder.confirm.gpu: unknown GPU type 'Z80'" in capsys.readouterr().err and not fresh.exists()


def test_a_ladder_without_leads_plans_and_emits_nothing(small_data, tmp_path):
    """`good` built to lose 0.1 and `bad` 0.05 at both rungs: no lead; the report says so and the spec is not
    written (one line); a Δ needing more seeds than a spec may list is not costed."""
    _, lad, out = constructed(tmp_path, small_data, gain=-0.1)
    res = write_ladder_report(lad, out)
    assert res["analysis"]["confirmation"]["leads"] == [] and res["analysis"]["confirmation"]["total"] is None
    assert "No variant is a lead: nothing to confirm." in (out / "report.md").read_text()
    with pytest.raises(GptlabError, match=r"confirm\.toml: no variant of .*ladder\.toml is a lead") as e:
        write_confirmation_spec(lad, res["analysis"], tmp_path / "confirm.toml")
    assert "\n" not in str(e.value) and not (tmp_path / "confirm.toml").exists()
    e = {"variant": "v", "per_rung": [{"diff": -1e-5}], "extrapolation": None}
    tiny = confirm.lead_plan(e, {"sd": 0.002}, math.nan, 0.05, 1, {"hours": 1.0, "gpus": 8, "cost": 10.4})
    assert tiny["n_fixed"] is None and "more than the 1000 a spec may list" in tiny["note"] and "cost" not in tiny


def test_the_emitted_file_is_never_a_foreign_one(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text(HEADER + "\nname = 'x'\n")
    assert check_target_file(own) == own
    foreign = tmp_path / "notes.toml"
    foreign.write_text("name = 'mine'\n")
    with pytest.raises(GptlabError, match=r"notes\.toml: exists and was not written by .*--force"):
        check_target_file(foreign)
    assert check_target_file(foreign, force=True) == foreign
    with pytest.raises(GptlabError, match=r"is a folder; expected a file"):
        check_target_file(tmp_path, force=True)


def test_paired_ladder_measures_rho_and_plans_the_paired_design(small_data, tmp_path):
    """A paired ladder whose seed-to-seed deviations are (+1, 0, -1) and (0, +1, -1) hundredths at both rungs
    (baseline, variant): ρ = 0.5 over the 6 pairs. The differences' SD is then the arms' own, so for a gain of
    one SD (2 rungs of 3 seeds fit no trend usable at the target: the anchor band's 0.002) the paired test's pairs
    are fewer than Welch's seeds per arm: the paired design."""
    _, lad, out = constructed(tmp_path, small_data, paired=True, gain=0.002)
    (lead,) = write_ladder_report(lad, out)["analysis"]["confirmation"]["leads"]
    assert lead["pairs"] == 6 and lead["rho"] == pytest.approx(0.5) and lead["design"] == "paired"
    assert lead["seeds"]["paired"] < lead["seeds"]["independent"] and lead["n_fixed"] == lead["seeds"]["paired"]


def test_emitted_confirmation_runs_end_to_end_on_a_cpu_target(small_data, tmp_path, capsys):
    """The ladder's target is a tiny CPU config (2 steps): `gptlab ladder --emit-confirmation` writes a spec at it (the
    baseline and the lead with the planned seeds), which `gptlab experiment` dry-runs and then runs for real, every
    planned run in its results database. A file gptlab did not write is not overwritten without --force."""
    spec, lad, out = constructed(tmp_path, small_data, target={"config": "base.toml", "tokens": 8 * 32 * 2})
    emitted = tmp_path / "confirm" / "confirm.toml"
    emitted.parent.mkdir()
    emitted.write_text("# my own notes\n")
    ladder = ["ladder", str(spec), "--out", str(out), "--quiet", "--emit-confirmation", str(emitted)]
    assert main(ladder) == 2
    assert "exists and was not written by `gptlab ladder --emit-confirmation`" in capsys.readouterr().err
    assert emitted.read_text() == "# my own notes\n"
    assert main([*ladder, "--force"]) == 0
    printed = capsys.readouterr().out
    assert f"confirmation spec: {emitted}" in printed
    plan = json.loads((out / "ladder.json").read_text())["confirmation"]
    text = emitted.read_text()
    assert text.startswith("# confirmation at the target") and "--until-decided --first-look" in text
    d = __import__("tomllib").loads(text)
    assert d["base"] == "../base.toml" and d["design"] == plan["total"]["design"]
    assert d["overrides"] == {"train": {"tokens": 512}}  # the ladder's target.tokens
    assert [v["name"] for v in d["variants"]] == ["baseline", "good"]
    n = plan["total"]["seeds"]
    assert d["seeds"] == list(range(1, n + 1)) and plan["total"]["runs"] == 2 * n
    # rewriting its own file needs no --force
    assert main(ladder) == 0
    capsys.readouterr()

    assert main(["experiment", str(emitted), "--dry-run"]) == 0
    assert f"{2 * n} runs" in capsys.readouterr().out.replace("\n", " ")
    # the header's sequential alternative runs the file unedited: first look at the plan's first r seeds per arm
    seq = next(line for line in text.splitlines() if "--until-decided" in line).lstrip("#").split()
    assert seq[:3] == ["gptlab", "experiment", str(emitted)]
    args = seq[2:]
    del args[args.index("--gpus-per-run") : args.index("--gpus-per-run") + 2]  # no GPU here
    assert main(["experiment", *args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    r, m = plan["total"]["seeds_per_round"], plan["total"]["max_seeds"]
    assert r < n  # else the fixed seeds would be the first look anyway
    first = [f"{v}-s{s}" for v in ("baseline", "good") for s in range(1, r + 1)]
    assert re.findall(r"^(\S+-s\d+) ", dry, re.M) == first
    assert f"looks at {', '.join(map(str, schedule(r, r, m)))} seeds" in dry
    exp = tmp_path / "confirm-exp"
    assert main(["experiment", str(emitted), "--out", str(exp), "--quiet"]) == 0
    with sqlite3.connect(exp / "results.sqlite") as c:
        got = sorted(c.execute("select variant, seed, test_loss from runs").fetchall())
    assert [(v, s) for v, s, _ in got] == [(v, s) for v in ("baseline", "good") for s in range(1, n + 1)]
    assert all(math.isfinite(x) for _, _, x in got)
