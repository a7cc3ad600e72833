"""A second architecture through the stack: the tiny Llama (grouped-query attention, tied embeddings, pad id = EOS id,
a chat template) trains with the EOS label kept, and lora-generate serves the adapter beside the base."""

from __future__ import annotations

import json

import torch

from lora_train import compose, generate, train


def test_tiny_llama_trains_and_generates_beside_its_base(tmp_path, model_cache):
    adapters = tmp_path / "adapters"
    folder = train(compose("train", ["experiment=debug", "model=tiny_llama", f"adapters_dir={adapters}",
                                     "run_name=llama", "train.learning_rate=1e-2"]))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in metrics["history"] if "loss" in h)
    out = tmp_path / "out.jsonl"
    records = generate(compose("generate", [f"adapters_dir={adapters}", "adapters=[llama,base]", "prompt=Hello",
                                            "stream=false", "sampling.max_new_tokens=8", f"output={out}"]))
    assert [r["adapter"] for r in records] == ["llama", "base"]
    assert records[0]["completion"] != records[1]["completion"]  # the adapter changes what the model says
    assert [json.loads(line)["adapter"] for line in out.read_text().splitlines()] == ["llama", "base"]
