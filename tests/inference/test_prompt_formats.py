"""Each adapter is served in the prompt format it was trained with. For one training example, the token ids the model
reads at serving time, through `lora-generate` and through `/v1/chat/completions` on a real server, are the ids of
that example's training prompt, for every kind of data.template (gpt4all, alpaca, a template of one's own, the
tokenizer's chat template). The ids are read where the model reads them: a forward pre-hook on the embedding."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import need_module
from serving_helpers import ThreadServer, post_json

from lora_train import compose, train
from lora_train.adapters import read_adapter
from lora_train.data.build import build_datasets
from lora_train.inference import generate as lora_generate
from lora_train.inference.prompting import adapter_prompt
from lora_train.inference.registry import MultiAdapterModel
from lora_train.inference.scheduler import build_batcher
from lora_train.inference.server import create_app
from lora_train.model import load_tokenizer, resolve_model
from lora_train.schemas import ModelConfig
from lora_train.schemas.infer import ServeJob

need_module("fastapi", "serve"), need_module("uvicorn", "serve")
# Six adapters trained and two servers started: minutes on 2 cores. tests/data/test_prompt_ids.py checks the same ids
# at the rendering level, without a model, in the default run.
pytestmark = pytest.mark.slow

# ChatML, like SmolLM2's, refusing a system message anywhere but first (so two system messages are refused).
CHATML = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
          "{{ raise_exception('a system message may only come first') }}{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEMPLATES = {"gpt4all": "gpt4all", "alpaca": "alpaca", "own": "### Human: {prompt}\n### Assistant: ",
             "chat": "chat_template"}
SYSTEM = {"role": "system", "content": "You answer in one word."}
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name a planet.", "Name a metal.", "Name a tree.", "Name a river."]
ANSWERS = ["Blue.", "Apple.", "Mars.", "Iron.", "Oak.", "Nile."]


def conversation(question: str, answer: str, system: bool) -> list[dict]:
    return [SYSTEM] * system + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def chat_base(folder: Path) -> Path:
    """The tiny GPT-J with a ChatML chat template on its tokenizer: a local chat model."""
    cfg = ModelConfig()
    shutil.copytree(resolve_model(cfg), folder)
    tok = load_tokenizer(str(folder), cfg)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_cache):
    """One 4-step adapter per template kind, trained on chat rows (half with a system message) on the chat base;
    plus `foreign`, the gpt4all adapter's weights without lora_train.yaml (an adapter made elsewhere)."""
    root = tmp_path_factory.mktemp("formats")
    base = chat_base(root / "chat-base")
    data = train_rows(root)
    out = root / "adapters"
    for name, template in TEMPLATES.items():
        cfg = compose("train", ["experiment=debug", f"adapters_dir={out}", f"run_name={name}",
                                f"model.name_or_path={base}", f"data.source={data}", "data.format=chat",
                                "data.val_fraction=0", "data.max_length=256", "train.learning_rate=1e-2"])
        cfg.data.template = template  # set after composing: a template of one's own holds braces and a newline
        train(cfg)
    shutil.copytree(out / "gpt4all", out / "foreign")
    (out / "foreign" / "lora_train.yaml").unlink()
    return out


def train_rows(root: Path) -> Path:
    """Chat rows, every other one with a system message."""
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": conversation(q, a, i % 2 == 0)}) + "\n"
                            for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))))
    return data


def training_prompt(folder: Path, messages: list[dict]) -> list[int]:
    """The ids before the response of a one-example data file, built by the training pipeline with the adapter's
    saved data config: what the model read in training before it was taught to answer."""
    job = read_adapter(folder).job
    tok = load_tokenizer(resolve_model(job.model), job.model)
    one = folder.parent.parent / f"one-{folder.name}.jsonl"
    one.write_text(json.dumps({"messages": messages}) + "\n")
    rows, _, _ = build_datasets(replace(job.data, source=str(one), val_fraction=0.0, max_rows=None, cache=False),
                                tok, job.seed)
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    return ids[: next(i for i, v in enumerate(labels) if v != -100)]


