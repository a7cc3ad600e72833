"""Formats: a source row (gpt4all, alpaca or chat, under the user's column names) -> one canonical example.

A canonical example is either single-turn, {"prompt", "response"}, or a conversation, {"messages": [{"role",
"content"}]}, plus "source" (the row's source tag), "where" (file:line) and "raw" (the row as read, for export).

Two kinds of problems are told apart. A row whose *shape* is wrong (not an object, a column missing, messages that
are not a list of turns) raises RowError: it is skipped and counted, or an error under data.strict. A row whose
*values* are unusable (null, not a string, empty) is reported by value_problem(): the `clean` curation step drops
such rows as part of curation; without `clean` they are skipped like malformed rows, since they cannot be trained on.
"""

from __future__ import annotations

from typing import Any

from lora_train.errors import UserError
from lora_train.schemas import DataConfig, DataFormat

# Each format's columns (what data.columns may rename) and which of them may be absent.
COLUMNS = {
    DataFormat.gpt4all: ["prompt", "response", "source"],
    DataFormat.alpaca: ["instruction", "input", "output", "source"],
    DataFormat.chat: ["messages", "source"],
}
OPTIONAL = {"source", "input"}
# ShareGPT speaks of `from`/`value` and names the speakers; map them onto chat roles.
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}


class RowError(ValueError):
    """A row of the wrong shape: skipped and counted, or an error with data.strict=true."""


def check_columns(cfg: DataConfig) -> None:
    unknown = sorted(set(cfg.columns) - set(COLUMNS[cfg.format]))
    if unknown:
        raise UserError(f"data.columns: {unknown} are not columns of data.format={cfg.format.value}; "
                        f"it has {COLUMNS[cfg.format]} (map those names to your file's column names)")


def _col(cfg: DataConfig, name: str) -> str:
    return cfg.columns.get(name, name)


def _get(row: dict, cfg: DataConfig, name: str) -> Any:
    col = _col(cfg, name)
    if col not in row:
        if name in OPTIONAL:
            return None
        raise RowError(f"{col!r} is missing")
    return row[col]


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError("messages must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i} is not an object")
        role = turn.get("role", turn.get("from"))
        content = turn["content"] if "content" in turn else turn.get("value")
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise RowError(f"turn {i} has role {role!r}; expected user/assistant/system (or human/gpt)")
        out.append({"role": ROLES[role.lower()], "content": content})
    if not any(t["role"] == "assistant" for t in out):
        raise RowError("no assistant turn: nothing to train on")
    return out


def to_example(row: Any, cfg: DataConfig, where: str) -> dict:
    """The canonical example of one source row; raises RowError when the row has the wrong shape."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    src = _get(row, cfg, "source")
    ex: dict[str, Any] = {"source": src if isinstance(src, str) else "", "where": where, "raw": row}
    if cfg.format == DataFormat.gpt4all:
        ex["prompt"], ex["response"] = _get(row, cfg, "prompt"), _get(row, cfg, "response")
    elif cfg.format == DataFormat.alpaca:
        instruction, extra = _get(row, cfg, "instruction"), _get(row, cfg, "input")
        # Alpaca's optional input is context for the instruction: it joins the prompt after a blank line.
        if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        ex["prompt"], ex["response"] = instruction, _get(row, cfg, "output")
    else:
        col = _col(cfg, "messages")
        if col not in row and "messages" not in cfg.columns and "conversations" in row:
            col = "conversations"  # ShareGPT's column name, recognised without a mapping
        if col not in row:
            raise RowError(f"{col!r} is missing")
        ex["messages"] = _messages(row[col])
    return ex


def turns(ex: dict) -> list[dict]:
    """The example as a list of {role, content} turns, whatever its format."""
    if "messages" in ex:
        return ex["messages"]
    return [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex["response"]}]


def value_problem(ex: dict, cfg: DataConfig) -> str | None:
    """Why the example's values cannot be trained on (null, not a string, empty response), or None."""
    if "messages" in ex:
        for i, t in enumerate(ex["messages"], start=1):
            if not isinstance(t["content"], str):
                return f"turn {i} content is {'null' if t['content'] is None else 'not a string'}"
            if t["role"] == "assistant" and not t["content"].strip():
                return f"turn {i} (assistant) is empty"
        return None
    names = ("prompt", "response") if cfg.format == DataFormat.gpt4all else ("instruction", "output")
    for key, name in zip(("prompt", "response"), names):
        if not isinstance(ex[key], str):
            return f"{_col(cfg, name)!r} is {'null' if ex[key] is None else 'not a string'}"
    if not ex["response"].strip():
        return f"{_col(cfg, names[1])!r} is empty"
    return None


def texts(ex: dict) -> tuple[str, str]:
    """(all user/system text, all assistant text) of a valid example: what curation looks at."""
    ts = turns(ex)
    return ("\n".join(t["content"] for t in ts if t["role"] != "assistant"),
            "\n".join(t["content"] for t in ts if t["role"] == "assistant"))
