"""LoRA variants: lora.init (gaussian, loftq, pissa, olora), use_rslora, use_dora and LoRA+ configured and validated,
initialised on the 4-bit base on the CPU, saved for the original base, refused while still paired with a residual
base, and handled by every command (train, merge, generate, eval) on the embedded default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lora_train import UserError, compose, train
from lora_train.adapters import read_adapter
from lora_train.model import load_base, peft_config, resolve_model
from lora_train.schemas import LoraConfig, LoraInit, ModelConfig, QuantConfig
from lora_train.training import init as I


def lora(**kw) -> LoraConfig:
    return LoraConfig(**kw)


def peft_model(cfg: LoraConfig, quant: QuantConfig | None = None):
    from peft import get_peft_model

    base = load_base(resolve_model(ModelConfig()), ModelConfig(), quant or QuantConfig())
    return get_peft_model(base, peft_config(cfg))


def full(names) -> dict:
    return {n: w.float() for n, w in I.full_weights(resolve_model(ModelConfig()), None, list(names)).items()}


def effective(layer) -> torch.Tensor:
    """What the layer computes at the start: dequantized base + scale * B @ A."""
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    return I.base_weight(layer) + layer.scaling["default"] * (b @ a)


# ---- configuration ---------------------------------------------------------------------------------------------

def test_default_is_plain_lora_and_the_loftq_preset_only_changes_the_init():
    cfg = compose("train")
    job = OmegaConf.to_object(cfg)
    assert job.lora.init == LoraInit.default and not job.lora.use_dora and not job.lora.use_rslora
    assert job.train.loraplus_lr_ratio is None and job.lora.loftq_iters == 1
    pc = peft_config(job.lora)
    assert pc.init_lora_weights is True and not pc.use_dora and not pc.use_rslora  # PEFT's default, as before
    for extra in (["lora=all_linear"], ["experiment=gpt4all_j_lora_6b"]):
        assert OmegaConf.to_object(compose("train", extra)).lora.init == LoraInit.default
    loftq = OmegaConf.to_object(compose("train", ["lora=loftq"])).lora
    assert loftq.init == LoraInit.loftq and (loftq.r, loftq.alpha, loftq.target_modules) == \
        (job.lora.r, job.lora.alpha, job.lora.target_modules)
    assert peft_config(lora(init=LoraInit.gaussian, use_dora=True, use_rslora=True)).init_lora_weights == "gaussian"


@pytest.mark.parametrize("overrides, message", [
    (["lora.loftq_iters=0"], r"lora.loftq_iters=0 is out of range"),
    (["lora.loftq_iters=3"], r"lora.loftq_iters=3 only applies with lora.init=loftq"),
    (["lora=loftq", "quant=none"], r"lora.init=loftq .* quant.mode=none"),
    (["lora.init=pissa", "quant=int8"], r"lora.init=pissa on an int8 base"),
    (["train.loraplus_lr_ratio=-1"], r"train.loraplus_lr_ratio=-1.0 is out of range"),
])
def test_bad_variant_settings_are_refused_before_anything_loads(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        train(compose("train", [f"adapters_dir={tmp_path}", *overrides]))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, message", [("lora.init=pissa", "FSDP / ZeRO-3 shard"),
                                               ("train.loraplus_lr_ratio=16", "before FSDP / ZeRO-3 wrap")])
def test_variants_that_need_whole_weights_refuse_sharded_training(override, message, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` exports under FSDP
    with pytest.raises(UserError, match=message):
        train(compose("train", [f"adapters_dir={tmp_path}", override]))


@pytest.mark.parametrize("overrides, shown", [
    ([], None),
    (["lora=loftq", "lora.loftq_iters=4"], "; init loftq (4 rounds)"),
    (["lora.init=pissa", "lora.use_dora=true", "train.loraplus_lr_ratio=16"], "; init pissa, DoRA, LoRA+ ratio 16.0"),
    (["lora.use_rslora=true"], "; rsLoRA"),
])
def test_dry_run_plan_names_the_variant(overrides, shown, tmp_path, capsys):
    assert train(compose("train", [f"adapters_dir={tmp_path}", "dry_run=true", *overrides])) is None
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lora:"))
    assert line.endswith(shown) if shown else ";" not in line


def test_unknown_init_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="lora.init"):
        compose("train", ["lora.init=svd"])


# ---- initialisation on the 4-bit base, on the CPU ---------------------------------------------------------------

def test_loftq_one_round_keeps_the_base_and_fits_the_rounding_error():
    model = peft_model(lora(init=LoraInit.loftq, alpha=16))  # alpha != r: the scale must be accounted for
    layers = I.lora_layers(model)
    before = {n: l.get_base_layer().weight.data.clone() for n, l in layers.items()}
    initial = I.initialise(model, lora(init=LoraInit.loftq, alpha=16), resolve_model(ModelConfig()), None)
    assert not initial.converts and model.peft_config["default"].init_lora_weights is True
    w = full(layers)
    for name, layer in layers.items():
        assert torch.equal(layer.get_base_layer().weight.data, before[name])  # the base as loaded, bit for bit
        plain = (I.base_weight(layer) - w[name]).norm()
        assert (effective(layer) - w[name]).norm() < 0.95 * plain, name  # closer to the full weights than NF4


@pytest.mark.parametrize("init, iters", [("loftq", 3), ("pissa", 1), ("olora", 1)])
def test_residual_inits_put_the_quantized_residual_in_the_base(init, iters):
    cfg = lora(init=LoraInit(init), loftq_iters=iters, use_dora=init == "olora")
    model = peft_model(cfg)
    layers = I.lora_layers(model)
    initial = I.initialise(model, cfg, resolve_model(ModelConfig()), None)
    assert initial.converts and model.peft_config["default"].init_lora_weights == init  # checkpoints are marked
    w = full(layers)
    for name, layer in layers.items():
        a, b = initial.start[name]
        scale = layer.scaling["default"]
        if init != "loftq":  # the full-precision split is exact: W = residual + scale * B A
            residual = w[name] - scale * (b @ a)
            assert torch.equal(I.base_weight(layer), I.roundtrip(residual, layer.get_base_layer().weight))
        plain = (I.roundtrip(w[name], layer.get_base_layer().weight) - w[name]).norm()
        assert (effective(layer) - w[name]).norm() < 1.5 * plain, name
        if cfg.use_dora:  # the magnitude starts at the row norms of what the layer computes: output unchanged
            assert torch.allclose(layer.lora_magnitude_vector["default"].weight, effective(layer).norm(dim=1),
                                  rtol=1e-4)


def test_saved_residual_checkpoint_is_refused_by_name(tmp_path):
    cfg = lora(init=LoraInit.pissa)
    model = peft_model(cfg)
    I.initialise(model, cfg, resolve_model(ModelConfig()), None)
    model.save_pretrained(tmp_path / "checkpoint-2")
    with pytest.raises(UserError, match=r"adapter 'checkpoint-2' was initialised with pissa .*saved without "
                                        r"conversion"):
        read_adapter(tmp_path / "checkpoint-2")


@pytest.mark.parametrize("init, extra", [
    ("olora", {"use_dora": True}),
    pytest.param("pissa", {"use_rslora": True}, marks=pytest.mark.slow),
    pytest.param("loftq", {"loftq_iters": 2}, marks=pytest.mark.slow),
])
def test_converted_adapter_reproduces_the_trained_model_on_the_full_precision_base(init, extra, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = lora(init=LoraInit(init), **extra)
    model = peft_model(cfg)
    initial = I.initialise(model, cfg, resolve_model(ModelConfig()), None)
    layers = I.lora_layers(model)
    torch.manual_seed(0)
    with torch.no_grad():  # "training": move A, B (and the magnitude) away from their start
        for p in (p for n, p in model.named_parameters() if "lora_" in n):
            p.add_(0.02 * torch.randn_like(p) * p.abs().mean())
    # The trained model in full precision: the residual base + scale * B A (DoRA: rows rescaled to m).
    w = full(layers)
    trained = {}
    for name, layer in layers.items():
        a0, b0 = initial.start[name]
        s = layer.scaling["default"]
        a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
        v = w[name] - s * (b0 @ a0) + s * (b @ a)
        if cfg.use_dora:
            v = v * (layer.lora_magnitude_vector["default"].weight.float() / v.norm(dim=1))[:, None]
        trained[name] = v
    model.save_pretrained(tmp_path / "ad")
    I.convert(tmp_path / "ad", initial)
    conf = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert conf["r"] == 2 * cfg.r and conf["init_lora_weights"] is True
    read_adapter(tmp_path / "ad")  # a plain LoRA now: accepted

    path = resolve_model(ModelConfig())
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sd = ref.state_dict()
    ref.load_state_dict({**sd, **{f"{n}.weight": v for n, v in trained.items()}})
    on_original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                            tmp_path / "ad")
    ids = torch.randint(0, 500, (2, 24))
    with torch.no_grad():
        got, want = on_original(input_ids=ids).logits, ref(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-3


def test_loraplus_gives_b_the_larger_learning_rate(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = peft_model(lora())
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, use_cpu=True, report_to=[])
    opt = I.loraplus_optimizer(Trainer(model=model, args=args), 16)
    lrs = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]] = group["lr"]
    assert {lr for n, lr in lrs.items() if "lora_A" in n} == {1e-3}
    assert {lr for n, lr in lrs.items() if "lora_B" in n} == {16e-3}
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.gpu
def test_loftq_matches_peft_on_cuda():
    from conftest import need
    from peft.utils.loftq_utils import loftq_init

    need(torch.cuda.is_available(), "needs a CUDA GPU")
    import bitsandbytes as bnb

    torch.manual_seed(0)
    w = torch.randn(256, 512, device="cuda")
    param = bnb.nn.Params4bit(w.cpu(), requires_grad=False, compress_statistics=False, quant_type="nf4").to("cuda")
    for iters in (1, 3):
        q_peft, a_peft, b_peft = loftq_init(w, num_bits=4, reduced_rank=8, num_iter=iters)
        a, b, res = I.loftq(w, param, r=8, scale=1.0, iters=iters)  # PEFT ignores alpha / r: compare at scale 1
        assert torch.allclose(b @ a, b_peft.float() @ a_peft.float(), atol=1e-4)
        assert torch.allclose(I.roundtrip(res, param), q_peft.float(), atol=1e-5)


# ---- every command, every variant (the embedded default) -------------------------------------------------------

VARIANTS = {  # run name -> overrides; together they cover every init, DoRA, rsLoRA and LoRA+
    "gaussian-rslora": ["lora.init=gaussian", "lora.use_rslora=true", "train.loraplus_lr_ratio=16"],
    "loftq-dora": ["lora=loftq", "lora.use_dora=true"],
    "loftq2": ["lora=loftq", "lora.loftq_iters=2"],
    "pissa-rslora": ["lora.init=pissa", "lora.use_rslora=true"],
    "olora-dora": ["lora.init=olora", "lora.use_dora=true"],
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory, model_cache) -> Path:
    root = tmp_path_factory.mktemp("variants") / "adapters"
    for name, overrides in VARIANTS.items():
        train(compose("train", ["experiment=debug", f"adapters_dir={root}", f"run_name={name}",
                                "train.max_steps=2", "train.learning_rate=5e-3", *overrides]))
    return root


def mixed_batch_matches_peft_alone(host, names: list[str], dora: str) -> list[str]:
    """One mixed batch of `names` and the base: every row as generated alone, and the DoRA adapter's row what PEFT's
    own single-adapter forward (no adapter_names) gives. Returns the batch's texts."""
    from peft import PeftModel

    from lora_train.inference.generation import GenParams, GenRequest, format_prompt, generate

    mixed = [GenRequest(format_prompt("Name a colour."), n, GenParams(max_new_tokens=6)) for n in names + ["base"]]
    batched = [r.text for r in generate(host, mixed)]  # DoRA rows included: see registry.using
    assert batched == [generate(host, [r])[0].text for r in mixed]
    base = load_base(resolve_model(host.model_cfg), host.model_cfg, host.quant_cfg)
    ref = PeftModel.from_pretrained(base, str(host.folder_of(dora))).eval()
    ids = host.tokenizer(mixed[0].prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = ref.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=host.tokenizer.pad_token_id)
    assert batched[names.index(dora)] == host.tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                                                skip_special_tokens=True)
    return batched


