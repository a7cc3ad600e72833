"""QLoRA on a GPT-J-6B-shaped model with random weights, quantized to NF4 as it is built: peak VRAM, tokens/s, MFU.

    python benchmarks/gpu_qlora.py                      # on a GPU: GPT-J-6B shape, 1024 tokens, batch 1 (< 5 min)
    python benchmarks/gpu_qlora.py --batch 4 --steps 20
    python benchmarks/gpu_qlora.py --tiny               # the same code path on a small shape (runs on a CPU)

Nothing is downloaded. The model is created on the meta device; then each decoder nn.Linear is replaced by a
bitsandbytes Linear4bit whose random bf16 weight is generated on the device and quantized at once (NF4, double
quantization), so at most one full-precision matrix exists at a time. Embeddings, norms and the LM head are bf16.
LoRA r=8/alpha=32/dropout=0.1 on q_proj,v_proj (the GPT4All-J LoRA 6B adapter), AdamW, bf16 autocast, gradient
checkpointing: the recipe of `lora-train experiment=gpt4all_j_lora_6b` with train.per_device_batch_size=1.

Reports: tokens/s over the timed steps, peak memory (torch.cuda.max_memory_allocated, next to lora-train's
estimate for the same setup), MFU = model FLOPs per token (lora_train.training.estimate, no recomputation counted) x tokens/s
over the device's bf16 matmul peak measured in the same run (and over the datasheet peak when --datasheet-tflops).
"""

from __future__ import annotations

import argparse
import json
import time


def build(config, device, dtype):
    """A GPTJForCausalLM with random weights: 4-bit decoder linears quantized one at a time, the rest in `dtype`."""
    import bitsandbytes as bnb
    import torch
    from transformers import GPTJForCausalLM
    from transformers.models.gptj.modeling_gptj import GPTJRotaryEmbedding, create_sinusoidal_positions

    with torch.device("meta"):
        model = GPTJForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(0)
    head = model.get_output_embeddings()
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=True, quant_type="nf4", device="meta")
                w = torch.empty(child.out_features, child.in_features, device=device, dtype=dtype)
                w.normal_(0, config.initializer_range, generator=gen)
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4", module=q).to(device)  # quantized here; w freed
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(torch.zeros(child.out_features, device=device, dtype=dtype),
                                                requires_grad=False)
                setattr(mod, child_name, q)
    for mod in model.modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                t = torch.empty(p.shape, device=device, dtype=dtype)
                t.normal_(0, config.initializer_range, generator=gen) if p.dim() > 1 else t.fill_(1.0 if "weight"
                                                                                                 in pname else 0.0)
                setattr(mod, pname, torch.nn.Parameter(t, requires_grad=False))
        if isinstance(mod, GPTJRotaryEmbedding):
            mod.embed_positions = create_sinusoidal_positions(mod.max_positions, mod.pos_embd_dim).to(device)
    model.is_loaded_in_4bit = True
    return model


def matmul_peak(device, dtype, seconds=2.0) -> float:
    import torch

    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a small GPT-J shape: checks the code path on a CPU")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps (after 3 warm-up steps)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--datasheet-tflops", type=float, default=None, help="e.g. 989 for an H100 SXM (dense bf16)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPTJConfig

    from lora_train.training.estimate import estimate, shape_of
    from lora_train.schemas import DType, TrainJob

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = (GPTJConfig(n_embd=256, n_layer=2, n_head=8, rotary_dim=16, vocab_size=1024, bos_token_id=0, eos_token_id=0) if args.tiny
              else GPTJConfig())  # GPTJConfig's defaults are GPT-J-6B: 28 layers, d_model 4096, vocab 50400
    config._attn_implementation = "sdpa"
    t0 = time.time()
    model = build(config, device, dtype)
    build_s = time.time() - t0
    if cuda:
        torch.cuda.synchronize()
        after_build = torch.cuda.max_memory_allocated()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # float32 LoRA master weights, as lora-train keeps them
    gc = not args.no_checkpointing
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    gen = torch.Generator(device="cpu").manual_seed(0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    seconds = time.perf_counter() - t0
    tokens_per_s = args.steps * args.batch * args.seq / seconds

    job = TrainJob()
    job.data.max_length, job.train.per_device_batch_size, job.train.gradient_checkpointing = args.seq, args.batch, gc
    est = estimate(shape_of(config, job.lora), job, DType.bfloat16 if cuda else DType.float32)
    peak = matmul_peak(device, dtype)
    achieved = est.model_flops_per_token * tokens_per_s
    r = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": "tiny" if args.tiny else "gpt-j-6b", "params": est.params, "trainable": est.trainable,
        "seq": args.seq, "batch": args.batch, "gradient_checkpointing": gc, "steps": args.steps,
        "build_s": round(build_s, 1), "step_s": round(seconds / args.steps, 3), "tokens_per_s": round(tokens_per_s, 1),
        "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
        "model_gflop_per_token": round(est.model_flops_per_token / 1e9, 3),
        "measured_matmul_peak_tflops": round(peak / 1e12, 2), "mfu_vs_measured_peak": round(achieved / peak, 4),
        "estimate_gib": round(est.total / 2**30, 3),
    }
    if args.datasheet_tflops:
        r["mfu_vs_datasheet"] = round(achieved / (args.datasheet_tflops * 1e12), 4)
    if cuda:
        r["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        r["weights_vram_gib"] = round(after_build / 2**30, 3)
        r["estimate_over_measured"] = round(est.total / torch.cuda.max_memory_allocated(), 3)
    print(json.dumps(r, indent=1))
    if args.json:
        open(args.json, "w").write(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
