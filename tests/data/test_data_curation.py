"""Curation: the GPT4All-J chains remove exactly the planted bad rows of the bundled sample; MinHash dedup finds
near duplicates that normalisation alone misses; `lora-data` reports and exports; training records the curation."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from lora_train import compose, train
from lora_train.data.build import read_rows
from lora_train.data.dedup import Deduper
from lora_train.errors import UserError
from lora_train.schemas import Curation, DataConfig, DedupKey, FilterStep

AI = {29, 58, 116, 232, 276, 348}
REFUSALS = {43, 174, 203, 218, 290, 363}
EXACT = {14, 130, 145, 261, 305}
NEAR = {72, 87, 159, 247, 319}
CLEAN = {189, 334, 101}


def kept_lines(rows) -> set[int]:
    return {int(r["where"].rsplit(":", 1)[1]) for r in rows}


@pytest.mark.parametrize("curation,removed", [
    ("v1.0", CLEAN), ("v1.1-breezy", CLEAN | AI), ("v1.2-jazzy", CLEAN | AI | REFUSALS),
    ("v1.3-groovy", CLEAN | AI | REFUSALS | EXACT | NEAR),
])
def test_revisions_remove_exactly_the_planted_rows(curation, removed):
    rows, report = read_rows(DataConfig(curation=Curation[curation]))
    assert set(range(1, 378)) - kept_lines(rows) == removed
    assert report.rows_read == 377 and report.rows_skipped == 0 and report.rows_curated == 377 - len(removed)
    assert [s.rows_in - s.rows_out for s in report.steps] == \
        [len(x) for x in [CLEAN, AI, REFUSALS, EXACT | NEAR][: len(report.steps)]]
    if curation == "v1.3-groovy":
        dedup = report.steps[-1]
        assert (dedup.exact, dedup.near) == (5, 5)
        assert "builtin:sample:14: exact duplicate of builtin:sample:8" in dedup.examples


def test_refusal_phrases_are_configurable():
    rows, report = read_rows(DataConfig(filters=[FilterStep.jazzy], refusal_phrases=["help with that request"]))
    assert set(range(1, 378)) - kept_lines(rows) - {189, 334} == {290, 363}
    with pytest.raises(UserError, match="refusal_phrases"):
        read_rows(DataConfig(filters=[FilterStep.jazzy], refusal_phrases=[]))


def test_minhash_finds_edited_near_duplicates_and_keeps_different_rows():
    base = ("The mitochondria is the powerhouse of the cell and produces most of the chemical energy needed to "
            "power the biochemical reactions of the cell, stored in a molecule called ATP")
    edited = base.replace("most of", "nearly all of")  # not equal after normalisation: only MinHash can see it
    other = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts"
    d = Deduper(0.7)
    verdicts = d.check([base, edited, other, other.upper() + "!"], ["a", "b", "c", "d"])
    assert verdicts[0] is None and verdicts[2] is None
    assert verdicts[1][:2] == ("near", "a") and 0.7 <= verdicts[1][2] < 1
    assert verdicts[3] == ("near", "c", 1.0)
    assert Deduper(0.95).check([base, edited], ["a", "b"]) == [None, None]  # below a strict threshold: kept


def _recall_rows(n: int = 2000, seed: int = 0) -> list[str]:
    """n rows of 40 random words: most unique, the rest in clusters of 3-6 rows, each copy up to 4 word edits away
    from the one before it (so copies of one cluster share a range of similarities, some below any threshold)."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    rows: list[str] = []
    while len(rows) < n:
        words = [rng.choice(vocab) for _ in range(40)]
        rows.append(" ".join(words))
        if rng.random() < 0.35:  # a cluster: this row plus 2-4 edited copies, spread over the rest of the data
            for _ in range(rng.randint(2, 5)):
                words = list(words)
                for _ in range(rng.randint(0, 4)):
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                rows.append(" ".join(words))
    rows = rows[:n]
    rng.shuffle(rows)
    return rows


