"""Nothing silently wrong with data: the corpus vocabulary is keyed by the train shards it came from and holds the
train split only; eval says how many tokens lie outside a run's vocabulary; a failed prepare leaves the old dataset
as it was; shards are checked (ids in range always, sha256 before training and on `gptlab verify`); out-of-space
and read-only errors are one line naming the path."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_overrides

from gptlab import GptlabError
from gptlab.cli import main
from gptlab.data import TokenDataset, prepare
from gptlab.data.tokenizer import EOT_ID, tokenizer_hash

WORDS = [
    "river",
    "mill",
    "letter",
    "harvest",
    "market",
    "apples",
    "bread",
    "bridge",
    "village",
    "harbour",
    "winter",
    "wells",
    "wool",
    "lunch",
    "teacher",
    "train",
    "storm",
    "notebook",
    "square",
    "oak",
]


def english_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"Story {i}: " + " ".join(rng.choice(WORDS, 60)) + "." for i in range(n)]


def number_docs(n: int, seed: int = 1) -> list[str]:
    """Text whose GPT-2 tokens are mostly absent from English prose or Shakespeare."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"{x}€{y}" for x, y in rng.integers(10_000, 99_999, (2, 80)).T) for _ in range(n)]


def jsonl(path: Path, docs: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Anything a prepare left beside its output folder (staging or swapped-out copies)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def train_ids(data_dir: Path) -> np.ndarray:
    ds = TokenDataset(data_dir, "train")
    return np.union1d(np.unique(ds.get(0, len(ds))), [EOT_ID])


def hand_prepared(path: Path, train: list[int], test: list[int], **shard_extra) -> Path:
    """A prepared folder written by hand (one shard per split), e.g. with ids no prepare would write."""
    path.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, toks in (("train", train), ("val", train), ("test", test)):
        data = np.asarray(toks, dtype="<u2").tobytes()
        (path / f"{split}_000000.bin").write_bytes(data)
        splits[split] = {
            "tokens": len(toks),
            "documents": 1,
            "shards": [
                {
                    "file": f"{split}_000000.bin",
                    "tokens": len(toks),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    **shard_extra,
                }
            ],
        }
    (path / "meta.json").write_text(
        json.dumps(
            {
                "format": 1,
                "tokenizer": "gpt2",
                "tokenizer_hash": tokenizer_hash(),
                "eot_id": EOT_ID,
                "dtype": "uint16",
                "vocab_size": 50257,
                "sources": [],
                "split_rule": {},
                "splits": splits,
            }
        )
    )
    return path


def train_cli(data_dir, run_dir: Path, **extra) -> int:
    argv = ["train", "--run-dir", str(run_dir)]
    for s in tiny_overrides(str(data_dir), **extra):
        argv += ["--set", s]
    return main(argv)


# ------------------------------------------------------------------------------------------------
# corpus vocabulary
# ------------------------------------------------------------------------------------------------
def test_reprepare_into_same_folder_rebuilds_corpus_vocabulary(tmp_path):
    """The issue's case: `prepare` into a folder that held other data must not reuse that data's vocabulary
    (it mapped most tokens to <|endoftext|>: test loss 0.81 against a unigram baseline of 6.41)."""
    from gptlab.data.vocab import corpus_vocab

    out = tmp_path / "data"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(40))], str(out), progress=False, workers=1)
    corpus_vocab(out)
    prepare([jsonl(tmp_path / "b.jsonl", number_docs(40))], str(out), progress=False, workers=1)
    np.testing.assert_array_equal(corpus_vocab(out).ids, train_ids(out))


def test_corpus_vocabulary_cache_of_other_data_is_not_reused(tmp_path):
    """A cache that was derived from other shards (copied, or left by an older gptlab) is rebuilt, not trusted."""
    from gptlab.data import vocab

    a, b = tmp_path / "a", tmp_path / "b"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(40))], str(a), progress=False, workers=1)
    prepare([jsonl(tmp_path / "b.jsonl", number_docs(40))], str(b), progress=False, workers=1)
    vocab.corpus_vocab(a)
    (b / vocab.CACHE).write_bytes((a / vocab.CACHE).read_bytes())
    np.testing.assert_array_equal(vocab.corpus_vocab(b).ids, train_ids(b))
    np.save(b / "corpus_vocab.npy", vocab.corpus_vocab(a).ids)  # the unkeyed cache file of earlier versions
    np.testing.assert_array_equal(vocab.corpus_vocab(b).ids, train_ids(b))


def test_corpus_vocabulary_comes_from_the_train_split_only(small_data):
    from gptlab.data.vocab import corpus_vocab

    vm = corpus_vocab(small_data)
    np.testing.assert_array_equal(vm.ids, train_ids(Path(small_data)))
    test = TokenDataset(small_data, "test")
    assert vm.count_outside(test, 0, len(test)) > 0  # the test split has tokens train never saw


