"""Property-based: invalid overrides and malformed data rows always end in a clear error or a counted skip, never a
traceback and never a partial artifact."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest
from conftest import need_module, run_cli
from hydra.errors import HydraException

need_module("hypothesis", "dev")  # a skip without it (a failure under LORA_TRAIN_STRICT_SKIPS=1), not an import error
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lora_train import UserError, compose, train
from lora_train.config import unset_groups
from lora_train.data.build import build_datasets
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, DataFormat, ModelConfig, TrainJob
from lora_train.schemas.curate import CurateJob
from lora_train.schemas.eval import EvalJob
from lora_train.schemas.infer import GenerateJob, ServeJob
from lora_train.schemas.merge import MergeJob

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Every command's config, and the schema that documents its keys.
SCHEMAS = {"train": TrainJob, "curate": CurateJob, "merge": MergeJob, "generate": GenerateJob, "serve": ServeJob,
           "eval": EvalJob}


def schema_keys(schema, prefix: str = "") -> list[str]:
    """Every key a user can override, read from the schema: nested configs by their dotted keys, and the name of a
    nested config itself (a config group such as quant=none)."""
    keys = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kinds = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        keys.append(prefix + f.name)
        if len(kinds) == 1 and dataclasses.is_dataclass(kinds[0]):
            keys += schema_keys(kinds[0], f"{prefix}{f.name}.")
    return keys


KEYS = schema_keys(TrainJob) + ["train.no_such_key", "nope"]
SCALARS = st.one_of(
    st.integers(-2, 2), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12), st.just("null"),
    st.sampled_from(["[]", "[a,b]", "{}", "{a: 1}", "nf4", "''", "1e999", "-1", "0"]),
)


def override_text(key: str, value) -> str:
    text = json.dumps(value) if isinstance(value, str) and value and not value.isalnum() else str(value)
    return f"{key}={text}"


def names_key(message: str, key: str) -> bool:
    """`key` (the whole dotted key, e.g. lora.r) appears in `message` as a key, not inside a word or a longer key:
    a bare last segment such as "r" would be found in almost any sentence."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message) is not None


def fails_clearly(error: Exception, overrides: list[tuple[str, object]], texts: list[str]) -> bool:
    """Hydra's, OmegaConf's or our own message names one of the overrides: its whole text, or its whole key."""
    message = str(error)
    return any(names_key(message, k) or t in message for (k, _), t in zip(overrides, texts))


@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), SCALARS), min_size=1, max_size=3))
@FAST
def test_invalid_overrides_fail_clearly_before_anything_is_written(tmp_path, overrides):
    out = tmp_path / "adapters"
    texts = [override_text(k, v) for k, v in overrides]
    try:
        cfg = compose("train", texts)
    except (HydraException, OmegaConfBaseException, UserError) as e:
        # Hydra's own message (or ours, for what Hydra would answer with a stack trace) names the override or the key.
        assert fails_clearly(e, overrides, texts), str(e)
        return
    cfg.adapters_dir, cfg.dry_run = str(out), True
    try:
        train(cfg)
    except UserError as e:
        assert str(e).strip() and "Traceback" not in str(e)
    assert not out.exists() or not any(out.iterdir()), "a dry run wrote something"


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_overrides_of_every_command_compose_or_fail_clearly(command):
    """Not only lora-train: every command's documented keys, including those under a group the command leaves null
    (lora-serve quant.mode=none), end in a config or in a message naming the key, never in another exception."""

    @given(overrides=st.lists(st.tuples(st.sampled_from(schema_keys(SCHEMAS[command]) + ["nope"]), SCALARS),
                              min_size=1, max_size=3))
    @FAST
    def check(overrides):
        texts = [override_text(k, v) for k, v in overrides]
        try:
            compose(command, texts)
        except (HydraException, OmegaConfBaseException, UserError) as e:
            assert fails_clearly(e, overrides, texts), str(e)

    check()


@pytest.mark.parametrize("command,group", [(c, g) for c in sorted(SCHEMAS) for g in unset_groups(c)])
def test_a_setting_of_an_unset_group_says_which_group_to_choose(command, group):
    assert {"generate": {"model", "quant"}, "serve": {"model", "quant"}, "eval": {"model", "quant"}}[command] >= {group}
    first = next(k for k in schema_keys(SCHEMAS[command]) if k.startswith(f"{group}."))
    with pytest.raises(UserError, match=rf"^{first}=x: no {group} config is selected here .* write {group}="):
        compose(command, [f"{first}=x"])
    if group == "quant":  # the way the train docs teach it: the fix is one group choice
        with pytest.raises(UserError, match="write quant=none instead$"):
            compose(command, ["quant.mode=none"])
        assert compose(command, ["quant=none", "quant.double_quant=false"]).quant.mode.value == "none"


@pytest.mark.parametrize("command", ["lora-serve", "lora-generate", "lora-eval"])
def test_the_console_scripts_answer_an_unset_group_setting_with_one_line(command, tmp_path):
    proc = run_cli(command, "quant.mode=none", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("error: quant.mode=none: ") and proc.stderr.strip().endswith("write quant=none instead")


def test_an_override_hydra_cannot_read_is_one_line_naming_it(tmp_path):
    """A letter Hydra's lexer does not know, unquoted (as a user types it): one line naming the override and the
    quoting that works, from compose() and from the console script."""
    with pytest.raises(UserError, match="^model.dtype=Ĝ: Hydra cannot read this override .*'model.dtype=\"Ĝ\"'$"):
        compose("generate", ["model=tiny_gptj", "model.dtype=Ĝ"])
    proc = run_cli("lora-generate", "model=tiny_gptj", "model.dtype=Ĝ", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr[-3000:]
    assert proc.stderr.startswith("error: model.dtype=Ĝ: Hydra cannot read this override")


def test_lora_bias_is_a_choice_refused_at_compose_time():
    with pytest.raises(HydraException, match="lora.bias=0"):
        compose("train", ["lora.bias=0"])
    assert compose("train", ["lora.bias=lora_only"]).lora.bias.value == "lora_only"


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
        assert any(v != -100 for v in ex["labels"])
        assert all(type(v) is int and 0 <= v < len(tokenizer) for v in ex["input_ids"])  # real token ids