def test_a_dora_row_in_a_mixed_batch_is_what_peft_gives_it_alone(tmp_path, model_cache):
    """The mixed-batch DoRA path lowers a private PEFT flag (registry._dora_rows_allowed): checked in the default
    run."""
    from lora_train.inference.registry import MultiAdapterModel
    from lora_train.schemas.infer import ServeJob

    for name, extra in [("plain", []), ("dora", ["lora.use_dora=true"])]:
        train(compose("train", ["experiment=debug", f"adapters_dir={tmp_path}", f"run_name={name}",
                                "train.max_steps=2", "train.learning_rate=5e-2", *extra]))
    host = MultiAdapterModel.from_config(ServeJob(adapters_dir=str(tmp_path)))
    dora, plain, base = mixed_batch_matches_peft_alone(host, ["dora", "plain"], "dora")
    assert dora != base  # the DoRA adapter changes the answer, so a row computed without it would be caught


@pytest.mark.slow
def test_each_variant_trains_on_the_4bit_base_and_is_recorded(variants):
    for name, overrides in VARIANTS.items():
        folder = variants / name
        job = OmegaConf.load(folder / "lora_train.yaml")
        conf = json.loads((folder / "adapter_config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        converted = any(o in overrides for o in ("lora.init=pissa", "lora.init=olora", "lora.loftq_iters=2"))
        assert conf["r"] == (16 if converted else 8) and conf["init_lora_weights"] in (True, "gaussian"), name
        assert conf["use_dora"] == job.lora.use_dora == ("dora" in name), name
        assert job.quant.mode == "nf4" and math.isfinite(metrics["train_loss"]), (name, metrics)
        card = (folder / "README.md").read_text()
        words = {"gaussian": "Gaussian initialisation", "loftq": "LoftQ initialisation", "pissa": "PiSSA",
                 "olora": "OLoRA", "dora": "DoRA", "rslora": "rsLoRA scale"}
        for key, word in words.items():
            assert (word in card) == (key in name), (name, word)
        assert ("LoRA+ (B learning rate x16)" in card) == (name == "gaussian-rslora")
        assert ("saved converted to a plain LoRA of twice the rank" in card) == converted, name
        read_adapter(folder)


@pytest.mark.slow
def test_each_variant_merges_and_verifies_against_its_training_base(variants, tmp_path):
    from lora_train.merging.merge import run as merge

    for name in VARIANTS:
        out = merge(compose("merge", [f"adapter={variants / name}", f"output={tmp_path / name}"]))
        report = json.loads((out / "merge_report.json").read_text())
        assert report["verification"]["failed"] == [] and report["merged_modules"] == 8, name


@pytest.mark.slow
def test_each_variant_is_served_and_evaluated(variants, tmp_path):
    from lora_train.evaluation.evaluate import run as evaluate
    from lora_train.inference.registry import MultiAdapterModel
    from lora_train.schemas.infer import ServeJob

    host = MultiAdapterModel.from_config(ServeJob(adapters_dir=str(variants)))
    names = sorted(VARIANTS)
    batched = mixed_batch_matches_peft_alone(host, names, "olora-dora")
    assert len(set(batched)) > 1

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": f"{w} {w}."}) + "\n"
                            for w in ["yes", "no", "maybe"]))
    out = evaluate(compose("eval", [f"adapters=[{','.join(str(variants / n) for n in names)}]", "eval.tasks=[]",
                                    f"loss.source={rows}", "update_cards=false", f"output={tmp_path / 'eval'}"]))
    res = json.loads((out / "results.json").read_text())
    losses = [m["loss"][str(rows)]["loss"] for m in res["models"]]
    assert len(losses) == len(names) + 1 and len(set(losses)) == len(losses)


