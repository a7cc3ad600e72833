"""Property-based: invalid overrides and malformed data rows always end in a clear error or a counted skip, never a
traceback and never a partial artifact."""

from __future__ import annotations

import json
import math

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lora_train import UserError, compose, train
from lora_train.data.build import build_datasets
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, DataFormat, ModelConfig

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = ["train.learning_rate", "train.epochs", "train.max_steps", "train.per_device_batch_size",
        "train.global_batch_size", "train.warmup_steps", "train.save_steps", "train.save_total_limit",
        "train.max_nonfinite_steps", "train.optim", "train.lr_scheduler", "train.sft_args", "lora.r", "lora.alpha",
        "lora.dropout", "lora.target_modules", "quant.mode", "quant.compute_dtype", "model.dtype",
        "model.name_or_path", "data.max_length", "data.val_fraction", "data.max_prompt_fraction", "data.source",
        "data.format", "data.max_rows", "seed", "run_name", "resume", "overwrite", "train.no_such_key", "nope"]
SCALARS = st.one_of(
    st.integers(-2, 2), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12), st.just("null"),
    st.sampled_from(["[]", "[a,b]", "{}", "{a: 1}", "nf4", "''", "1e999", "-1", "0"]),
)


def override_text(key: str, value) -> str:
    text = json.dumps(value) if isinstance(value, str) and value and not value.isalnum() else str(value)
    return f"{key}={text}"


@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), SCALARS), min_size=1, max_size=3))
@FAST
def test_invalid_overrides_fail_clearly_before_anything_is_written(tmp_path, overrides):
    out = tmp_path / "adapters"
    texts = [override_text(k, v) for k, v in overrides]
    try:
        cfg = compose("train", texts)
    except (HydraException, OmegaConfBaseException) as e:
        # Hydra's own message names the override or the key.
        assert any(k.split(".")[-1] in str(e) or t in str(e) for k, t in zip(
            [k for k, _ in overrides], texts)), str(e)
        return
    cfg.adapters_dir, cfg.dry_run = str(out), True
    try:
        train(cfg)
    except UserError as e:
        assert str(e).strip() and "Traceback" not in str(e)
    assert not out.exists() or not any(out.iterdir()), "a dry run wrote something"


# Boundary values a random search rarely draws: each must be refused by name before anything loads.
REFUSED = [("train.global_batch_size", "0"), ("train.global_batch_size", "-8"), ("train.save_steps", "0"),
           ("train.save_steps", "-1"), ("train.eval_steps", "0"), ("train.logging_steps", "0"),
           ("train.max_nonfinite_steps", "-1"), ("train.learning_rate", "inf"), ("train.learning_rate", "nan"),
           ("train.epochs", "inf"), ("train.per_device_batch_size", "0"), ("lora.r", "0"), ("lora.dropout", "1.0"),
           ("data.max_length", "1"), ("run_name", "../escape"), ("resume", "no/such/checkpoint")]


@pytest.mark.parametrize("key,value", REFUSED)
def test_boundary_values_are_refused_by_name(tmp_path, key, value):
    cfg = compose("train", [f"{key}={value}", f"adapters_dir={tmp_path / 'adapters'}", "dry_run=false"])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "adapters").exists()


def _row_values():
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6)
    field = st.one_of(st.text(max_size=40), json_values)
    gpt4all = st.fixed_dictionaries({}, optional={"prompt": field, "response": field, "source": field})
    alpaca = st.fixed_dictionaries({}, optional={"instruction": field, "input": field, "output": field})
    chat = st.fixed_dictionaries({}, optional={"messages": st.one_of(field, st.lists(st.fixed_dictionaries(
        {}, optional={"role": st.sampled_from(["user", "assistant", "system", "x"]) | field, "content": field}),
        max_size=3))})
    as_json = st.one_of(gpt4all, alpaca, chat, json_values).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, st.binary(max_size=30), st.just(b'{"prompt": "a", "response": "b"'),
                     st.just(b"\xff\xfe{}"), st.just(b""), st.just(b"[1, 2]"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model(ModelConfig()), ModelConfig())


@given(lines=st.lists(_row_values(), min_size=0, max_size=8), fmt=st.sampled_from(list(DataFormat)),
       strict=st.booleans())
@FAST
def test_malformed_rows_are_counted_skips_or_clear_errors(tmp_path, tokenizer, lines, fmt, strict):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {
        "source": str(path), "format": fmt.value, "strict": strict, "max_length": 32, "val_fraction": 0.2}))
    try:
        train_ds, val_ds, report = build_datasets(cfg, tokenizer, seed=0)
    except UserError as e:
        assert str(path) in str(e) or path.name in str(e), str(e)  # the message names the file (and line)
        return
    assert report.rows_read == report.rows_skipped + report.rows_curated
    assert not (strict and report.rows_skipped)
    assert len(train_ds) == report.train_rows >= 1
    assert report.train_rows + report.val_rows + report.dropped_no_response_tokens == report.rows_curated
    for where in report.skipped_examples:
        assert where.startswith(f"{path}:"), where
    for ex in train_ds:
        assert len(ex["input_ids"]) == len(ex["labels"]) <= 32
        assert any(v != -100 for v in ex["labels"]) and all(math.isfinite(v) for v in ex["input_ids"])
