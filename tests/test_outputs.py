"""Every command's output: a target that cannot be written is one `error:` line before any data is read or model
loaded; an existing output is replaced only with overwrite=true; a typo in an optimizer or schedule name fails at
config time, dry run included."""

from __future__ import annotations

import pytest
from conftest import run_cli

from lora_train import UserError, compose, curate, evaluate, generate, train
from lora_train.artifacts import atomic_file, check_output

# Everything else about these runs is wrong too (no such data, no such model or adapter): the output error must come
# first, proving the check runs before any of them is read.
MISSING = "/no/such/place"


@pytest.fixture
def blocker(tmp_path):
    """A file where the output's folder would have to be created."""
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def test_an_unwritable_adapters_dir_fails_before_data_or_model(blocker):
    overrides = [f"adapters_dir={blocker / 'adapters'}", f"data.source={MISSING}/rows.jsonl",
                 f"model.name_or_path={MISSING}/model"]
    for dry_run in ("false", "true"):
        with pytest.raises(UserError, match=rf"^adapters_dir: cannot create {blocker}/adapters/.*: {blocker} is a "
                                            r"file, not a folder; choose another adapters_dir=\.\.\.$"):
            train(compose("train", overrides + [f"dry_run={dry_run}"]))


def test_the_console_script_answers_one_error_line(blocker, tmp_path):
    proc = run_cli("lora-train", f"adapters_dir={blocker / 'adapters'}", f"data.source={MISSING}/rows.jsonl",
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: adapters_dir: cannot create")
    assert "Traceback" not in proc.stderr


def test_every_command_checks_its_output_before_reading_anything(blocker):
    cases = [
        (curate, "curate", [f"data.source={MISSING}/rows.jsonl"], "output", "out.jsonl"),
        (generate, "generate", [f"prompt_file={MISSING}/prompts.txt", "adapters=[x]", f"adapters_dir={MISSING}"],
         "output", "out.jsonl"),
        (evaluate, "eval", [f"adapters=[{MISSING}/adapter]"], "output", "evals"),
    ]
    for run, command, rest, key, name in cases:
        with pytest.raises(UserError, match=rf"^{key}: cannot create {blocker}/{name}: {blocker} is a file"):
            run(compose(command, rest + [f"{key}={blocker / name}"]))
    with pytest.raises(UserError, match=rf"^report: cannot create {blocker}/r.json"):
        curate(compose("curate", [f"data.source={MISSING}/rows.jsonl", f"report={blocker / 'r.json'}"]))


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    existing = tmp_path / "done.jsonl"
    existing.write_text("earlier results\n")
    (tmp_path / "evals").mkdir()
    for run, command, rest, target in [
        (generate, "generate", ["prompt=hi", "adapters=[x]", f"adapters_dir={MISSING}"], existing),
        (evaluate, "eval", [f"adapters=[{MISSING}/adapter]"], tmp_path / "evals"),
    ]:
        with pytest.raises(UserError, match=rf"^output={target} already exists; pass overwrite=true"):
            run(compose(command, rest + [f"output={target}"]))
        # With overwrite=true the output is no obstacle: the next problem is the missing adapter.
        with pytest.raises(UserError) as err:
            run(compose(command, rest + [f"output={target}", "overwrite=true"]))
        assert "output" not in str(err.value) and "x" in str(err.value) or MISSING in str(err.value), str(err.value)
    assert existing.read_text() == "earlier results\n"  # nothing was touched by the refused runs


def test_a_prompt_file_that_is_not_utf8_names_file_and_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("first prompt\nsecond \u00e9\n".encode() + b"caf\xe9 in Latin-1\n")
    with pytest.raises(UserError, match=rf"^{prompts}:3: not UTF-8 \(invalid continuation byte at byte 3 of the "
                                        r"line\); save the prompt file as UTF-8$"):
        generate(compose("generate", [f"prompt_file={prompts}", "adapters=[x]", f"adapters_dir={MISSING}"]))


@pytest.mark.parametrize("key,value,hint", [("train.optim", "adamw", "did you mean adamw_"),
                                            ("train.optim", "sgdd", "did you mean sgd"),
                                            ("train.lr_scheduler", "cosin", "did you mean cosine")])
def test_optimizer_and_schedule_names_are_checked_at_config_time(tmp_path, key, value, hint):
    with pytest.raises(UserError, match=rf"^{key}={value!r} is not a name transformers knows \({hint}.*; choose one "
                                        r"of: .*\b(adamw_torch|cosine_with_restarts)\b"):
        train(compose("train", [f"{key}={value}", "dry_run=true", f"adapters_dir={tmp_path / 'adapters'}"]))
    assert not (tmp_path / "adapters").exists()


def test_atomic_file_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "new" / "folder" / "out.txt"  # missing parents are created
    with atomic_file(target) as tmp:
        tmp.write_text("one\n")
    assert target.read_text() == "one\n"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half of tw")
            raise RuntimeError("interrupted")
    assert target.read_text() == "one\n" and [p.name for p in target.parent.iterdir()] == ["out.txt"]
    with pytest.raises(UserError, match="already exists"):
        check_output(target, "output", overwrite=False)
    check_output(target, "output", overwrite=True)
