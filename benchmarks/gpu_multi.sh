#!/usr/bin/env bash
# Multi-GPU check for a machine with CUDA GPUs: every launch path lora-train documents, on the tiny GPT-J (no download),
# each followed by a plain-PEFT load of the adapter it wrote.
#
#   bash benchmarks/gpu_multi.sh [OUT_DIR]          # NPROC=<n> to use fewer GPUs than the machine has
#
# Runs: torchrun (DDP) and accelerate launch with conf/accelerate/{ddp,deepspeed_zero2,deepspeed_zero3,fsdp_qlora}.yaml
# (DeepSpeed presets are skipped when deepspeed is not installed: pip install "lora-train[deepspeed]").
# With one GPU it still runs every path with one process (FSDP / ZeRO-3 then shard over a single rank).
# Prints one line per path: status, seconds, final train / eval loss, processes; exits non-zero if any failed.
set -uo pipefail

OUT=${1:-gpu_multi_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "no CUDA GPU: nothing to check"; exit 1; fi
NPROC=${NPROC:-$GPUS}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
echo "processes per run: $NPROC"

# A few bf16 steps on the tiny 4-bit GPT-J; global batch 8 x NPROC so every process count divides it.
ARGS=(experiment=debug "adapters_dir=$OUT/adapters" quant.compute_dtype=bfloat16 train.per_device_batch_size=4
      "train.global_batch_size=$((8 * NPROC))" train.max_steps=6 train.eval_steps=3)
preset() { python -c "from lora_train.training.distributed import accelerate_config; print(accelerate_config('$1'))"; }
status=0
summary=()

check() {  # name, command...
  local name=$1; shift
  local start=$SECONDS
  if "$@" "${ARGS[@]}" "run_name=$name" > "$OUT/$name.log" 2>&1 &&
     python - "$OUT/adapters/$name" >> "$OUT/$name.log" 2>&1 <<'PY'
import json, sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lora_train.tiny import tiny_gptj_path

folder = Path(sys.argv[1])
m = json.loads((folder / "metrics.json").read_text())
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gptj_path()), folder)
lora = [p for n, p in model.named_parameters() if "lora_B" in n]
assert lora and all(p.numel() > 0 for p in lora), "adapter weights missing (a sharded state dict saved unsplit?)"
assert any(p.abs().sum() > 0 for p in lora), "lora_B still zero: nothing was trained or saved"
print(f"CHECK world={m['world_size']} train_loss={m['train_loss']:.4f} eval_loss={m.get('eval_loss', float('nan')):.4f}")
PY
  then
    summary+=("ok    $name $((SECONDS - start))s $(grep -h '^CHECK' "$OUT/$name.log" | cut -d' ' -f2-)")
  else
    summary+=("FAIL  $name $((SECONDS - start))s (log: $OUT/$name.log)")
    status=1
  fi
}

check torchrun_ddp torchrun --standalone --nproc_per_node "$NPROC" "$(command -v lora-train)"
check accelerate_ddp accelerate launch --config_file "$(preset ddp)" --num_processes "$NPROC" "$(command -v lora-train)"
if python -c "import deepspeed" 2>/dev/null; then
  check deepspeed_zero2 accelerate launch --config_file "$(preset deepspeed_zero2)" --num_processes "$NPROC" "$(command -v lora-train)"
  check deepspeed_zero3 accelerate launch --config_file "$(preset deepspeed_zero3)" --num_processes "$NPROC" "$(command -v lora-train)"
else
  summary+=("skip  deepspeed_zero2 / deepspeed_zero3 (deepspeed not installed)")
fi
check fsdp_qlora accelerate launch --config_file "$(preset fsdp_qlora)" --num_processes "$NPROC" "$(command -v lora-train)"

printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
exit $status
