"""The tokenized-examples cache: a second run on the same data reuses them exactly (examples and report); any change
that would change an example is a miss; a damaged entry is rebuilt; data.cache=false and unpinned Hub data skip it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lora_train.data import cache as data_cache
from lora_train.data.build import build_datasets
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import Curation, DataConfig, ModelConfig


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(ModelConfig()), ModelConfig())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_TRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def write_rows(path, n, bad=True):
    lines = [json.dumps({"prompt": f"question {i}?", "response": f"answer number {i} " * (1 + i % 5)})
             for i in range(n)]
    if bad:
        lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_second_run_reuses_identical_examples_and_report(tmp_path, tokenizer, cache):
    cfg = DataConfig(source=str(write_rows(tmp_path / "rows.jsonl", 40)), max_length=64,
                     curation=Curation["v1.3-groovy"])
    train1, val1, report1 = build_datasets(cfg, tokenizer, seed=3)
    assert report1.cache.startswith("stored ") and len(list(cache.iterdir())) == 1
    train2, val2, report2 = build_datasets(cfg, tokenizer, seed=3)
    assert report2.cache.startswith("reused ")
    assert train2["input_ids"] == train1["input_ids"] and train2["labels"] == train1["labels"]
    assert val2["input_ids"] == val1["input_ids"]
    a, b = report1.__dict__.copy(), report2.__dict__.copy()
    assert a.pop("cache") != b.pop("cache") and a == b  # skipped rows with file:line, curation steps, truncations
    assert report2.rows_skipped == 1 and "rows.jsonl:4" in report2.skipped_examples[0]
    # the split is made after the cache: another val_fraction or seed reuses the entry
    train3, val3, report3 = build_datasets(replace(cfg, val_fraction=0.25), tokenizer, seed=3)
    assert report3.cache.startswith("reused ") and len(val3) == 10 and len(train3) == 30


def test_anything_that_changes_an_example_misses(tmp_path, tokenizer, cache):
    path = write_rows(tmp_path / "rows.jsonl", 20)
    cfg = DataConfig(source=str(path), max_length=64)
    build_datasets(cfg, tokenizer, seed=0)
    for changed in (replace(cfg, max_length=32), replace(cfg, template="### Q: {prompt}\n### A: "),
                    replace(cfg, strict=False, max_rows=10)):
        assert build_datasets(changed, tokenizer, seed=0)[2].cache.startswith("stored ")
    write_rows(path, 21)  # the same file rewritten at once with one more row: content, not mtime, decides
    train, val, report = build_datasets(cfg, tokenizer, seed=0)
    assert report.cache.startswith("stored ") and len(train) + len(val) == 21


def test_damaged_entry_is_rebuilt(tmp_path, tokenizer, cache):
    cfg = DataConfig(source=str(write_rows(tmp_path / "rows.jsonl", 20)), max_length=64)
    build_datasets(cfg, tokenizer, seed=0)
    (entry,) = cache.iterdir()
    (entry / "report.json").write_text("{truncated")
    train, val, report = build_datasets(cfg, tokenizer, seed=0)
    assert report.cache.startswith("stored ") and len(train) + len(val) == 20
    assert build_datasets(cfg, tokenizer, seed=0)[2].cache.startswith("reused ")


def test_off_and_unpinned_hub_data_are_not_cached(tmp_path, tokenizer, cache):
    cfg = DataConfig(source=str(write_rows(tmp_path / "rows.jsonl", 20)), max_length=64, cache=False)
    assert build_datasets(cfg, tokenizer, seed=0)[2].cache is None and not cache.exists()
    assert data_cache.key(DataConfig(source="org/some-dataset"), tokenizer) is None
    assert data_cache.key(DataConfig(source="org/some-dataset", revision="v1"), tokenizer) is not None


def test_a_change_to_the_code_that_builds_examples_misses(tmp_path, tokenizer, cache, monkeypatch):
    hashed = {p.name for p in data_cache.code_files()}
    # every module that reads, converts, curates or tokenizes rows, and the schema holding defaults and refusal phrases
    assert {"sources.py", "formats.py", "filters.py", "dedup.py", "examples.py", "build.py", "data.py"} <= hashed
    # Stand-in copies of those files: editing one is what a code change, an upgrade or a git checkout does.
    code = tmp_path / "code"
    code.mkdir()
    copies = []
    for f in data_cache.code_files():
        copies.append(code / f"{f.parent.name}-{f.name}")
        copies[-1].write_bytes(f.read_bytes())
    monkeypatch.setattr(data_cache, "code_files", lambda: copies)
    cfg = DataConfig(source=str(write_rows(tmp_path / "rows.jsonl", 20)), max_length=64)
    assert build_datasets(cfg, tokenizer, seed=0)[2].cache.startswith("stored ")
    assert build_datasets(cfg, tokenizer, seed=0)[2].cache.startswith("reused ")
    examples_py = next(p for p in copies if p.name == "data-examples.py")
    examples_py.write_text(examples_py.read_text() + "\n# a changed template rule\n")
    assert build_datasets(cfg, tokenizer, seed=0)[2].cache.startswith("stored ")
    assert len(list(cache.iterdir())) == 2
