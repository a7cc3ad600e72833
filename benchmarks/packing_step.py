"""One training step (forward + backward) of the same examples padded vs packed without padding (lora_train.training.segments).

    python benchmarks/packing_step.py                     # the 100M GPT-J shape, 8 examples of lengths 80-950
    python benchmarks/packing_step.py --model tiny
    python benchmarks/packing_step.py --profile           # also: where the packed step's time goes, by operator

Same 4-bit NF4 base, same LoRA weights (lora_B randomised so gradients are non-trivial, dropout off so both runs
see the same function), same examples; reports the step time of each layout, the ratio, the two losses and the
relative difference of the LoRA gradients.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LENGTHS = [950, 300, 120, 500, 80, 260, 700, 200]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "100m"], default="100m")
    ap.add_argument("--profile", action="store_true", help="profile one more packed step and print the top operators")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from lora_train.training.segments import SegmentCollator, use_segment_attention
    from lora_train.tiny import TinySpec, tiny_gptj_path

    spec = TinySpec(n_embd=768, n_layer=14, n_head=12, rotary_dim=32) if args.model == "100m" else TinySpec()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gptj_path(spec)), quantization_config=q, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    feats = []
    for n in LENGTHS:
        ids = torch.randint(0, spec.vocab_size, (n,)).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    width = max(LENGTHS)
    padded = {
        "input_ids": torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in feats]),
        "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in feats]),
        "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in feats]),
    }

    def step(batch):
        model.zero_grad()
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        seconds = time.perf_counter() - t0
        return out.loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), seconds

    step(padded)  # warm-up
    loss_pad, grad_pad, t_pad = step(padded)
    use_segment_attention(base)
    packed = SegmentCollator()(feats)
    step(packed)
    loss_seg, grad_seg, t_seg = step(packed)
    rel = ((grad_pad - grad_seg).norm() / grad_pad.norm()).item()
    real = sum(LENGTHS)
    print(f"model {args.model}, lengths {LENGTHS} ({real} real tokens, {len(LENGTHS) * width} padded), "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}\n")
    print("| layout | step s | real tokens/s | loss |\n|---|---|---|---|")
    print(f"| padded to the longest, sdpa with mask | {t_pad:.2f} | {real / t_pad:.0f} | {loss_pad:.6f} |")
    print(f"| packed without padding, per-example attention | {t_seg:.2f} | {real / t_seg:.0f} | {loss_seg:.6f} |")
    print(f"\nspeed-up {t_pad / t_seg:.2f}x; LoRA gradients differ by {rel:.1e} (relative norm)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(packed)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        print("\n| operator (packed step) | share of CPU time |\n|---|---|")
        for e in ops[:8]:
            print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% |")
        dq = sum(e.self_cpu_time_total for e in ops if "dequantize" in e.key)
        print(f"| (all bitsandbytes dequantization) | {100 * dq / total:.1f}% |")


if __name__ == "__main__":
    main()
