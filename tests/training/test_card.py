"""The model card works as written: its Python snippets run for the adapter's base, it names no path of the machine
that trained it, and it states each fact once (train loss, the compute dtype used and the one asked for)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lora_train.training import card

SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


def test_the_cards_snippets_run_with_the_folder_substituted(trained_adapter):
    text = (trained_adapter / "README.md").read_text()
    snippets = SNIPPET.findall(text)
    assert snippets, "the card has no Python snippet"
    code = "\n".join(snippets).replace(card.THIS_FOLDER, str(trained_adapter))
    # Run as a user would paste it, in a fresh interpreter; then prove it really built the adapted model.
    code += "\nimport peft\nassert isinstance(model, peft.PeftModel)\nprint(type(model.base_model.model).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=trained_adapter.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPTJForCausalLM" in proc.stdout


def test_the_card_holds_no_absolute_path(trained_adapter):
    text = (trained_adapter / "README.md").read_text()
    for path in {str(trained_adapter), str(trained_adapter.parent.parent), str(Path.home()), str(Path.cwd())}:
        assert path not in text, path
    assert not re.search(r"(?<![\w.~<])/(?:tmp|root|home|Users|work)/", text)


def test_the_card_states_train_loss_once_and_both_dtypes(trained_adapter):
    text = (trained_adapter / "README.md").read_text()
    metrics = json.loads((trained_adapter / "metrics.json").read_text())
    assert "final train loss" not in text and text.count("train loss") == 1
    assert f"| {metrics['train_loss']:.4g} |" in text
    used, asked = metrics["compute_dtype"], metrics["config"]["quant"]["compute_dtype"]
    assert f"computed in {used}" in text
    row = next(line for line in text.splitlines() if "`quant.compute_dtype`" in line)
    assert asked in row and used in row


def _config(name_or_path: str, source: str) -> dict:
    return {"model": {"name_or_path": name_or_path, "revision": "v2"}, "data": {"source": source},
            "quant": {"mode": "nf4", "compute_dtype": "bfloat16"},
            "lora": {"r": 8, "alpha": 32, "target_modules": ["q_proj"]}, "train": {}, "seed": 1}


def test_a_local_base_and_data_file_are_shown_without_the_machines_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    text = card.render("r", _config(str(tmp_path / "models" / "base"), "/srv/data/rows.jsonl"),
                       {"compute_dtype": "float32"})
    assert str(tmp_path) not in text and "/srv/data" not in text
    assert 'from_pretrained("models/base", revision="v2")' in text  # relative to where the commands run
    assert "<rows.jsonl>" in text
    assert "float32 (asked bfloat16" in text


def test_a_hub_base_is_loaded_by_its_id_and_revision():
    text = card.render("r", _config("EleutherAI/gpt-j-6b", "builtin:sample"), {})
    assert 'AutoModelForCausalLM.from_pretrained("EleutherAI/gpt-j-6b", revision="v2")' in text
    assert "lora_train" not in text.split("## Use")[1].split("## Results")[0]


@pytest.mark.parametrize("template, says", [
    ("gpt4all", 'Each example is prompt + "\\n" + response + EOS'),
    ("chat_template", "rendered with the tokenizer's chat template"),
    ("alpaca", "Alpaca template"),
    ("Q: {prompt}\nA: ", "written with the template `Q: {prompt}\nA: `"),
])
def test_the_card_says_the_format_the_adapter_was_trained_in(template, says):
    config = _config("EleutherAI/gpt-j-6b", "builtin:sample")
    config["data"]["template"] = template
    text = card.render("r", config, {})
    assert says in text and (template == "gpt4all") == ('prompt + "\\n" + response' in text)
