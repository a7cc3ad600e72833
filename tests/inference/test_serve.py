"""`lora-serve` as a real process on 127.0.0.1, driven by the official `openai` client: per-request adapters,
greedy outputs equal to `lora-generate`, streaming, 32 concurrent mixed requests, admin, API key, bad input."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from conftest import need_module
from inference_helpers import cli, foreign_adapter, train_two
from serving_helpers import lora_serve_process

need_module("fastapi", "serve"), need_module("uvicorn", "serve")  # lora-serve itself
openai = need_module("openai", "dev")  # the client the tests drive it with

KEY = "test-key"
PROMPTS = ["Tell me a joke about cats", "What is the capital of France?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("serve")
    adapters = root / "adapters"
    train_two(adapters)
    foreign_adapter(adapters / "foreign")
    with lora_serve_process(adapters, root, KEY) as (proc, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        yield {"url": url, "client": client, "adapters": adapters, "root": root, "proc": proc}


def complete(client, model, prompt, n=12, **kw):
    return client.completions.create(model=model, prompt=prompt + "\n", max_tokens=n, temperature=0, **kw)


def test_models_and_greedy_outputs_equal_lora_generate(server):
    client, adapters = server["client"], server["adapters"]
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny-gptj" and {"alpha", "beta"} <= set(ids)
    prompts = server["root"] / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = server["root"] / "cli.jsonl"
    proc = cli("lora-generate", f"adapters_dir={adapters}", "adapters=[alpha,beta,base]", f"prompt_file={prompts}",
               "stream=false", "sampling.max_new_tokens=12", f"output={out}", cwd=server["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rec in map(json.loads, out.read_text().splitlines()):
        model = "tiny-gptj" if rec["adapter"] == "base" else rec["adapter"]
        got = complete(client, model, rec["prompt"])
        assert got.choices[0].text == rec["completion"], rec
        assert got.model == model and got.usage.completion_tokens > 0
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": rec["prompt"]}],
                                              max_tokens=12, temperature=0)
        assert chat.choices[0].message.content == rec["completion"]
    texts = {m: complete(client, m, PROMPTS[0]).choices[0].text for m in ["alpha", "beta", "tiny-gptj", "base"]}
    assert len({texts["alpha"], texts["beta"], texts["tiny-gptj"]}) == 3 and texts["base"] == texts["tiny-gptj"]


def test_streaming_equals_non_streaming(server):
    client = server["client"]
    whole = complete(client, "alpha", PROMPTS[1]).choices[0]
    chunks = list(complete(client, "alpha", PROMPTS[1], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason and len(chunks) > 2
    stream = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            max_tokens=12, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == complete(client, "beta", PROMPTS[1]).choices[0].text


def test_32_concurrent_mixed_requests_are_batched(server):
    client = server["client"]
    models = ["alpha", "beta", "tiny-gptj", "alpha"]
    jobs = [(models[i % 4], f"Question number {i % 8}") for i in range(32)]
    with cf.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda j: complete(client, j[0], j[1], n=8).choices[0].text, jobs))
    for (model, prompt), text in list(zip(jobs, got))[:8]:  # the same as one request at a time
        assert text == complete(client, model, prompt, n=8).choices[0].text
    assert http(server["url"] + "/health", key=None)[1]["largest_batch"] > 1


@pytest.mark.parametrize("body,status,needle", [
    ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
    ({"model": "../alpha", "prompt": "x"}, 400, "not valid"),
    ({"model": "/etc/passwd", "prompt": "x"}, 400, "not valid"),
    ({"model": "foreign", "prompt": "x", "max_tokens": 2}, 400, "foreign"),
    ({"model": "alpha", "prompt": "x", "max_tokens": "3"}, 400, "max_tokens"),
    ({"model": "alpha", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "alpha", "prompt": 5}, 400, "prompt"),
    ({"model": "alpha"}, 400, "prompt"),
    ({"model": "alpha", "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": "alpha", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "alpha", "prompt": "   "}, 400, "empty"),
    ({"model": "alpha", "prompt": "word " * 3000, "max_tokens": 4}, 400, "context"),
    ({"model": "alpha", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
])
def test_bad_completion_requests_get_openai_errors(server, body, status, needle):
    code, err = http(server["url"] + "/v1/completions", json.dumps(body).encode())
    assert code == status and needle in err["error"]["message"], err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert str(server["adapters"]) not in err["error"]["message"]  # a client never learns the server's paths


def test_bad_requests_leave_the_server_serving(server):
    url, client = server["url"], server["client"]
    assert http(url + "/v1/completions", b"{not json")[0] == 400
    assert http(url + "/v1/completions", b"[1, 2]")[0] == 400
    code, err = http(url + "/v1/chat/completions", json.dumps({"model": "alpha", "messages": "hi"}).encode())
    assert code == 400 and err["error"]["param"] == "messages"
    code, _ = http(url + "/v1/chat/completions", json.dumps({"model": "alpha", "messages": [
        {"role": "user", "content": " "}]}).encode())
    assert code == 400
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert http(url + "/admin/adapters/unload", json.dumps({"name": "alpha"}).encode(), key=None)[0] == 401
    with pytest.raises(openai.NotFoundError):
        complete(client, "nope", "x")
    with pytest.raises(openai.BadRequestError):
        list(complete(client, "foreign", "x", stream=True))  # a stream that cannot start is a plain 4xx
    assert complete(client, "alpha", PROMPTS[0], n=4).choices[0].text


def test_admin_unload_and_load(server):
    url, client = server["url"], server["client"]
    before = complete(client, "beta", PROMPTS[0], n=6).choices[0].text
    assert http(url + "/admin/adapters/unload", json.dumps({"name": "beta"}).encode()) == (
        200, {"name": "beta", "was_resident": True, "resident": False})
    assert "beta" not in http(url + "/health", key=None)[1]["resident_adapters"]
    assert complete(client, "beta", PROMPTS[0], n=6).choices[0].text == before  # loads again on use
    assert http(url + "/admin/adapters/load", json.dumps({"name": "beta"}).encode())[0] == 200
    assert http(url + "/admin/adapters/load", json.dumps({"name": "../beta"}).encode())[0] == 400
    assert http(url + "/admin/adapters/load", json.dumps({"name": "nope"}).encode())[0] == 404
    assert http(url + "/admin/adapters/load", json.dumps({"name": "foreign"}).encode())[0] == 400
    assert http(url + "/admin/adapters/load", json.dumps({"name": 3}).encode())[0] == 400


def test_an_adapter_with_running_requests_is_not_unloaded(server):
    url, client = server["url"], server["client"]
    stream = client.completions.create(model="beta", prompt=PROMPTS[0], max_tokens=1000, temperature=0, stream=True)
    next(iter(stream))  # a row of beta is running
    status, body = http(url + "/admin/adapters/unload", json.dumps({"name": "beta"}).encode())
    assert status == 409 and body["error"]["code"] == "adapter_busy", body
    assert body["error"]["message"].startswith("adapter 'beta' has 1 request(s) running or waiting")
    assert "beta" in http(url + "/health", key=None)[1]["resident_adapters"]
    stream.close()
    deadline = time.time() + 120
    while http(url + "/health", key=None)[1]["running"]:
        assert time.time() < deadline, "the abandoned stream kept running"
        time.sleep(0.2)
    assert http(url + "/admin/adapters/unload", json.dumps({"name": "beta"}).encode())[0] == 200


def test_client_disconnect_mid_stream_stops_its_generation(server):
    url, client = server["url"], server["client"]
    stream = client.completions.create(model="tiny-gptj", prompt=PROMPTS[0], max_tokens=1000, temperature=0,
                                       stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.time() + 120
    while http(url + "/health", key=None)[1]["cancelled"] < 1:
        assert time.time() < deadline, "the abandoned stream kept generating"
        time.sleep(0.2)
    assert complete(client, "alpha", PROMPTS[0], n=4).choices[0].text


def test_serve_without_adapters_or_model_is_a_clear_error(tmp_path):
    proc = cli("lora-serve", f"adapters_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "holds no adapter" in proc.stderr
