"""Nothing overwritten, nothing mismatched: names that become paths stay inside their folder (experiment, ladder
and variant names, shard files of meta.json), the server answers only for the model it serves, and export,
experiment, ladder and prepare refuse a target holding files gptlab did not write (unless --force)."""

import json
import shutil

import openai
import pytest
import tomli_w
from conftest import tiny_overrides
from conftest_ft import Running, make_tiny_run
from openai import OpenAI

import gptlab.io
from gptlab import GptlabError
from gptlab.cli import main
from gptlab.config import parse_overrides
from gptlab.data.loader import TokenDataset


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptlab: error: ") and "\n" not in err, err
    return err


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def write_spec(folder, data, name="t", variants=None, ladder=None):
    base = parse_overrides(
        tiny_overrides(
            data, **{"train.tokens": 8 * 32 * 2, "train.checkpoint_interval": 100, "train.eval_interval": 100}
        )
    )
    (folder / "base.toml").write_text(tomli_w.dumps(base))
    spec = {
        "name": name,
        "base": "base.toml",
        "seeds": [1],
        "baseline": "baseline",
        "variants": variants or [{"name": "baseline"}],
    }
    if ladder:
        (folder / "target.toml").write_text(tomli_w.dumps({"model": {"preset": "gpt2-small"}}))
        spec["ladder"] = {
            "rungs": [{"n_layers": 1, "emb_dim": 16, "n_heads": 2}, {"n_layers": 1, "emb_dim": 64, "n_heads": 2}],
            "tokens": [8 * 32, 8 * 32],
            "target": {"config": "target.toml"},
        }
    p = folder / ("ladder.toml" if ladder else "exp.toml")
    p.write_text(tomli_w.dumps(spec))
    return p


# ---------------------------------------------------------------------------------------------- names -> paths
@pytest.mark.parametrize(
    "name, why",
    [
        ("../../victim", "contains a path separator"),
        ("/tmp/victim", "is an absolute path"),
        ("..", "names a folder above or the folder itself"),
        ("", "is empty"),
    ],
)
@pytest.mark.parametrize("verb", ["experiment", "sweep", "ladder"])
def test_experiment_ladder_and_sweep_names_stay_inside_experiments(
    small_data, tmp_path, monkeypatch, capsys, verb, name, why
):
    work = tmp_path / "home" / "work"
    (work / "specs").mkdir(parents=True)
    victim = tmp_path / "victim"  # what ../../victim reaches from work/experiments
    victim.mkdir()
    (victim / "report.md").write_text("my own report\n")
    spec = write_spec(work / "specs", small_data, name=name, ladder=verb == "ladder")
    monkeypatch.chdir(work)
    extra = ["--param", "lr", "--grid", "1e-3,2e-3"] if verb == "sweep" else []
    assert main([verb, str(spec), *extra]) == 2
    assert f"name {name!r}: {why}" in error_line(capsys)
    assert snapshot(victim) == {"report.md": b"my own report\n"}
    assert not (work / "experiments").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["home", "victim"]


@pytest.mark.parametrize("name", ["../../victim", "exp/../../victim", "/tmp/victim", "exp//run"])
def test_a_train_config_name_stays_inside_out_dir(small_data, tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    sets = tiny_overrides(small_data, **{"train.tokens": 8 * 32 * 2}) + [f"name={name}"]
    assert main(["train", *[x for s in sets for x in ("--set", s)]]) == 2
    assert "config name: part" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and not (work / "runs").exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_a_variant_named_dot_or_dotdot_is_refused(small_data, tmp_path, capsys, name):
    spec = write_spec(tmp_path, small_data, variants=[{"name": "baseline"}, {"name": name}])
    assert main(["experiment", str(spec), "--dry-run"]) == 2
    assert "variants[1].name: expected a name of letters, digits, _ . + - (not . or ..)" in error_line(capsys)


def test_confined_refuses_a_symlink_out_of_the_parent(tmp_path):
    (tmp_path / "parent").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "parent" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GptlabError, match=r"experiment name 'link': resolves outside .*parent"):
        gptlab.io.confined(tmp_path / "parent", "link", "experiment name")
    assert gptlab.io.confined(tmp_path / "parent", "run-s1", "run id") == tmp_path / "parent" / "run-s1"


