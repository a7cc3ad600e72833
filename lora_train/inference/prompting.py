"""The text and token ids a prompt or a conversation becomes for one adapter: the format it was trained with.

An adapter folder's lora_train.yaml records `data.template` (gpt4all, alpaca, chat_template or the user's own
template with {prompt}). `format=adapter` renders each row with its own adapter's template through the very code
that built the training rows (lora_train.data.examples), piece by piece, so the ids the model reads at serving time
are the ids of a training prompt, not a re-tokenization of its joined text. `gpt4all` and `raw` override the
adapter's template. The base alone uses its tokenizer's chat template when it has one (a chat model), else gpt4all;
an adapter without lora_train.yaml (made elsewhere) uses gpt4all, and `note` says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from lora_train.adapters import read_adapter
from lora_train.data.examples import CHAT_TEMPLATE, prompt_ids
from lora_train.errors import UserError
from lora_train.schemas.infer import PromptFormat

GPT4ALL = "gpt4all"
# OpenAI's "developer" role is its newer name for the system message.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Format:
    template: str | None  # a data.template value, or None for raw text
    note: str | None = None  # why the format is not the adapter's own (shown to the user), else None


_lock = threading.Lock()
_cache: dict[tuple, str | None] = {}  # (folder, lora_train.yaml mtime) -> data.template (None: no lora_train.yaml)


def _trained_template(folder: Path, allow_pickle: bool) -> str | None:
    """data.template from the adapter's lora_train.yaml, None without one; read again when the file changes."""
    yaml_file = folder / "lora_train.yaml"
    try:
        key = (str(folder.resolve()), yaml_file.stat().st_mtime_ns)
    except OSError:
        key = (str(folder.resolve()), None)
    with _lock:
        if key in _cache:
            return _cache[key]
    info = read_adapter(folder, allow_pickle)
    template = info.job.data.template if info.job is not None else None
    with _lock:
        _cache[key] = template
    return template


def format_of(host, adapter: str, fmt: PromptFormat | str = PromptFormat.adapter) -> Format:
    """How prompts for `adapter` (or the base) are rendered under `fmt`."""
    fmt = PromptFormat(fmt)
    if fmt == PromptFormat.raw:
        return Format(None)
    if fmt == PromptFormat.gpt4all:
        return Format(GPT4ALL)
    if host.is_base(adapter):
        return Format(CHAT_TEMPLATE if getattr(host.tokenizer, "chat_template", None) else GPT4ALL)
    template = _trained_template(host.folder_of(adapter), host.allow_pickle)
    if template is None:
        return Format(GPT4ALL, f"adapter {adapter!r} has no lora_train.yaml, so its training format is unknown: "
                               "prompts use the gpt4all format (prompt + newline); format=raw sends them unchanged")
    return Format(template)


def user_prompt(host, adapter: str, text: str, fmt: PromptFormat | str = PromptFormat.adapter
                ) -> tuple[str, list[int] | None]:
    """(text, ids) of one user prompt for `adapter`; ids None = tokenize the text as it is (raw)."""
    if not text.strip():
        raise UserError("the prompt is empty")
    template = format_of(host, adapter, fmt).template
    if template is None:
        return text, None
    return prompt_ids([{"role": "user", "content": text}], template, host.tokenizer)


def conversation(host, adapter: str, messages: list[dict], fmt: PromptFormat | str = PromptFormat.adapter
                 ) -> tuple[str, list[int] | None]:
    """(text, ids) of a conversation that `adapter` answers next, in its format (see render)."""
    return render(host, format_of(host, adapter, fmt), messages)


def render(host, fmt: Format, messages: list[dict]) -> tuple[str, list[int] | None]:
    """(text, ids) of a conversation the model answers next, its roles (system included) rendered by the format's
    template (raw: the contents one per line, ids None). A chat template that refuses the messages (e.g. two system
    messages) raises UserError with the template's own message."""
    turns = [{"role": ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in messages]
    if not any(t["content"].strip() for t in turns):
        raise UserError("messages hold no text")
    if fmt.template is None:
        return "".join(t["content"] + "\n" for t in turns), None
    return prompt_ids(turns, fmt.template, host.tokenizer)


def adapter_prompt(folder: str | Path, prompt: str | list[dict]) -> str:
    """The text to send to /v1/completions (raw text, as in OpenAI's API) so that the adapter in `folder` reads
    `prompt` (one user turn, or a list of {role, content} messages) in the format it was trained with. The server
    tokenizes that text whole, so where template text meets prompt text the ids may differ from training's, which
    tokenized each piece on its own; /v1/chat/completions and lora-generate feed the training ids exactly."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    info = read_adapter(folder)
    template = info.job.data.template if info.job is not None else GPT4ALL
    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # saved with the adapter, its chat template included
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return prompt_ids([{"role": ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in messages],
                      template, tokenizer)[0]
