"""Kill `lora-train` at random moments, resume until it finishes, and compare with an uninterrupted run.

    python benchmarks/kill_resume.py --trials 3 --kills 2          # on the embedded tiny GPT-J, CPU
    python benchmarks/kill_resume.py --signal TERM                  # preemption instead of kill -9

Each trial starts a run with checkpoints every step, then `--kills` times waits a random time after training has
started, sends the signal (SIGKILL: mid-step or mid-checkpoint; SIGTERM: a clean preemption) and resumes with
resume=auto (a kill before the first checkpoint starts over). It prints where each kill landed (the newest complete
checkpoint, and whether a checkpoint folder was left half-written) and the largest absolute weight difference
between the final adapter and the reference.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from lora_train.training import checkpoints

RUN = ["experiment=debug", "data.max_length=64", "data.val_fraction=0", "data.max_rows=24",
       "train.per_device_batch_size=4", "train.global_batch_size=8", "train.max_steps=6", "train.warmup_steps=2",
       "train.report_to=[]", "train.save_steps=1", "train.save_total_limit=2"]


def lora_train(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("lora-train")
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--kills", type=int, default=2, help="interruptions per trial")
    ap.add_argument("--signal", choices=["KILL", "TERM", "USR1"], default="KILL")
    ap.add_argument("--max-delay", type=float, default=6.0, help="seconds after training starts, at most")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    sig = getattr(signal, f"SIG{opts.signal}")
    root = Path(tempfile.mkdtemp(prefix="kill_resume-"))
    try:
        ref_log = root / "reference.log"
        if lora_train(RUN + ["run_name=ref"], root, ref_log).wait() != 0:
            sys.exit(ref_log.read_text()[-3000:])
        worst = 0.0
        for trial in range(opts.trials):
            name = f"t{trial}"
            work = root / "adapters" / f".{name}.work"
            landed = []
            for k in range(opts.kills + 1):
                log = root / f"{name}-{k}.log"
                proc = lora_train(RUN + [f"run_name={name}"] + (["resume=auto"] if k else []), root, log)
                if k == opts.kills:
                    break
                while "if interrupted, resume with" not in log.read_text() and proc.poll() is None:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, opts.max_delay))
                if proc.poll() is not None:
                    break  # finished before the signal: nothing left to interrupt
                proc.send_signal(sig)
                code = proc.wait()
                last = checkpoints.latest(work)
                torn = [p.name for p in work.glob("checkpoint-*") if not checkpoints.is_complete(p)]
                landed.append(f"exit {code}, newest complete {last.name if last else None}, torn {torn or 'none'}")
            if proc.wait() != 0:
                sys.exit(f"trial {trial} failed:\n{log.read_text()[-3000:]}")
            diff = max_diff(root / "adapters" / name, root / "adapters" / "ref")
            worst = max(worst, diff)
            print(f"trial {trial}: {'; '.join(landed) or 'not interrupted'} -> max |diff| {diff:.2e}", flush=True)
        print(f"worst max |diff| over {opts.trials} trials: {worst:.2e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
