"""The Hydra SearchPathPlugin: a user's own Hydra application composes lora-train's config groups by name and builds
lora-train's objects from them, with nothing but lora-train installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

APP = '''
import json

import hydra
from omegaconf import OmegaConf

from lora_train.model import bnb_config, peft_config
from lora_train.schemas import LoraConfig, ModelConfig, QuantConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    # lora-train's typed schemas validate the groups this app borrowed.
    model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model))
    quant = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), cfg.quant))
    lora = peft_config(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoraConfig), cfg.lora)))
    print(json.dumps({"model": model.name_or_path, "quant_type": bnb_config(quant).bnb_4bit_quant_type,
                      "r": lora.r, "alpha": lora.lora_alpha, "targets": sorted(lora.target_modules),
                      "mine": cfg.mine}))


if __name__ == "__main__":
    main()
'''

CONFIG = """# python app.py   (a user's own application; the three groups come from lora-train's configs)
defaults:
  - model: gptj_6b
  - quant: nf4
  - lora: gpt4all_j
  - _self_

mine: 1
"""


def run_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(APP)
    return subprocess.run([sys.executable, "app.py", *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=dict(os.environ))


def test_own_hydra_app_composes_lora_train_groups(tmp_path):
    proc = run_app(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"model": "EleutherAI/gpt-j-6b", "quant_type": "nf4", "r": 8, "alpha": 32,
                   "targets": ["q_proj", "v_proj"], "mine": 1}


def test_own_hydra_app_selects_and_overrides_lora_train_options(tmp_path):
    proc = run_app(tmp_path, "lora=all_linear", "quant=fp4", "lora.r=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["quant_type"], out["r"]) == ("fp4", 16)


def test_search_path_lists_lora_train(tmp_path):
    proc = run_app(tmp_path, "--info", "searchpath")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora-train" in proc.stdout and "pkg://lora_train.conf" in proc.stdout
