"""The library side of adapter-swap inference: one 4-bit base, adapters chosen per row, LRU, validation, sampling,
stop strings, streaming, and the `lora-generate` command."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time

import pytest
from hydra.errors import ConfigCompositionException
from inference_helpers import cli, escaping_links, foreign_adapter, train_two

from lora_train import UserError, compose
from lora_train.inference.batching import Batcher, QueueFull, Ticket
from lora_train.inference.generation import GenParams, GenRequest, format_prompt, generate
from lora_train.inference.registry import MultiAdapterModel, check_name
from lora_train.schemas.infer import ServeJob

PROMPTS = ["Tell me a joke about cats", "What is the capital of France?", "Write a haiku", "Hi"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("gen")
    train_two(root / "adapters")
    return root / "adapters"


@pytest.fixture(scope="module")
def host(adapters):
    return MultiAdapterModel.from_config(ServeJob(adapters_dir=str(adapters)))


def greedy(host, adapter, prompt, n=8, **kw):
    return generate(host, [GenRequest(format_prompt(prompt), adapter, GenParams(max_new_tokens=n, **kw))])[0]


def test_base_inferred_from_adapters_and_each_adapter_changes_output(host):
    assert host.base_name == "tiny-gptj" and host.names() == ["alpha", "beta"]
    assert type(host.base.transformer.h[0].attn.q_proj).__name__ == "Linear4bit"  # quant=nf4 from lora_train.yaml
    outs = {a: greedy(host, a, PROMPTS[0]).text for a in ["alpha", "beta", "base"]}
    assert len(set(outs.values())) == 3, outs
    assert greedy(host, "tiny-gptj", PROMPTS[0]).text == outs["base"]  # the base's own name is the base


def test_adapter_rows_match_plain_peft(host, adapters):
    """Our per-row adapter choice gives what PeftModel.from_pretrained on a fresh base gives."""
    import torch
    from peft import PeftModel

    from lora_train.model import load_base, resolve_model

    base = load_base(resolve_model(host.model_cfg), host.model_cfg, host.quant_cfg)
    ref = PeftModel.from_pretrained(base, str(adapters / "beta")).eval()
    ids = host.tokenizer(format_prompt(PROMPTS[1]), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = ref.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=host.tokenizer.pad_token_id)
    want = host.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert greedy(host, "beta", PROMPTS[1], n=10).text == want


def test_mixed_adapter_batch_equals_single_requests(host):
    reqs = [GenRequest(format_prompt(p), a, GenParams(max_new_tokens=n))
            for p, a, n in zip(PROMPTS, ["alpha", "beta", "base", "alpha"], [8, 3, 6, 8])]
    batched = generate(host, reqs)
    singles = [generate(host, [r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [(r.completion_tokens, r.finish_reason) for r in batched] == [(r.completion_tokens, r.finish_reason)
                                                                          for r in singles]
    assert [r.completion_tokens for r in batched if r.finish_reason == "length"] == [8, 3, 6]


def test_seeded_sampling_is_per_row_and_reproducible(host):
    sampled = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    alone = generate(host, [GenRequest(format_prompt("Hi"), "alpha", sampled)])[0].text
    others = [GenRequest(format_prompt(p), "beta", GenParams(max_new_tokens=16, temperature=1.0)) for p in PROMPTS]
    in_batch = generate(host, others[:2] + [GenRequest(format_prompt("Hi"), "alpha", sampled)] + others[2:])[2].text
    assert alone == in_batch
    other_seed = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=8)
    assert generate(host, [GenRequest(format_prompt("Hi"), "alpha", other_seed)])[0].text != alone


def test_stop_strings_and_streamed_pieces(host):
    full = greedy(host, "alpha", PROMPTS[0], n=16).text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    pieces = []
    res = generate(host, [GenRequest(format_prompt(PROMPTS[0]), "alpha", GenParams(max_new_tokens=16, stop=[stop]),
                                     on_text=pieces.append)])[0]
    assert res.finish_reason == "stop" and res.text == full[: full.index(stop)]
    assert "".join(pieces) == res.text and stop not in "".join(pieces)
    pieces = []
    res = generate(host, [GenRequest(format_prompt(PROMPTS[0]), "alpha", GenParams(max_new_tokens=16),
                                     on_text=pieces.append)])[0]
    assert "".join(pieces) == res.text == full and len(pieces) > 1


def test_lru_eviction_and_reload(host):
    before = greedy(host, "alpha", PROMPTS[2]).text
    host.max_resident = 1
    try:
        for name in host.resident():
            host.unload(name)
        host.load("alpha")
        host.load("beta")
        assert host.resident() == ["beta"]
        assert greedy(host, "alpha", PROMPTS[2]).text == before  # evicts beta, reloads alpha
        assert host.resident() == ["alpha"]
        with pytest.raises(UserError, match="max_resident_adapters=1"):
            generate(host, [GenRequest("x", "alpha"), GenRequest("x", "beta")])
        base = greedy(host, "base", PROMPTS[2]).text
        assert host.unload("alpha") and host.resident() == [] and not host.unload("alpha")
        assert greedy(host, "base", PROMPTS[2]).text == base  # back on the plain base
    finally:
        host.max_resident = 8


def test_names_are_not_paths(host, adapters, tmp_path):
    for bad in ["../alpha", "/etc", "a/b", "", ".hidden", "x" * 200, None]:
        with pytest.raises(UserError, match="not valid"):
            check_name(bad)
    with pytest.raises(UserError, match="does not exist"):
        host.load("nope")
    escaping_links(adapters, tmp_path, adapters / "alpha")
    try:
        assert "evil" not in host.names() and "sneaky" not in host.names()
        for name in ["evil", "sneaky"]:
            with pytest.raises(UserError, match="outside"):
                host.load(name)
    finally:
        (adapters / "evil").unlink()
        shutil.rmtree(adapters / "sneaky")


def test_pickle_weights_need_allow_pickle(host, adapters, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = adapters / "pickled"
    folder.mkdir()
    shutil.copy(adapters / "alpha" / "adapter_config.json", folder)
    torch.save(load_file(adapters / "alpha" / "adapter_model.safetensors"), folder / "adapter_model.bin")
    try:
        with pytest.raises(UserError, match="pickle"):
            host.load("pickled")
        host.allow_pickle = True
        assert greedy(host, "pickled", PROMPTS[3]).text == greedy(host, "alpha", PROMPTS[3]).text
    finally:
        host.allow_pickle = False
        host.unload("pickled")
        shutil.rmtree(folder)


def test_adapter_for_another_base_is_refused(host, adapters, tmp_path):
    foreign_adapter(adapters / "foreign")
    shifted = adapters / "shifted"
    shutil.copytree(adapters / "alpha", shifted)
    meta = json.loads((shifted / "base_model.json").read_text())
    (shifted / "base_model.json").write_text(json.dumps({**meta, "hidden_size": 4096}))
    try:
        with pytest.raises(UserError, match="'foreign'.*256"):
            host.load("foreign")
        with pytest.raises(UserError, match="'shifted'.*hidden_size=4096"):
            host.load("shifted")
        assert greedy(host, "alpha", PROMPTS[0]).text  # still serving
    finally:
        shutil.rmtree(adapters / "foreign")
        shutil.rmtree(shifted)


def test_bad_request_fails_alone_in_a_batch_and_queue_is_bounded(host):
    batcher = Batcher(host, max_batch_size=8, wait_ms=50, max_queue=4)
    done, lock = {}, threading.Lock()
    events = [threading.Event() for _ in range(3)]

    def on_done(i):
        def cb(res, err):
            with lock:
                done[i] = (res, err)
            events[i].set()
        return cb

    try:
        batcher.submit(Ticket(GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=4)), on_done=on_done(0)))
        batcher.submit(Ticket(GenRequest("   ", "beta"), on_done=on_done(1)))
        batcher.submit(Ticket(GenRequest("x", "nope"), on_done=on_done(2)))
        assert all(e.wait(120) for e in events)
        alone = generate(host, [GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=4))])[0]
        assert done[0][1] is None and (done[0][0].text, done[0][0].completion_tokens) == (alone.text,
                                                                                         alone.completion_tokens)
        assert "empty" in str(done[1][1]) and "does not exist" in str(done[2][1])
        # A long request occupies the worker; the queue then holds 4 and the next submit is refused.
        long = GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=400))
        batcher.submit(Ticket(long))
        deadline = time.time() + 60  # the worker must hold the long row before the flood, or it batches the flood too
        while batcher.running() == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert batcher.running() == 1
        with pytest.raises(QueueFull):
            for _ in range(6):
                batcher.submit(Ticket(GenRequest(format_prompt("Hi"), "alpha", GenParams(max_new_tokens=1))))
        long.cancelled.set()
    finally:
        batcher.close()


def test_configs_compose_and_reject_bad_values():
    job = compose("serve", ["quant=none", "port=9000", "api_key=k"])
    assert job.quant.mode.value == "none" and job.model is None and job.port == 9000
    gen = compose("generate", ["adapters=[alpha,base]", "sampling.temperature=0.7", "sampling.stop=[END]"])
    assert list(gen.adapters) == ["alpha", "base"] and gen.sampling.stop == ["END"]
    for command, bad, error, reason in [
        ("serve", "port=abc", "Error merging override port=abc", "could not be converted to Integer"),
        ("generate", "nope=1", "Could not override 'nope'", None),
        ("generate", "format=markdown", "Error merging override format=markdown",
         "Invalid value 'markdown', expected one of [adapter, gpt4all, raw]"),
    ]:
        with pytest.raises(ConfigCompositionException, match=re.escape(error)) as err:
            compose(command, [bad])
        assert reason is None or reason in str(err.value.__cause__)


def test_output_file_is_written_whole_into_new_folders_and_replaced_only_when_asked(adapters, tmp_path):
    from lora_train import generate as lora_generate

    out = tmp_path / "new" / "folder" / "out.jsonl"
    args = [f"adapters_dir={adapters}", "prompt=Hi", "sampling.max_new_tokens=2", "stream=false", f"output={out}"]
    records = lora_generate(compose("generate", args + ["adapters=[alpha]"]))
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    with pytest.raises(UserError, match=rf"^output={out} already exists; pass overwrite=true"):
        lora_generate(compose("generate", args + ["adapters=[beta]"]))
    assert json.loads(out.read_text())["adapter"] == "alpha"
    lora_generate(compose("generate", args + ["adapters=[beta]", "overwrite=true"]))
    assert json.loads(out.read_text())["adapter"] == "beta"
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_lora_generate_cli_streams_side_by_side(adapters, host, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = cli("lora-generate", f"adapters_dir={adapters}", "adapters=[alpha,beta,base]",
                   f"prompt={PROMPTS[0]}", "sampling.max_new_tokens=8", f"output={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["adapter"] for r in records] == ["alpha", "beta", "base"]
    for r in records:
        assert r["completion"] == greedy(host, r["adapter"], PROMPTS[0]).text
        assert f"[{r['adapter']}] {r['completion']}" in proc.stdout
    proc = cli("lora-generate", f"adapters_dir={adapters}", "adapters=[alpha]", "interactive=true",
                   "sampling.max_new_tokens=6", cwd=tmp_path, input="Hi\n/adapter nope\n/exit\n")
    assert proc.returncode == 0 and "alpha> " in proc.stdout and "'nope' does not exist" in proc.stdout
    proc = cli("lora-generate", f"adapters_dir={adapters}", "adapters=[../alpha]", "prompt=x", cwd=tmp_path)
    assert proc.returncode == 2 and "not valid" in proc.stderr
    proc = cli("lora-generate", f"adapters_dir={adapters}", "adapters=[alpha]", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to complete" in proc.stderr