@contextlib.contextmanager
def model_inputs():
    """Every batch of token ids any model's word embedding reads while the block runs (a global forward pre-hook:
    the ids the model itself sees, after every rendering and tokenizing step)."""
    import torch

    seen: list[list[list[int]]] = []

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= 1000 and args \
                and torch.is_tensor(args[0]) and args[0].dim() == 2:
            seen.append(args[0].tolist())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def unpadded(row: list[int], pad: int) -> list[int]:
    """A left-padded row without its padding."""
    start = next((i for i, t in enumerate(row) if t != pad), len(row))
    return row[start:]


def generate_job(adapters: Path, names: list[str], prompt: str, **kw):
    return compose("generate", [f"adapters_dir={adapters}", f"adapters=[{','.join(names)}]",
                                f"prompt={json.dumps(prompt)}", "sampling.max_new_tokens=2",
                                *[f"{k}={v}" for k, v in kw.items()]])


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_lora_generate_feeds_the_training_prompt_ids(adapters, name, capsys):
    question = QUESTIONS[1]
    want = training_prompt(adapters / name, conversation(question, ANSWERS[1], system=False))
    with model_inputs() as seen:
        lora_generate.run(generate_job(adapters, [name], question))
    assert seen[0] == [want]
    # format=gpt4all overrides the adapter's own template: prompt + "\n", as GPT4All-J trained
    if name != "gpt4all":
        gpt4all = training_prompt(adapters / "gpt4all", conversation(question, ANSWERS[1], system=False))
        assert gpt4all != want
        with model_inputs() as seen:
            lora_generate.run(generate_job(adapters, [name], question, format="gpt4all"))
        assert seen[0] == [gpt4all]


def test_a_mixed_batch_renders_each_row_in_its_own_adapters_format(adapters, capsys):
    names = [*TEMPLATES, "base"]
    question = QUESTIONS[2]
    want = [training_prompt(adapters / n, conversation(question, ANSWERS[2], system=False)) for n in TEMPLATES]
    assert len({tuple(w) for w in want}) == len(want)  # four formats, four different prompts
    with model_inputs() as seen:
        lora_generate.run(generate_job(adapters, names, question, stream="false", scheduler="static"))
    tok = load_tokenizer(str(adapters.parent / "chat-base"), ModelConfig())
    rows = [unpadded(r, tok.pad_token_id) for r in seen[0]]
    assert rows[:4] == want
    # the base alone on a chat model: its own chat template, the same prompt as the chat_template adapter's
    assert rows[4] == want[3]


def test_an_adapter_without_lora_train_yaml_uses_gpt4all_and_says_so(adapters, capsys):
    with model_inputs() as seen:
        lora_generate.run(generate_job(adapters, ["foreign"], QUESTIONS[0]))
    assert seen[0] == [training_prompt(adapters / "gpt4all", conversation(QUESTIONS[0], ANSWERS[0], system=False))]
    err = capsys.readouterr().err
    assert "adapter 'foreign' has no lora_train.yaml" in err and "gpt4all" in err


@pytest.fixture(scope="module")
def server(adapters):
    job = ServeJob(adapters_dir=str(adapters), preload=False)
    host = MultiAdapterModel.from_config(job)
    batcher = build_batcher(host, job)
    srv = ThreadServer(create_app(host, batcher, job, None))
    yield srv.url, host
    srv.stop()
    batcher.close()


def chat(url: str, model: str, messages: list[dict]) -> tuple[int, dict]:
    return post_json(url + "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2,
                                                    "temperature": 0})


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_endpoint_feeds_the_training_prompt_ids_system_message_included(adapters, server, name):
    url, _ = server
    example = conversation(QUESTIONS[0], ANSWERS[0], system=True)  # a training row of every adapter
    want = training_prompt(adapters / name, example)
    with model_inputs() as seen:
        status, body = chat(url, name, example[:-1])
    assert status == 200, body
    assert seen[0] == [want]
    assert body["usage"]["prompt_tokens"] == len(want)