# ------------------------------------------------------------------------------------------------
# eval says how many tokens are outside the run's vocabulary
# ------------------------------------------------------------------------------------------------
OUTSIDE = re.compile(r"([\d,]+) of ([\d,]+) (\w+) tokens \(([\d.]+)%\) are outside the run's vocabulary")


@pytest.fixture(scope="module")
def corpus_run(small_data, tmp_path_factory):
    import contextlib
    import io

    run, out = tmp_path_factory.mktemp("runs") / "tiny", io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_cli(small_data, run) == 0
    return run, out.getvalue()


def expected_outside(data_dir, run_data, split: str, n_tokens: int) -> int:
    known = np.zeros(1 << 16, bool)
    known[train_ids(Path(run_data))] = True
    ds = TokenDataset(data_dir, split)
    return int((~known[ds.get(0, n_tokens)]).sum())


def test_train_and_eval_say_how_many_tokens_are_outside_the_vocabulary(small_data, corpus_run, capsys):
    corpus_run, train_out = corpus_run
    final = json.loads((corpus_run / "final.json").read_text())
    n_eval = 4 * 8 * 32 + 1  # eval.batches x eval.batch_size x context + 1 (tiny_overrides)
    want = expected_outside(small_data, small_data, "test", n_eval)
    assert (final["test_tokens_outside_vocab"], final["test_tokens_evaluated"]) == (want, n_eval)
    m = OUTSIDE.search(train_out)
    assert m and (int(m[1].replace(",", "")), int(m[2].replace(",", "")), m[3]) == (want, n_eval, "test")

    assert main(["eval", str(corpus_run), "--split", "test", "--batches", "0", "--device", "cpu"]) == 0
    n_all = (len(TokenDataset(small_data, "test")) - 1) // 32 * 32 + 1
    m = OUTSIDE.search(capsys.readouterr().err)
    want_all = expected_outside(small_data, small_data, "test", n_all)
    assert want_all > 0 and m and (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) == (want_all, n_all)


def test_eval_on_other_data_with_unknown_tokens_is_an_error_unless_allowed(small_data, corpus_run, capsys, tmp_path):
    corpus_run, _ = corpus_run
    other = tmp_path / "other"
    prepare([jsonl(tmp_path / "n.jsonl", number_docs(30))], str(other), test_frac=0.3, progress=False, workers=1)
    argv = ["eval", str(corpus_run), "--data", str(other), "--split", "test", "--batches", "2", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(
        r"^gptlab: error: .*other: .*outside the run's vocabulary.*"
        r"pass --allow-unknown-tokens",
        err,
    )
    assert main(argv + ["--allow-unknown-tokens", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    want = expected_outside(other, small_data, "test", 2 * 8 * 32 + 1)
    assert out["tokens_outside_vocab"] == want > 0.05 * out["tokens_evaluated"]
    assert OUTSIDE.search(cap.err)


# ------------------------------------------------------------------------------------------------
# prepare: the old dataset survives; sources inside the output folder are refused
# ------------------------------------------------------------------------------------------------
def test_failed_prepare_leaves_the_old_dataset_byte_identical(tmp_path):
    out = tmp_path / "data"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(20))], str(out), progress=False, workers=1)
    before = snapshot(out)
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(GptlabError, match=r"bad\.jsonl, line 2: not valid UTF-8"):
        prepare([str(tmp_path / "bad.jsonl")], str(out), progress=False, workers=1)
    assert snapshot(out) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("inside", ["train_000000.bin", "notes.txt"])
def test_source_inside_the_output_folder_is_refused(tmp_path, inside):
    out = tmp_path / "data"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(20))], str(out), progress=False, workers=1)
    if inside == "notes.txt":
        (out / inside).write_text("A note kept beside the shards.\n\nAnother paragraph.\n\nAnd a third.\n")
    before = snapshot(out)
    with pytest.raises(GptlabError, match=rf"{inside}: .*inside the output folder") as e:
        prepare([str(out / inside)], str(out), val_frac=0, test_frac=0, progress=False, workers=1)
    assert "\n" not in str(e.value)
    assert snapshot(out) == before


def test_prepare_refuses_to_replace_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "data"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "keep.txt").write_text("not a dataset")
    with pytest.raises(GptlabError, match=r"data: holds files that are not part of a prepared dataset \(mine\)"):
        prepare([jsonl(tmp_path / "a.jsonl", english_docs(20))], str(out), progress=False, workers=1)
    assert (out / "mine" / "keep.txt").read_text() == "not a dataset"


# ------------------------------------------------------------------------------------------------
# shards: ids in range (always), sha256 (verify, and before training on unverified data)
# ------------------------------------------------------------------------------------------------
def test_token_id_outside_the_vocabulary_is_one_line_naming_the_shard(tmp_path, capsys):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 5000, 4000).tolist()
    data = hand_prepared(tmp_path / "d", toks[:2000] + [60000] + toks[2000:], toks[:1000])
    with pytest.raises(GptlabError, match=r"train_000000\.bin.*token id 60000 >= 50257"):
        TokenDataset(data, "train")
    for vocab in ("corpus", "gpt2"):  # before: a raw IndexError (in the vocabulary scan or mid-training)
        assert train_cli(data, tmp_path / f"run-{vocab}", **{"data.vocab": vocab}) == 2
        assert re.search(r"^gptlab: error: shard .*train_000000\.bin: token id 60000 >= 50257", capsys.readouterr().err)


