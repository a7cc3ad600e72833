"""lora-merge adapters=[...]: combined adapters that plain PEFT loads and that do what their maths says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from merge_helpers import adapters, base_path, deltas  # noqa: F401  (session fixture)

from lora_train import UserError, compose
from lora_train.artifacts import shown_path
from lora_train.merging.merge import run as merge


def combined(tmp_path: Path, folders: list[Path], *overrides: str, name: str = "c") -> Path:
    return merge(compose("merge", [f"adapters=[{','.join(map(str, folders))}]", f"output={tmp_path / name}",
                                   *overrides]))


def close(got: dict, want: dict, rel: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for k in want:
        scale = want[k].abs().max()
        assert (got[k] - want[k]).abs().max() <= rel * scale, k


def weighted(parts: list[tuple[float, Path]]) -> dict:
    out: dict = {}
    for w, folder in parts:
        for k, d in deltas(folder).items():
            out[k] = out.get(k, 0) + w * d
    return out


def test_one_adapter_at_weight_one_reproduces_itself(adapters, tmp_path):
    for parent in ("a", "rs"):  # rs: rsLoRA, where PEFT alone would write scale sqrt(r) instead of 1
        out = combined(tmp_path, [adapters[parent]], name=parent)
        close(deltas(out), deltas(adapters[parent]))
        assert json.loads((out / "adapter_config.json").read_text())["use_rslora"] is False


def test_cat_is_exactly_the_weighted_sum_and_plain_peft_loads_it(adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = [(0.7, adapters["a"]), (-0.3, adapters["b"]), (0.5, adapters["rs"])]
    out = combined(tmp_path, [p for _, p in parts], f"weights=[{','.join(str(w) for w, _ in parts)}]",
                   "combination=cat")
    want = weighted(parts)
    close(deltas(out), want)
    combo = json.loads((out / "combination.json").read_text())
    assert combo["r"] == 8 + 4 + 8 and combo["relative_error"] < 1e-6
    assert [p["weight"] for p in combo["parents"]] == [0.7, -0.3, 0.5]
    card = (out / "README.md").read_text()
    assert all(f"`{shown_path(str(p))}` | {w} |" in card for w, p in parts) and "combination" in card

    # Behaviour: the adapter on the base computes exactly what base + the weighted sum of deltas computes.
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Name three colours.\n", return_tensors="pt")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path(out)), out)
    manual = AutoModelForCausalLM.from_pretrained(base_path(out))
    with torch.no_grad():
        params = dict(manual.named_parameters())
        for module, d in want.items():
            params[f"{module}.weight"] += d
        diff = (model(**ids).logits - manual(**ids).logits).abs().max()
    assert diff < 1e-4


def test_svd_is_exact_at_full_rank_and_truncates_below(adapters, tmp_path):
    parts = [(1.0, adapters["a"]), (1.0, adapters["b"])]
    full = combined(tmp_path, [adapters["a"], adapters["b"]], "combination=svd", "svd_rank=12", name="full")
    close(deltas(full), weighted(parts), rel=1e-4)
    low = combined(tmp_path, [adapters["a"], adapters["b"]], "combination=svd", "svd_rank=2", name="low")
    combo = json.loads((low / "combination.json").read_text())
    assert combo["r"] == 2 and 0.01 < combo["relative_error"] < 1


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "dare_linear", "magnitude_prune"])
def test_same_rank_methods_write_loadable_adapters(adapters, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    extra = [] if method == "linear" else ["density=0.5"]
    out = combined(tmp_path, [adapters["a"], adapters["a2"]], f"combination={method}", "weights=[0.6,0.4]", *extra)
    combo = json.loads((out / "combination.json").read_text())
    assert combo["r"] == 8 and combo["relative_error"] > 0 and combo["meaning"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path(out)), out)
    assert model.peft_config["default"].r == 8
    if method.startswith("dare"):  # random, but seeded: the same command gives the same adapter
        again = combined(tmp_path, [adapters["a"], adapters["a2"]], f"combination={method}", "weights=[0.6,0.4]",
                         *extra, name="again")
        assert (again / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()


def test_a_combined_adapter_merges_into_a_verified_full_model(adapters, tmp_path):
    out = combined(tmp_path, [adapters["a"], adapters["a2"]], "combination=cat", "weights=[1.0,0.5]")
    full = merge(compose("merge", [f"adapter={out}", f"output={tmp_path / 'full'}"]))
    report = json.loads((full / "merge_report.json").read_text())["verification"]
    assert report["failed"] == [] and report["max_abs_logit_diff"] < 1e-4


@pytest.mark.parametrize("overrides, message", [
    (["combination=linear"], r"same rank.*'a': \[8\].*'b': \[4\].*cat"),
    (["combination=cat", "density=0.5"], "does not take density"),
    (["combination=ties"], "needs density"),
    (["combination=ties", "density=1.5"], "needs density"),
    (["combination=svd", "svd_rank=0"], "svd_rank"),
    (["combination=cat", "svd_rank=4"], "only combination=svd"),
    (["combination=cat", "majority_sign_method=frequency"], "majority_sign_method"),
    (["combination=cat", "weights=[1.0]"], "one weight per adapter"),
])
def test_bad_combination_requests_are_refused(adapters, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        combined(tmp_path, [adapters["a"], adapters["b"]], *overrides)
    assert list(tmp_path.iterdir()) == []


def test_cases_peft_gets_wrong_are_refused(adapters, tmp_path):
    with pytest.raises(UserError, match="negative weight.*cat"):
        combined(tmp_path, [adapters["a"], adapters["a2"]], "combination=linear", "weights=[1.0,-1.0]")
    with pytest.raises(UserError, match="DoRA"):
        combined(tmp_path, [adapters["a"], adapters["dora"]], "combination=cat")
    with pytest.raises(UserError, match="at least two adapters"):
        combined(tmp_path, [adapters["a"]], "combination=ties", "density=0.5")
    with pytest.raises(UserError, match="same folder twice"):
        combined(tmp_path, [adapters["a"], adapters["a"]], "combination=cat")
    with pytest.raises(UserError, match="either adapter="):
        merge(compose("merge", [f"adapter={adapters['a']}", f"adapters=[{adapters['b']}]", "output=x"]))
    assert list(tmp_path.iterdir()) == []


def test_adapters_of_different_bases_are_refused(adapters, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(adapters["a2"], other)
    base = json.loads((other / "base_model.json").read_text())
    (other / "base_model.json").write_text(json.dumps({**base, "hidden_size": 4096}))
    with pytest.raises(UserError, match="'a'.*'other'.*different bases"):
        combined(tmp_path, [adapters["a"], other], "combination=cat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
