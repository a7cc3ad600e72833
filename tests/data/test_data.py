"""Data rows: malformed ones are skipped and counted with file:line, prompts are capped, EOS is always trained."""

from __future__ import annotations

import json

import pytest

from lora_train.data.build import read_rows, tokenize
from lora_train.errors import UserError
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, ModelConfig


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(ModelConfig()), ModelConfig())


def write(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_malformed_rows_are_skipped_and_located(tmp_path):
    f = write(tmp_path / "rows.jsonl", [
        json.dumps({"prompt": "a", "response": "b", "source": "x"}),
        "{not json",
        json.dumps({"prompt": "a"}),
        json.dumps({"prompt": 3, "response": "b"}),
        b"\xff\xfe garbage",
        json.dumps(["a", "list"]),
        json.dumps({"prompt": "hi", "response": "   "}),
        json.dumps({"prompt": "ok", "response": "fine"}),
    ])
    rows, report = read_rows(DataConfig(source=str(f)))
    assert [r["response"] for r in rows] == ["b", "fine"]
    assert report.rows_read == 8 and report.rows_skipped == 6
    assert report.skipped_examples[0] == f"{f}:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)"
    assert f"{f}:3: 'response' is missing" in report.skipped_examples


def test_strict_turns_the_first_bad_row_into_an_error(tmp_path):
    f = write(tmp_path / "rows.jsonl", [json.dumps({"prompt": "a", "response": "b"}), "{oops"])
    with pytest.raises(UserError, match=rf"{f}:2: malformed JSON"):
        read_rows(DataConfig(source=str(f), strict=True))


def test_a_file_with_no_usable_rows_is_an_error(tmp_path):
    f = write(tmp_path / "rows.jsonl", ["{}", "[]"])
    with pytest.raises(UserError, match="no usable rows"):
        read_rows(DataConfig(source=str(f)))


def test_prompt_is_capped_at_half_and_response_ends_with_eos(tokenizer):
    cfg = DataConfig(max_length=64)
    from lora_train.data.build import DataReport

    report = DataReport(source="t", revision=None)
    rows = [{"prompt": "word " * 200, "response": "short answer", "source": ""},
            {"prompt": "q?", "response": "yes", "source": ""}]
    ex = tokenize(rows, tokenizer, cfg, report)
    assert len(ex) == 2 and report.prompts_truncated == 1
    long_prompt = sum(1 for v in ex[0]["labels"] if v == -100)
    assert long_prompt <= 32
    for e in ex:
        assert e["input_ids"][-1] == tokenizer.eos_token_id and e["labels"][-1] == tokenizer.eos_token_id
        assert len(e["input_ids"]) <= 64


def test_a_cut_response_does_not_end_with_eos(tokenizer):
    from lora_train.data.build import DataReport

    report = DataReport(source="t", revision=None)
    ex = tokenize([{"prompt": "q", "response": "long " * 100, "source": ""}], tokenizer, DataConfig(max_length=32), report)
    assert report.responses_truncated == 1 and len(ex[0]["input_ids"]) == 32
    assert ex[0]["labels"][-1] != tokenizer.eos_token_id
