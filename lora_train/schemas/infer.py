"""Typed config schemas of the inference commands, `lora-generate` (conf/generate.yaml) and `lora-serve`
(conf/serve.yaml), registered in Hydra's ConfigStore like the training schema.

`model` and `quant` default to None: the base is then read from the adapters' saved lora_train.yaml, so an adapter
is served on exactly the base it was trained on. `model=gptj_6b` or `quant=none` on the command line overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore

from lora_train.schemas.deploy import DeployConfig
from lora_train.schemas.model import ModelConfig, QuantConfig


class Scheduler(str, Enum):
    continuous = "continuous"  # rows join and leave the running batch at every decoding step
    static = "static"  # one batch at a time, run until its longest row finishes (the former batcher)


class PromptFormat(str, Enum):
    # Each adapter's own data.template from its lora_train.yaml (gpt4all without one); the base: its tokenizer's
    # chat template when it has one, else gpt4all.
    adapter = "adapter"
    gpt4all = "gpt4all"  # prompt + "\n", the GPT4All-J training format, whatever the adapter learned
    raw = "raw"  # the prompt text unchanged


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128  # tokens generated per completion at most
    temperature: float = 0.0  # 0 = greedy (deterministic); > 0 samples
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    seed: Optional[int] = None  # fixes a sampled completion; None = a fresh random one each time
    stop: list[str] = field(default_factory=list)  # the completion ends before the first of these strings


@dataclass
class BaseSelection:
    """How the inference commands find the base and the adapters."""

    model: Optional[ModelConfig] = None  # None = the base recorded in the adapters' lora_train.yaml
    quant: Optional[QuantConfig] = None  # None = the quantization the adapters were trained with
    adapters_dir: str = "adapters"  # every sub-folder holding adapter_config.json is an adapter named after it
    adapter_paths: list[str] = field(default_factory=list)  # extra adapter folders, anywhere (named after the folder)
    max_resident_adapters: int = 8  # adapters kept in memory; the least recently used is unloaded beyond this
    progress: Optional[bool] = None  # progress bars; None = only when stderr is a terminal (never into log files)
    allow_pickle: bool = False  # also load adapter_model.bin (a pickle: it can run code); safetensors only otherwise


@dataclass
class GenerateJob(BaseSelection):
    """The primary config of `lora-generate`."""

    adapters: list[str] = field(default_factory=list)  # names side by side; `base` = no adapter, `latest` = newest
    prompt: Optional[str] = None  # one prompt
    prompt_file: Optional[str] = None  # a text file, one prompt per line, or a .jsonl file with a "prompt" field
    format: PromptFormat = PromptFormat.adapter  # how a prompt becomes the text each adapter reads
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stream: bool = True  # print tokens as they come (one completion at a time); false = batched, printed at the end
    batch_size: int = 8  # completions per forward pass when stream=false (mixed adapters in one batch)
    scheduler: Scheduler = Scheduler.continuous  # stream=false: continuous (rows refill as others end) or static
    max_batch_tokens: int = 16384  # continuous: KV tokens the batch may hold (rows x longest prompt + max tokens)
    max_prefill_tokens: int = 512  # continuous: prompt tokens read per step, so long prompts do not stall others
    interactive: bool = False  # chat in the terminal with the first adapter of `adapters`
    output: Optional[str] = None  # also write {prompt, adapter, completion, finish_reason} lines to this .jsonl
    overwrite: bool = False  # replace an existing output file (refused otherwise, before anything loads)


@dataclass
class ServeJob(BaseSelection):
    """The primary config of `lora-serve`."""

    host: str = "127.0.0.1"  # only this machine by default; 0.0.0.0 exposes the server to the network
    port: int = 8000
    api_key: Optional[str] = None  # require "Authorization: Bearer <key>"; also read from $LORA_SERVE_API_KEY
    # How /v1/chat/completions renders messages: adapter (each adapter's training format; the tokenizer's chat
    # template where it trained with one), gpt4all, or raw (contents one per line). /v1/completions is always raw.
    format: PromptFormat = PromptFormat.adapter
    preload: bool = True  # load adapters (up to max_resident_adapters) at start, so first requests are fast
    scheduler: Scheduler = Scheduler.continuous  # continuous: rows join/leave every step; static: whole batches
    max_batch_size: int = 16  # rows generated together (continuous: running rows at once; static: one batch)
    batch_wait_ms: float = 5.0  # when idle, wait this long after the first request for others to join it
    max_batch_tokens: int = 16384  # continuous: KV tokens held across running rows (rows x longest prompt+max_tokens)
    max_prefill_tokens: int = 512  # continuous: prompt tokens read per step, so a long prompt never stalls the rest
    max_request_bytes: int = 1_000_000  # larger request bodies are refused with 413 before they are parsed
    drain_timeout_s: float = 30.0  # on SIGTERM: running rows get this long to finish (new requests: 503), then exit
    max_queue: int = 256  # waiting requests beyond this are answered 429
    max_tokens_limit: int = 1024  # larger max_tokens is a 400 error
    default_max_tokens: int = 128  # when a request gives no max_tokens
    request_timeout_s: float = 600.0  # a request waiting longer than this in total is answered 503
    log_level: str = "info"
    playground: Optional[bool] = None  # the web page at /: None = on only when host is a loopback address
    deploy: DeployConfig = field(default_factory=DeployConfig)  # deploy=local (one process) or deploy=ray


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateJob)
    cs.store(name="serve_schema", node=ServeJob)


register()
