"""What the commands print besides their own results: third-party noise kept out, progress bars only where someone
watches them.

`quiet()` runs when `lora_train` is imported, before transformers, accelerate, bitsandbytes or DeepSpeed are: each
filter below drops one exact message that says nothing a user can act on, and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# transformers 5 deprecated `is_gradient_checkpointing`; TRL and PEFT still read it (not our code), once per step.
# Only this message: a new FutureWarning still shows (tests/test_console.py trains under -W error::FutureWarning).
GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"

# (logger, message start): lines logged by dependencies at import that a user can do nothing about.
NOISE = {
    # DeepSpeed picks its accelerator when imported (transformers and accelerate import it when installed) and warns
    # on a machine without a GPU, even though no DeepSpeed launcher is used. Kept when one is (see _deepspeed_launch).
    "DeepSpeed": "Setting accelerator to CPU",
    # bitsandbytes on an AVX512-BF16 CPU tries to fetch an optional kernel from the Hub and logs that it could not
    # (it falls back to its own): the run needs no network and loses nothing.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    # ... and with HF_HUB_OFFLINE=1 the `kernels` package says first that it skips checking that kernel's publisher.
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


class _Drop(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _deepspeed_launch() -> bool:
    """True under `accelerate launch` with a DeepSpeed config (it exports this) or the `deepspeed` launcher."""
    return (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
            or "DEEPSPEED_LAUNCHER" in os.environ or "DS_ACCELERATOR" in os.environ)


def quiet() -> None:
    """Install the filters (idempotent). Loggers keep filters when their library configures them later."""
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_WARNING, category=FutureWarning)
    for name, start in NOISE.items():
        if name == "DeepSpeed" and _deepspeed_launch():
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
            logger.addFilter(_Drop(start))


def wants_progress(progress: bool | None) -> bool:
    """progress=true/false as given; unset: bars only when stderr is a terminal (never into a log file)."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress_bars(on: bool) -> None:
    """Switch the bars of transformers ("Loading weights", "Writing model shards"), the Hub and datasets."""
    import transformers.utils.logging as tf_logging

    (tf_logging.enable_progress_bar if on else tf_logging.disable_progress_bar)()  # the Hub's bars too
    import datasets

    (datasets.enable_progress_bars if on else datasets.disable_progress_bars)()