def test_chat_endpoint_base_on_a_chat_model_uses_its_chat_template(adapters, server):
    url, host = server
    messages = conversation(QUESTIONS[3], ANSWERS[3], system=True)
    with model_inputs() as seen:
        status, body = chat(url, "base", messages[:-1])
    assert status == 200, body
    text = host.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert seen[0] == [training_prompt(adapters / "chat", messages)]


def test_roles_the_chat_template_refuses_are_a_400_with_its_message(server):
    url, _ = server
    two_systems = [SYSTEM, SYSTEM, {"role": "user", "content": QUESTIONS[0]}]
    for model in ("chat", "base"):
        status, body = chat(url, model, two_systems)
        assert status == 400, body
        assert "a system message may only come first" in body["error"]["message"]
        assert body["error"]["param"] == "messages"
    # an adapter trained with a plain template renders the same roles (system turns are lines of context)
    status, body = chat(url, "alpaca", two_systems)
    assert status == 200, body
    status, body = chat(url, "chat", [SYSTEM, {"role": "user", "content": QUESTIONS[0]}])  # still serving
    assert status == 200, body


def test_adapter_prompt_sends_an_adapters_format_to_v1_completions(adapters, server):
    """docs/serve.md: /v1/completions takes raw text; adapter_prompt renders it in the adapter's format."""
    url, host = server
    for name in TEMPLATES:
        text = adapter_prompt(adapters / name, QUESTIONS[1])
        want = training_prompt(adapters / name, conversation(QUESTIONS[1], ANSWERS[1], system=False))
        with model_inputs() as seen:
            status, body = post_json(url + "/v1/completions", {"model": name, "prompt": text, "max_tokens": 2,
                                                               "temperature": 0})
        assert status == 200, body
        # the training prompt's text; tokenized whole, its ids may differ where template text meets prompt text
        # (docs/serve.md says so): "### Assistant: " then "Name" becomes " Name" in one token
        assert host.tokenizer.decode(seen[0][0]) == host.tokenizer.decode(want), name
        assert (seen[0] == [want]) == (name != "own"), name


def test_tiny_llama_chat_adapter_reads_its_training_ids(tmp_path_factory, capsys):
    """The tiny Llama (SmolLM2's layout): a ChatML template that adds a default system message and ends each turn with
    EOS (<|im_end|>), so no second EOS follows a response. lora-generate and the chat endpoint, on a real server."""
    root = tmp_path_factory.mktemp("llama-formats")
    out = root / "adapters"
    train(compose("train", ["experiment=debug", "model=tiny_llama", f"adapters_dir={out}", "run_name=llama-chat",
                            f"data.source={train_rows(root)}", "data.format=chat", "data.template=chat_template",
                            "data.val_fraction=0", "data.max_length=256"]))
    folder = out / "llama-chat"
    want = training_prompt(folder, conversation(QUESTIONS[1], ANSWERS[1], system=False))
    with model_inputs() as seen:
        lora_generate.run(generate_job(out, ["llama-chat"], QUESTIONS[1]))
    assert seen[0] == [want]
    job = ServeJob(adapters_dir=str(out), preload=False)
    host = MultiAdapterModel.from_config(job)
    batcher = build_batcher(host, job)
    srv = ThreadServer(create_app(host, batcher, job, None))
    try:
        for system in (True, False):
            example = conversation(QUESTIONS[2], ANSWERS[2], system=system)
            want = training_prompt(folder, example)
            with model_inputs() as seen:
                status, body = chat(srv.url, "llama-chat", example[:-1])
            assert status == 200, body
            assert seen[0] == [want]
    finally:
        srv.stop()
        batcher.close()