def test_unconverted_residual_adapter_is_refused_by_every_command(tmp_path, model_cache):
    from lora_train.evaluation.evaluate import run as evaluate
    from lora_train.inference.registry import MultiAdapterModel
    from lora_train.merging.merge import run as merge
    from lora_train.schemas.infer import ServeJob

    cfg = lora(init=LoraInit.olora)
    model = peft_model(cfg)
    I.initialise(model, cfg, resolve_model(ModelConfig()), None)
    folder = tmp_path / "adapters" / "olora-raw"
    model.save_pretrained(folder)
    why = r"adapter 'olora-raw' was initialised with olora against a residual base"
    with pytest.raises(UserError, match=why):
        merge(compose("merge", [f"adapter={folder}", f"output={tmp_path / 'm'}", "base_model=builtin:tiny-gptj"]))
    with pytest.raises(UserError, match=why):
        evaluate(compose("eval", [f"adapters=[{folder}]", "eval.tasks=[]", "model=tiny_gptj"]))
    with pytest.raises(UserError, match=why):
        MultiAdapterModel.from_config(ServeJob(adapters_dir=str(tmp_path / "adapters"), model=ModelConfig(),
                                               quant=QuantConfig(), adapter_paths=[str(folder)]))
    assert not (tmp_path / "m").exists()
