"""Side-by-side samples: the same prompts answered by the base and by each adapter, greedy, as Markdown."""

from __future__ import annotations

SEPARATOR = "\n"  # prompt + "\n" + response: the GPT4All-J training format


def prompts_from(examples: list[dict], tokenizer, count: int) -> list[str]:
    """The prompt part of the first `count` tokenized examples, exactly as the model saw it in training
    (the tokens with no label: the prompt and its separator)."""
    out = []
    for ex in examples[:count]:
        n = next((i for i, v in enumerate(ex["labels"]) if v != -100), len(ex["labels"]))
        out.append(tokenizer.decode(ex["input_ids"][:n]))
    return out


def as_prompt(text: str) -> str:
    """A prompt typed by the user, formatted as in training (prompt + separator)."""
    return text if text.endswith(SEPARATOR) else text + SEPARATOR


def complete(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The greedy completion of `prompt` by `model` in its current adapter state, up to EOS."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def render(prompts: list[str], answers: dict[str, list[str]], note: str) -> str:
    """samples.md: one section per prompt, each model's completion under it."""
    parts = ["# Samples", "", note, ""]
    for i, prompt in enumerate(prompts):
        parts += [f"## Prompt {i + 1}", "", _fence(prompt), ""]
        for model_name, texts in answers.items():
            parts += [f"**{model_name}**", "", _fence(texts[i]), ""]
    return "\n".join(parts)
