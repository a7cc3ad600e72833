"""lora-eval: two adapters trained on the embedded default, the base and both in one table, written into both cards.

The harness task is tests/evaluation/eval_task/commonsense_mini (32 two-choice questions written for these tests, read from a
local JSONL file): lm-eval runs for real, offline.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import need_module, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lora_train import UserError, compose, train
from lora_train.errors import install_hint
from lora_train.evaluation.evaluate import run
from lora_train.evaluation.report import END, START, update_card

TASK_DIR = Path(__file__).parent / "eval_task"
QUICK = [f"eval.include_path={TASK_DIR}", "eval.tasks=[commonsense_mini]", "eval.limit=8",
         "samples.count=1", "samples.max_new_tokens=4"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_cache) -> tuple[Path, Path]:
    """Two adapters of the embedded default: `a`, and `b` with another seed (so another validation split)."""
    tmp = tmp_path_factory.mktemp("eval_adapters")
    a = train(compose("train", ["experiment=debug", f"adapters_dir={tmp}", "run_name=a"]))
    b = train(compose("train", ["experiment=debug", f"adapters_dir={tmp}", "run_name=b", "seed=7"]))
    return a, b


@pytest.fixture(scope="module")
def cli_run(adapters, tmp_path_factory):
    """`lora-eval` exactly as a user types it, on copies of the adapters (their cards get rewritten)."""
    need_module("lm_eval", "eval")
    work = tmp_path_factory.mktemp("eval_cli")
    for src in adapters:
        shutil.copytree(src, work / src.name)
    proc = run_cli("lora-eval", "adapters=[a,b]", "output=out", *QUICK, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and "commonsense_mini" not in line
            and "loss" not in line]


def test_cli_prints_one_table_with_base_and_both_adapters_and_writes_it_into_both_cards(cli_run):
    work, stdout = cli_run
    head = "| Model | commonsense_mini | Avg. |"
    assert stdout.count(head) == 1
    table = stdout[stdout.index(head):].split("\n\n")[0].splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["tiny-gptj (base)", "a", "b"]
    for row in table[2:]:  # a number (an accuracy in percent) in the task and Avg. columns
        cells = [c.strip() for c in row.split("|")[2:4]]
        assert all(0 <= float(c) <= 100 for c in cells), row
    results_md = (work / "out" / "results.md").read_text()
    assert "\n".join(table) in results_md
    assert "lm-eval " in results_md.split("\n")[2] and "few-shot" in results_md.split("\n")[2]  # the harness ran
    for name in ("a", "b"):
        card = (work / name / "README.md").read_text()
        assert card.count(START) == 1 and card.count(END) == 1
        assert "\n".join(table) in card
        assert card.index(END) < card.index("\n## Data\n")  # placed with the results, the card stays whole
        assert "## Hyperparameters" in card


def test_results_json_has_every_metric_with_stderr_seed_and_versions(cli_run):
    work, _ = cli_run
    res = json.loads((work / "out" / "results.json").read_text())
    assert res["seed"] == 42 and res["versions"]["lm-eval"] and res["versions"]["peft"]
    assert res["table"]["metrics"] == {"commonsense_mini": "acc_norm"}
    assert [m["name"] for m in res["models"]] == ["tiny-gptj (base)", "a", "b"]
    for m in res["models"]:
        metrics = m["tasks"]["commonsense_mini"]
        assert set(metrics) >= {"acc", "acc_norm"}
        assert all(0 <= v["value"] <= 1 and v["stderr"] > 0 for v in metrics.values())
        assert m["lm_eval"]["n-samples"]["commonsense_mini"]["effective"] == 8
    samples = (work / "out" / "samples.md").read_text()
    assert samples.count("**tiny-gptj (base)**") == samples.count("**a**") == samples.count("**b**") == 1


def test_loss_on_the_validation_split_reproduces_training_and_tells_models_apart(cli_run):
    work, _ = cli_run
    res = json.loads((work / "out" / "results.json").read_text())
    assert set(res["loss_sets"]) == {"validation of a", "validation of b"}  # different seeds: different splits
    by_name = {m["name"]: m["loss"] for m in res["models"]}
    for name in ("a", "b"):
        trained = json.loads((work / name / "metrics.json").read_text())["eval_loss"]
        assert by_name[name][f"validation of {name}"]["loss"] == pytest.approx(trained, abs=2e-3)
    base, a = by_name["tiny-gptj (base)"]["validation of a"], by_name["a"]["validation of a"]
    assert base["tokens"] == a["tokens"] > 0
    assert abs(base["loss"] - a["loss"]) > 1e-3  # the adapter really was switched on and off
    assert a["perplexity"] == pytest.approx(2.718281828 ** a["loss"], rel=1e-6)


def test_a_second_evaluation_replaces_the_cards_section(adapters, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(adapters[0], folder)
    update_card(folder, f"{START}\n## Evaluation\n\nscores-of-run-1\n{END}")
    update_card(folder, f"{START}\n## Evaluation\n\nscores-of-run-2\n{END}")
    card = (folder / "README.md").read_text()
    assert card.count(START) == 1 and "scores-of-run-2" in card and "scores-of-run-1" not in card
    assert card.count("\n## Data\n") == 1 and card.startswith("---\n")


def test_loss_only_run_in_process(adapters, tmp_path):
    """eval.tasks=[] measures loss without lm-eval; loss.source takes any local file in the training format."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": f"{w} {w}."}) + "\n"
                            for w in ["yes", "no", "maybe"]))
    args = [f"adapters=[{adapters[0]}]", "eval.tasks=[]", f"loss.source={rows}", "samples.prompts=[Hello]",
            "samples.max_new_tokens=2", "update_cards=false", f"output={tmp_path / 'new' / 'out'}"]
    out = run(compose("eval", args))
    res = json.loads((out / "results.json").read_text())
    assert [m["loss"][str(rows)]["rows"] for m in res["models"]] == [3, 3]
    assert "Hello\n" in (out / "samples.md").read_text()
    header = (out / "results.md").read_text().split("\n")[2]  # lists only what ran: no harness here
    assert "lm-eval" not in header and "few-shot" not in header and "loss and perplexity on" in header, header
    assert "1 greedy sample" in header, header
    assert START not in (adapters[0] / "README.md").read_text()  # update_cards=false left the card alone
    # The folder appeared whole (missing parents created, no staging folder left); a second run may not replace it.
    assert [p.name for p in out.parent.iterdir()] == ["out"] and out == tmp_path / "new" / "out"
    with pytest.raises(UserError, match=rf"^output={out} already exists; pass overwrite=true"):
        run(compose("eval", args))
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "samples.md"]


