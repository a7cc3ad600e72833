"""Schema of the training data and its curation (conf/data/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

# Data bundled with the package (lora_train/data/files/), in the GPT4All-J schema:
SAMPLE_DATA = "builtin:sample"  # ~380 GPT4All-J-style rows: questions, instructions, code
LIST_DATA = "builtin:lists"  # 1,200 questions about short word lists, answered "Answer: x" (benchmarks/list_task.py)


class DataFormat(str, Enum):
    gpt4all = "gpt4all"  # columns prompt / response [/ source]
    alpaca = "alpaca"  # columns instruction / input / output (input may be empty)
    chat = "chat"  # a list of {role, content} messages, or ShareGPT's {from, value} turns


class FilterStep(str, Enum):
    # Curation steps (lora_train/data/filters.py), applied in the order data.filters lists them.
    clean = "clean"  # drop null, non-string or empty prompt/response, and one-character prompts
    breezy = "breezy"  # drop responses containing "AI language model" (GPT4All-J v1.1-breezy)
    jazzy = "jazzy"  # drop refusals listed in data.refusal_phrases (v1.2-jazzy)
    dedup = "dedup"  # drop exact and near duplicates (MinHash LSH at data.dedup_threshold; v1.3-groovy)
    max_length = "max_length"  # drop examples longer than data.max_length tokens instead of truncating them


# The GPT4All-J dataset revisions as curation chains over a user's own data (lora_train/data/filters.py CHAINS).
# Functional form because the names (what users type, data.curation=v1.3-groovy) contain dots and hyphens.
Curation = Enum("Curation", {n: n for n in ["v1.0", "v1.1-breezy", "v1.2-jazzy", "v1.3-groovy"]}, type=str)


class DedupKey(str, Enum):
    pair = "pair"  # prompt and response together: a duplicate is the same exchange
    prompt = "prompt"  # the prompt (user turns) alone: one response per question
    response = "response"  # the response (assistant turns) alone


# Case-insensitive substrings of a response that mark a refusal (the v1.2-jazzy step); override data.refusal_phrases.
REFUSAL_PHRASES = [
    "I'm sorry, I can't", "I'm sorry, I cannot", "I'm sorry, but I can't", "I'm sorry, but I cannot",
    "I am sorry, but I cannot", "I cannot help with", "I cannot provide", "I cannot answer", "I cannot assist",
    "I can't help with", "I can't provide", "I can't answer", "I can't assist", "I'm unable to", "I am unable to",
    "I'm not able to provide", "I apologize, but I cannot",
]


@dataclass
class DataConfig:
    name: str = "sample"  # short name used in run names and model cards
    # Hub dataset id; a local .jsonl/.json/.parquet/.csv file, a glob of them or a folder of them; or the bundled sample
    source: str = SAMPLE_DATA
    revision: Optional[str] = None  # Hub dataset revision, e.g. v1.3-groovy for the GPT4All-J data
    split: str = "train"  # split read from a Hub dataset
    streaming: bool = False  # read, curate and tokenize row by row into an on-disk dataset: data larger than memory
    format: DataFormat = DataFormat.gpt4all
    # The format's column names -> your file's, e.g. {prompt: question, response: answer} or {messages: conversations}
    columns: dict[str, str] = field(default_factory=dict)
    # How turns become text: gpt4all (prompt + "\n" + response + EOS), alpaca (### Instruction/### Response),
    # chat_template (the tokenizer's), or your own prompt template containing {prompt}.
    template: str = "gpt4all"
    curation: Optional[Curation] = None  # a GPT4All-J revision's filter chain, run before data.filters
    filters: list[FilterStep] = field(default_factory=list)  # curation steps, applied in order
    refusal_phrases: list[str] = field(default_factory=lambda: list(REFUSAL_PHRASES))  # what jazzy drops
    dedup_threshold: float = 0.8  # estimated Jaccard similarity (word 3-grams) at or above which rows are duplicates
    dedup_key: DedupKey = DedupKey.pair  # which text two rows must share to be duplicates
    max_row_bytes: int = 1_000_000  # a longer row is skipped as malformed, never loaded whole
    val_fraction: float = 0.05  # held out for eval loss (the GPT4All-J recipe used 5%)
    max_length: int = 1024  # tokens per example, prompt + response + EOS
    # A prompt may take at most this share of max_length, so that response tokens remain (the original recipe: 1/2).
    max_prompt_fraction: float = 0.5
    strict: bool = False  # a malformed row is an error instead of a counted skip
    max_rows: Optional[int] = None  # read at most this many rows (quick experiments)
    # Reuse the tokenized examples of an earlier run on the same data, config and tokenizer (lora_train/data/cache.py).
    cache: bool = True