def test_prepare_records_each_shards_largest_id_and_opening_checks_it(tmp_path):
    out = tmp_path / "data"
    meta = prepare(
        [jsonl(tmp_path / "a.jsonl", english_docs(30))], str(out), shard_tokens=500, progress=False, workers=1
    )
    for info in meta["splits"].values():
        for sh in info["shards"]:
            assert sh["max_id"] == int(np.fromfile(out / sh["file"], "<u2").max())
    meta["splits"]["train"]["shards"][1]["max_id"] = 50300  # checked without reading the shard
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GptlabError, match=r"train_000001\.bin.*token id 50300 >= 50257"):
        TokenDataset(out, "train")


def corrupt_in_range(shard: Path) -> None:
    """Swap two different tokens: same size, same ids, different content."""
    a = np.fromfile(shard, "<u2")
    i = int(np.flatnonzero(a != a[0])[0])
    a[0], a[i] = a[i], a[0]
    a.tofile(shard)


def test_verify_names_a_changed_shard(tmp_path, capsys):
    out = tmp_path / "data"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(30))], str(out), shard_tokens=500, progress=False, workers=1)
    assert main(["verify", str(out)]) == 0
    assert re.search(r"\d+ shards.*sha256 as in meta\.json", capsys.readouterr().out)
    corrupt_in_range(out / "val_000000.bin")
    assert main(["verify", str(out)]) == 2
    assert re.fullmatch(
        r"shard \S+/val_000000\.bin: sha256 differs from meta\.json's.*\n"
        r"gptlab: error: \S+: 1 of \d+ shard\(s\) failed verification\n",
        capsys.readouterr().err,
    )


def test_training_verifies_data_it_has_not_verified_before(tmp_path, capsys):
    from gptlab.data.verify import RECORD, verify_data

    out = tmp_path / "data"
    prepare([jsonl(tmp_path / "a.jsonl", english_docs(60))], str(out), progress=False, workers=1)
    assert verify_data(out) > 0 and (out / RECORD).exists()
    assert verify_data(out) == 0  # recorded: the same shards (names, sizes, mtimes, hashes) are not hashed again
    corrupt_in_range(out / "train_000000.bin")
    assert train_cli(out, tmp_path / "run", **{"train.tokens": 8 * 32 * 2}) == 2
    assert re.search(
        r"gptlab: error: shard \S+/train_000000\.bin: sha256 differs from meta\.json", capsys.readouterr().err
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before the first step


# ------------------------------------------------------------------------------------------------
# out of space, read-only: one line naming the path (real small file systems; needs root)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path, mount):
    mount(tmp_path / "mnt", "size=1m")
    return tmp_path / "mnt"


def big_bin(path: Path, n_tokens: int) -> str:
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 50000, n_tokens).astype("<u2")
    toks[::500] = EOT_ID
    toks.tofile(path)
    return str(path)


def test_out_of_space_is_one_line_and_the_old_dataset_survives(tmpfs, tmp_path):
    out = tmpfs / "data"
    prepare([big_bin(tmp_path / "small.bin", 20_000)], str(out), progress=False, workers=1)
    before = snapshot(out)
    with pytest.raises(GptlabError, match=r"data: no space left on device .*needs about [\d.]+ MB") as e:
        prepare([big_bin(tmp_path / "big.bin", 600_000)], str(out), progress=False, workers=1)
    assert "\n" not in str(e.value)
    assert snapshot(out) == before and leftovers(out) == []


def test_read_only_output_is_one_line_naming_the_path(tmpfs, tmp_path):
    (tmpfs / "data").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(GptlabError, match=r"mnt.*Read-only file system") as e:
        prepare([big_bin(tmp_path / "small.bin", 20_000)], str(tmpfs / "data"), progress=False, workers=1)
    assert "\n" not in str(e.value)


def test_prepare_into_a_mount_point_replaces_its_files(tmpfs, tmp_path):
    """A mount point cannot be renamed: staging goes inside it and the finished files are moved into place."""
    prepare([big_bin(tmp_path / "a.bin", 20_000)], str(tmpfs), progress=False, workers=1)
    first = snapshot(tmpfs)
    meta = prepare([big_bin(tmp_path / "b.bin", 30_000)], str(tmpfs), shard_tokens=10_000, progress=False, workers=1)
    assert sorted(p.name for p in tmpfs.iterdir()) == sorted(
        ["meta.json"] + [sh["file"] for info in meta["splits"].values() for sh in info["shards"]]
    )
    assert snapshot(tmpfs) != first
    assert TokenDataset(tmpfs, "train").meta == meta