# ---- bad input: one clear error, before any model loads --------------------------------------------------------

def test_adapter_for_another_base_is_refused(adapters, tmp_path):
    from transformers import GPTJConfig

    other = tmp_path / "other-base"
    GPTJConfig(n_embd=128, n_layer=2, n_head=4, rotary_dim=16, vocab_size=1024).save_pretrained(other)
    with pytest.raises(UserError, match=r"adapter 'a' was trained on a base with hidden_size=256.*hidden_size=128"):
        run(compose("eval", [f"adapters=[{adapters[0]}]", "model=tiny_gptj", f"model.name_or_path={other}",
                             "eval.tasks=[]"]))


def test_adapters_of_different_bases_are_refused(adapters, tmp_path):
    moved = tmp_path / "b"
    shutil.copytree(adapters[1], moved)
    saved = OmegaConf.load(moved / "lora_train.yaml")
    saved.model.name_or_path = "EleutherAI/gpt-j-6b"
    OmegaConf.save(saved, moved / "lora_train.yaml")
    with pytest.raises(UserError, match="different bases"):
        run(compose("eval", [f"adapters=[{adapters[0]},{moved}]", "eval.tasks=[]"]))


def test_missing_lm_eval_says_how_to_install(adapters, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    with pytest.raises(UserError, match=re.escape(install_hint("eval"))):  # the command that fits this install
        run(compose("eval", [f"adapters=[{adapters[0]}]", "eval.tasks=[commonsense_mini]"]))


def test_bad_include_path_and_nothing_to_evaluate(adapters, tmp_path):
    need_module("lm_eval", "eval")
    with pytest.raises(UserError, match="eval.include_path"):
        run(compose("eval", [f"adapters=[{adapters[0]}]", f"eval.include_path={tmp_path / 'none'}"]))
    with pytest.raises(UserError, match="nothing to evaluate"):
        run(compose("eval", ["eval.tasks=[]"]))


def test_unknown_task_is_named_with_a_suggestion(adapters):
    need_module("lm_eval", "eval")
    with pytest.raises(UserError, match=r"unknown lm-eval task 'arc_esay' \(did you mean arc_easy"):
        run(compose("eval", [f"adapters=[{adapters[0]}]", "eval.tasks=[arc_esay]"]))


@pytest.mark.parametrize("override,error,reason", [
    ("eval.limit=lots", "Error merging override eval.limit=lots",
     "Value 'lots' of type 'str' could not be converted to Float"),
    ("eval.nonsense=1", "Could not override 'eval.nonsense'", None),
    ("loss.batch_size=big", "Error merging override loss.batch_size=big",
     "Value 'big' of type 'str' could not be converted to Integer"),
])
def test_bad_overrides_fail_at_compose_time(override, error, reason):
    with pytest.raises(ConfigCompositionException, match=re.escape(error)) as err:
        compose("eval", [override])
    if reason:  # Hydra's message names the override; the reason and the full key come from OmegaConf's cause
        assert reason in str(err.value.__cause__) and f"full_key: {override.split('=')[0]}" in str(err.value.__cause__)