def test_minhash_recall_against_exhaustive_jaccard():
    """Every pair of rows whose true Jaccard (word 3-grams, as dedup reads them) is at least threshold + 0.1: the later
    row is flagged in >= 95% of them. Near the threshold the estimate's spread (~0.035) decides, by design. A row
    whose best true Jaccard with any earlier row is far below the threshold is never flagged."""
    from lora_train.data.dedup import SHINGLE_WORDS, normalize

    threshold = 0.7
    rows = _recall_rows()

    def shingles(text):
        w = normalize(text).split()
        return {" ".join(w[i:i + SHINGLE_WORDS]) for i in range(len(w) - SHINGLE_WORDS + 1)}

    sets = [shingles(r) for r in rows]
    verdicts = Deduper(threshold).check(rows, list(range(len(rows))))
    strong, found, best_before = 0, 0, [0.0] * len(rows)
    for j in range(len(rows)):
        for i in range(j):
            inter = len(sets[i] & sets[j])
            if not inter:
                continue
            jac = inter / len(sets[i] | sets[j])
            best_before[j] = max(best_before[j], jac)
            if jac >= threshold + 0.1:
                strong += 1
                found += verdicts[j] is not None
    assert strong >= 300, strong  # the data has enough clustered pairs to measure
    assert found / strong >= 0.95, (found, strong)
    assert not [j for j, v in enumerate(verdicts) if v is not None and best_before[j] < threshold - 0.2]


def test_dedup_on_prompts_only(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"prompt": "Name a fruit.", "response": r}) + "\n" for r in ["Apple.", "Pear."]))
    rows, _ = read_rows(DataConfig(source=str(f), filters=[FilterStep.dedup]))
    assert len(rows) == 2
    rows, _ = read_rows(DataConfig(source=str(f), filters=[FilterStep.dedup], dedup_key=DedupKey.prompt))
    assert [r["response"] for r in rows] == ["Apple."]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """The bundled sample plus the kinds of damage real files have."""
    from lora_train.data.sources import resolve_source

    folder = tmp_path_factory.mktemp("messy")
    lines = open(resolve_source("builtin:sample"), "rb").read().splitlines()
    lines[1:1] = [b"{broken json", b'{"prompt": "x", "response": "y\xff"}', json.dumps({"prompt": 5}).encode()]
    (folder / "messy.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def test_lora_data_reports_and_exports(messy):
    proc = run_cli("lora-data", "data.source=messy.jsonl", "data.curation=v1.3-groovy", "output=curated.jsonl",
                   "data.filters=[max_length]", "data.max_length=128", cwd=messy, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dedup" in proc.stdout and "(exact 5, near 5)" in proc.stdout
    report = json.loads((messy / "curated.report.json").read_text())
    assert report["rows_read"] == 380 and report["rows_skipped"] == 3
    assert report["skipped_examples"][0].startswith("messy.jsonl:2: malformed JSON")
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["clean", "breezy", "jazzy", "dedup", "max_length"]
    assert [steps[s]["removed"] for s in ["clean", "breezy", "jazzy", "dedup"]] == [3, 6, 6, 10]
    assert steps["max_length"]["removed"] >= 1 and report["tokens"]["over_max_length"] == 0
    out = [json.loads(x) for x in (messy / "curated.jsonl").read_text().splitlines()]
    assert len(out) == report["rows_out"] == 352 - steps["max_length"]["removed"]
    assert set(out[0]) == {"prompt", "response", "source"}  # rows are written as they were read
    assert (messy / "curated.lengths.png").stat().st_size > 1000
    from lora_train.data.curate import run

    with pytest.raises(UserError, match="already exists; pass overwrite=true"):
        run(compose("curate", [f"data.source={messy / 'messy.jsonl'}", f"output={messy / 'curated.jsonl'}"]))


def test_lora_data_parquet_export_round_trips(messy):
    from lora_train.data.curate import run

    out = messy / "sub" / "curated.parquet"
    result = run(compose("curate", [f"data.source={messy / 'messy.jsonl'}", "data.curation=v1.2-jazzy",
                                    f"output={out}", "tokens=false"]))
    rows, report = read_rows(DataConfig(source=str(out)))
    assert len(rows) == result["rows_out"] == 362 and report.rows_skipped == 0
    assert not list(out.parent.glob(".*partial"))


def test_training_on_curated_data_records_it_in_card_and_metrics(tmp_path):
    folder = train(compose("train", [
        "experiment=debug", f"adapters_dir={tmp_path}", "run_name=curated", "data.max_rows=null",
        "data.curation=v1.3-groovy", "train.packing=true", "train.max_steps=2", "train.eval_steps=2"]))
    m = json.loads((folder / "metrics.json").read_text())
    assert m["data"]["curation"] == "v1.3-groovy" and m["data"]["rows_curated"] == 352
    assert [s["step"] for s in m["data"]["steps"]] == ["clean", "breezy", "jazzy", "dedup"]
    card = (folder / "README.md").read_text()
    assert "v1.3-groovy (clean, breezy, jazzy, dedup)" in card
    assert "curation step dedup (rows in -> out)` | 362 -> 352 (removed 10: 5 exact, 5 near" in card
    assert m["train_loss"] > 0 and m["global_step"] == 2
