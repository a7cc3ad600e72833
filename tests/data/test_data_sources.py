"""Data sources and formats: JSONL/JSON/Parquet/CSV files, globs and folders; gpt4all/alpaca/chat/ShareGPT rows
under other column names; templates; the loss on response tokens only; bad rows skipped with file:line."""

from __future__ import annotations

import json

import pytest

from lora_train.data.build import read_rows, tokenize
from lora_train.errors import UserError
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, DataFormat, FilterStep, ModelConfig


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(ModelConfig()), ModelConfig())


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"question {i}", "response": f"answer {i}", "source": "t"} for i in range(4)]


def test_every_file_type_a_glob_and_a_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "data"
    d.mkdir()
    jsonl(d / "a.jsonl", ROWS[:1])
    (d / "b.json").write_text(json.dumps(ROWS[1:2], indent=2))
    pq.write_table(pa.Table.from_pylist(ROWS[2:3]), d / "c.parquet")
    (d / "d.csv").write_text('prompt,response,source\n"question 3","answer\n3",t\n')
    (d / "notes.txt").write_text("ignored")
    rows, report = read_rows(DataConfig(source=str(d)))
    assert [r["response"] for r in rows] == ["answer 0", "answer 1", "answer 2", "answer\n3"]
    assert report.rows_skipped == 0
    rows, _ = read_rows(DataConfig(source=str(d / "*.json*")))
    assert [r["prompt"] for r in rows] == ["question 0", "question 1"]
    with pytest.raises(UserError, match="matches no"):
        read_rows(DataConfig(source=str(d / "*.xml")))


def test_bad_rows_in_every_format_are_skipped_with_file_and_line(tmp_path):
    arr = tmp_path / "rows.json"
    arr.write_text('[\n  {"prompt": "p", "response": "r"},\n  {"prompt": "p2", "response": "r2"},\n  {"prompt": oops}\n]')
    csv_f = tmp_path / "rows.csv"
    csv_f.write_bytes(b"prompt,response\nfine,yes\nbad,\xff\xfe\nextra,a,b\n")
    fake = tmp_path / "rows.parquet"
    fake.write_text("prompt,response\nnot,parquet\n")
    big = jsonl(tmp_path / "big.jsonl", [{"prompt": "p", "response": "x" * 5000}, {"prompt": "p", "response": "ok"}])
    rows, report = read_rows(DataConfig(source=str(tmp_path), max_row_bytes=1000))
    assert [r["response"] for r in rows] == ["ok", "yes", "r", "r2"]
    assert report.rows_skipped == 5
    reasons = "\n".join(report.skipped_examples)
    assert f"{big}:1: row larger than data.max_row_bytes=1000" in reasons
    assert f"{csv_f}:3: not UTF-8" in reasons and f"{csv_f}:4: more fields" in reasons
    assert f"{arr}:4: malformed JSON" in reasons and f"{fake}: not a Parquet file" in reasons


def test_row_locations_name_one_row_in_every_format(tmp_path):
    # A whole JSON array on one line: each element is located by its index, so a duplicate names both rows.
    arr = tmp_path / "sharegpt.json"
    arr.write_text(json.dumps([ROWS[0], ROWS[1], ROWS[0]]))
    rows, report = read_rows(DataConfig(source=str(arr), filters=[FilterStep.dedup]))
    assert [r["where"] for r in rows] == [f"{arr}[0]", f"{arr}[1]"]
    assert report.steps[0].examples == [f"{arr}[2]: exact duplicate of {arr}[0]"]
    # Parquet rows by their index, counted across row groups; CSV rows by the line they start on, quoted
    # line breaks included.
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet", row_group_size=3)
    rows, _ = read_rows(DataConfig(source=str(tmp_path / "rows.parquet")))
    assert [r["where"] for r in rows] == [f"{tmp_path / 'rows.parquet'}[{i}]" for i in range(4)]
    (tmp_path / "rows.csv").write_text('prompt,response\n"q\n0","a\n0"\nq1,a1\n')
    rows, _ = read_rows(DataConfig(source=str(tmp_path / "rows.csv")))
    assert [r["where"] for r in rows] == [f"{tmp_path / 'rows.csv'}:2", f"{tmp_path / 'rows.csv'}:5"]


def test_parquet_damaged_after_its_first_batch_keeps_the_rows_before_and_reports_the_rest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    many = [{"prompt": f"question {i} " * 3, "response": f"answer {i} " * 5} for i in range(3000)]
    pq.write_table(pa.Table.from_pylist(many), path, row_group_size=1500)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 30:start + 200] = b"\xab" * 170  # the second row group's compressed pages, damaged
    path.write_bytes(bytes(data))
    rows, report = read_rows(DataConfig(source=str(path)))
    assert len(rows) == 1500 and rows[-1]["where"] == f"{path}[1499]"
    assert report.rows_skipped == 1
    assert report.skipped_examples[0].startswith(f"{path}[1500]: corrupt Parquet data in row group 1")
    with pytest.raises(UserError, match=rf"{path}\[1500\]: corrupt Parquet data"):
        read_rows(DataConfig(source=str(path), strict=True))


