"""The prompt a server renders for an adapter is the training prompt: `examples.prompt_ids` (what lora-generate and
lora-serve feed the model) against the ids training builds for the same example (`examples.Tokenizer`), for every
kind of data.template, on the tiny Llama's tokenizer (a ChatML chat template whose EOS closes each turn) and on the
tiny GPT-J's (no chat template; EOS appended). tests/inference/test_prompt_formats.py checks the same end to end."""

from __future__ import annotations

import pytest

from lora_train.data.build import DataReport
from lora_train.data.examples import Tokenizer, prompt_ids
from lora_train.errors import UserError
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import DataConfig, ModelConfig

TEMPLATES = ["gpt4all", "alpaca", "### Human: {prompt}\n### Assistant: ", "chat_template"]
SYSTEM = {"role": "system", "content": "You answer in one word."}
TURNS = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "And a fruit?"}, {"role": "assistant", "content": "Apple."}]


@pytest.fixture(scope="module", params=["tiny-gptj", "tiny-llama"])
def tokenizer(request, model_cache):
    cfg = ModelConfig(name=request.param, name_or_path=f"builtin:{request.param}")
    return load_tokenizer(resolve_model(cfg), cfg)


def training_prefix(tok, template: str, messages: list[dict]) -> list[int]:
    """The ids before the last response of one example, as training tokenizes it (nothing cut)."""
    tokenize = Tokenizer(tok, DataConfig(template=template, max_length=4096))
    row = tokenize([{"messages": messages}], DataReport("x", None))
    ids, labels = row[0]["input_ids"], row[0]["labels"]
    starts = [i for i in range(1, len(labels)) if labels[i] != -100 and labels[i - 1] == -100]
    return ids[: starts[-1]]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("messages", [TURNS[:2], [SYSTEM, *TURNS[:2]], [SYSTEM, *TURNS]],
                         ids=["one turn", "with system", "two turns"])
def test_serving_prompt_ids_are_the_training_prompt_ids(tokenizer, template, messages):
    if template == "chat_template" and not tokenizer.chat_template:
        with pytest.raises(UserError, match="has no chat template"):
            prompt_ids(messages[:-1], template, tokenizer)
        return
    text, ids = prompt_ids(messages[:-1], template, tokenizer)
    assert ids == training_prefix(tokenizer, template, messages)
    assert text.rstrip().endswith({"gpt4all": messages[-2]["content"], "alpaca": "### Response:",
                                   "chat_template": "assistant"}.get(template, "### Assistant:"))


def test_a_chat_template_that_refuses_the_roles_is_a_user_error_with_its_message(tokenizer):
    saved = tokenizer.chat_template
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                               "{{ raise_exception('a system message may only come first') }}{% endif %}"
                               "{{ m['content'] }}\n{% endfor %}")
    try:
        with pytest.raises(UserError, match="cannot render these messages: a system message may only come first"):
            prompt_ids([SYSTEM, SYSTEM, TURNS[0]], "chat_template", tokenizer)
    finally:
        tokenizer.chat_template = saved