@pytest.fixture
def forged(small_data, tmp_path):
    """A copy of the prepared folder whose meta.json names, for the first train shard, a byte-identical copy of
    it outside the folder (so only the path gives it away)."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    meta = json.loads((data / "meta.json").read_text())
    shard = meta["splits"]["train"]["shards"][0]
    (tmp_path / "outside").mkdir()
    shutil.copy(data / shard["file"], tmp_path / "outside" / "stolen.bin")
    shard["file"] = "../outside/stolen.bin"
    (data / "meta.json").write_text(json.dumps(meta))
    return data


def test_shard_files_of_a_forged_meta_json_are_not_opened(forged, capsys):
    assert main(["verify", str(forged)]) == 2
    line = error_line(capsys)
    assert (
        f"{forged / 'meta.json'}: field splits.train.shards[0].file '../outside/stolen.bin': contains a path "
        "separator" in line
    )
    with pytest.raises(GptlabError, match=r"meta\.json: field splits\.train\.shards\[0\]\.file"):
        TokenDataset(forged, "val")  # the whole meta.json is checked, whichever split is read


def test_an_absolute_shard_path_is_refused(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["val"]["shards"][0]["file"] = "/etc/passwd"
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GptlabError, match=r"field splits\.val\.shards\[0\]\.file '/etc/passwd': is an absolute path"):
        TokenDataset(data, "val")


# ---------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from gptlab.posttrain.serve import make_server

    run = make_tiny_run(tmp_path_factory.mktemp("serve-names") / "tiny")
    with Running(make_server(run, port=0, max_tokens_limit=64, model_name="tiny-sft", device="cpu")) as url:
        yield url


@pytest.mark.parametrize("model", ["../../etc/passwd", "gpt-4", "tiny-sft/"])
def test_server_answers_only_for_the_model_it_serves(server, model):
    client = OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny-sft"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model=model, prompt="Hello", max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.param == "model" and model in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert e.value.code == "model_not_found"
    done = client.completions.create(model="tiny-sft", prompt="Hello", max_tokens=2, temperature=0)
    assert done.model == "tiny-sft" and done.usage.completion_tokens == 2


def test_a_request_without_model_is_for_the_model_served(server):
    import urllib.request

    req = urllib.request.Request(
        server + "/v1/completions",
        method="POST",
        data=json.dumps({"prompt": "Hello", "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and json.loads(r.read())["model"] == "tiny-sft"


# ---------------------------------------------------------------------------------------------- target folders
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("export") / "tiny")


def test_export_keeps_the_users_files_and_writes_its_own_folder_again(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "config.json").write_text('{"mine": true}\n')
    before = snapshot(out)
    assert main(["export", str(tiny_run), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert f"--out {out}: holds files gptlab did not write (README.md, config.json)" in line and "--force" in line
    assert snapshot(out) == before
    # gptlab's own export folder: written again
    mine = tmp_path / "mine"
    assert main(["export", str(tiny_run), "--out", str(mine)]) == 0
    assert main(["export", str(tiny_run), "--out", str(mine)]) == 0
    assert (mine / "model.safetensors").is_file() and (mine / gptlab.io.OWNER_FILE).is_file()
    # the user's choice
    assert main(["export", str(tiny_run), "--out", str(out), "--force"]) == 0
    assert (out / "README.md").read_text() != "my notes\n" and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("verb", ["export", "experiment", "ladder", "prepare"])
def test_a_file_given_as_the_output_folder_is_left_alone(small_data, tiny_run, tmp_path, capsys, verb):
    target = tmp_path / "existing_file.txt"
    target.write_text("keep me\n")
    spec = write_spec(tmp_path, small_data, ladder=verb == "ladder")
    args = {
        "export": ["export", str(tiny_run)],
        "experiment": ["experiment", str(spec)],
        "ladder": ["ladder", str(spec)],
        "prepare": ["prepare", "bundled", "--max-docs", "3"],
    }[verb]
    for force in ([], ["--force"]):
        assert main([*args, "--out", str(target), *force]) == 2
        assert f"{target}: exists and is not a folder" in error_line(capsys)
        assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no hidden .old


@pytest.mark.parametrize("verb", ["experiment", "ladder"])
def test_experiment_and_ladder_out_keep_a_foreign_report(small_data, tmp_path, capsys, verb):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("# my report\n")
    (out / "spec.toml").write_text("mine = true\n")
    before = snapshot(out)
    spec = write_spec(tmp_path, small_data, ladder=verb == "ladder")
    assert main([verb, str(spec), "--out", str(out)]) == 2
    assert f"--out {out}: holds files gptlab did not write (report.md, spec.toml)" in error_line(capsys)
    assert snapshot(out) == before


def test_an_experiment_reruns_in_its_own_folder_but_not_in_an_export(small_data, tiny_run, tmp_path, capsys):
    spec = write_spec(tmp_path, small_data)
    out = tmp_path / "exp"
    assert main(["experiment", str(spec), "--out", str(out), "--quiet"]) == 0
    assert main(["experiment", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "0 to run" in capsys.readouterr().out
    hf = tmp_path / "hf"
    assert main(["export", str(tiny_run), "--out", str(hf)]) == 0
    capsys.readouterr()
    assert main(["experiment", str(spec), "--out", str(hf)]) == 2
    assert f"--out {hf}: is a gptlab export folder, not an experiment folder" in error_line(capsys)
    assert not (hf / "runs").exists()


def test_prepare_into_a_regular_file_twice_gives_the_same_line(tmp_path, capsys):
    target = tmp_path / "existing_file.txt"
    target.write_text("keep me\n")
    lines = []
    for _ in range(2):
        assert main(["prepare", "bundled", "--max-docs", "3", "--out", str(target), "--quiet"]) == 2
        lines.append(error_line(capsys))
    assert lines[0] == lines[1] and "exists and is not a folder" in lines[0]
    assert target.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["existing_file.txt"]