def test_strict_names_the_first_bad_row(tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text("prompt,response\na,b\nc\n")
    with pytest.raises(UserError, match=rf"{f}:3: 'response' is null"):
        read_rows(DataConfig(source=str(f), strict=True))


def test_alpaca_with_column_mapping_and_template(tmp_path, tokenizer):
    f = jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "sum"},
        {"instruction": "Name a color.", "context": "", "response": "Blue."},
    ])
    cfg = DataConfig(source=str(f), format=DataFormat.alpaca, columns={"input": "context", "output": "response"},
                     template="alpaca")
    rows, report = read_rows(cfg)
    assert [r["prompt"] for r in rows] == ["Summarize.\n\nA long text.", "Name a color."]
    ex = tokenize(rows, tokenizer, cfg, report)
    text = tokenizer.decode(ex[0]["input_ids"])
    assert text.startswith("### Instruction:\nSummarize.\n\nA long text.\n\n### Response:\nShort.")
    trained = [t for t, lab in zip(ex[0]["input_ids"], ex[0]["labels"]) if lab != -100]
    assert tokenizer.decode(trained[:-1]) == "Short." and trained[-1] == tokenizer.eos_token_id
    with pytest.raises(UserError, match="data.columns"):
        read_rows(DataConfig(source=str(f), format=DataFormat.alpaca, columns={"answer": "response"}))
    with pytest.raises(UserError, match="data.template"):
        read_rows(DataConfig(source=str(f), template="no placeholder"))


def test_chat_and_sharegpt_train_on_every_assistant_turn_only(tmp_path, tokenizer):
    f = jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4."}]},
        {"conversations": [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "robot", "content": "?"}, {"role": "assistant", "content": "x"}]},
    ])
    cfg = DataConfig(source=str(f), format=DataFormat.chat, template="User: {prompt}\nBot: ")
    rows, report = read_rows(cfg)
    assert len(rows) == 2 and report.rows_skipped == 2
    assert "no assistant turn" in report.skipped_examples[0] and "'robot'" in report.skipped_examples[1]
    ex = tokenize(rows, tokenizer, cfg, report)
    eos = tokenizer.eos_token_id
    trained = [t if lab != -100 else None for t, lab in zip(ex[0]["input_ids"], ex[0]["labels"])]
    spans, cur = [], []
    for t in trained + [None]:
        if t is None and cur:
            spans.append(cur)
            cur = []
        elif t is not None:
            cur.append(t)
    assert [tokenizer.decode(s[:-1]) for s in spans] == ["Hello.", "4."] and all(s[-1] == eos for s in spans)
    assert tokenizer.decode(ex[0]["input_ids"]).startswith("Be brief.\nUser: Hi\nBot: Hello.")


def test_chat_template_of_the_tokenizer(tmp_path, tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    try:
        f = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "word " * 100},
                                                       {"role": "assistant", "content": "Fine."}]}])
        cfg = DataConfig(source=str(f), format=DataFormat.chat, template="chat_template", max_length=64)
        rows, report = read_rows(cfg)
        ex = tokenize(rows, tokenizer, cfg, report)[0]
        prompt = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == -100]
        # The prompt was cut to half the length, but the template's generation prompt survived the cut.
        assert report.prompts_truncated == 1 and len(prompt) <= 32
        assert tokenizer.decode(prompt).endswith("\n<assistant>")
        trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        assert tokenizer.decode(trained[:-1]) == "Fine.\n" and trained[-1] == tokenizer.eos_token_id
    finally:
        tokenizer.chat_template = None


def test_clean_takes_over_unusable_values_from_the_reader(tmp_path):
    f = jsonl(tmp_path / "r.jsonl", [{"prompt": None, "response": "a"}, {"prompt": "ok?", "response": ""},
                                     {"prompt": "fine", "response": "yes"}])
    _, plain = read_rows(DataConfig(source=str(f)))
    assert plain.rows_skipped == 2
    _, cleaned = read_rows(DataConfig(source=str(f), filters=[FilterStep.clean], strict=True))
    assert cleaned.rows_skipped == 0 and cleaned.steps[0].rows_in == 3 and cleaned.steps[0].rows_out == 1


def test_streaming_builds_the_same_datasets_on_disk(tokenizer):
    from lora_train.data.build import build_datasets
    from lora_train.schemas import Curation

    cfg = DataConfig(curation=Curation["v1.2-jazzy"], max_length=128, cache=False)  # both really built
    train, val, report = build_datasets(cfg, tokenizer, seed=1)
    s_train, s_val, s_report = build_datasets(DataConfig(**{**cfg.__dict__, "streaming": True}), tokenizer, seed=1)
    assert s_train.cache_files and not train.cache_files  # streamed: written to disk, not held in memory
    assert (len(s_train), len(s_val)) == (len(train), len(val))
    assert sorted(map(tuple, s_train["input_ids"])) == sorted(map(tuple, train["input_ids"]))
    assert [(s.rows_in, s.rows_out) for s in s_report.steps] == [(s.rows_in, s.rows_out) for s in report.steps]
    assert s_report.rows_curated == report.rows_curated == 362
