"""The playground at `/` of a real `lora-serve` (127.0.0.1, API key set), driven in the system's headless Chromium
through selenium: three columns stream exactly what `lora-generate` gives, the adapter card shows the losses and the
plot fetched with the key, the server's errors appear in the column, blind mode reveals the right names, and markup
in a model's output or in an adapter card is shown as text and never runs.

Without Chromium these tests skip with the reason (fail under LORA_TRAIN_STRICT_SKIPS=1, as in CI):
    apt-get install -y chromium chromium-driver
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import need, need_module
from inference_helpers import cli, fit_adapter, train_two
from serving_helpers import lora_serve_process

KEY = "playground-key"
PROMPT = "Tell me a joke about cats"
MAX_TOKENS = 12
MARKUP = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
MARKUP_PROMPT = "Show me some markup"
CARD_SOURCE = "/private/data/<img src=x onerror=window.pwned=3>.jsonl"  # a local path holding markup
CARD_REVISION = "<script>window.pwned=4</script>"


def browser() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome"),
            shutil.which("chromedriver"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = KEY) -> tuple[int, dict, bytes]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def markup_card(folder: Path) -> None:
    """Markup in the card facts the page shows: the data source (a local path), the revision, the eval table."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(folder / "lora_train.yaml")
    cfg.data.source, cfg.data.revision = CARD_SOURCE, CARD_REVISION
    OmegaConf.save(cfg, folder / "lora_train.yaml")
    (folder / "README.md").write_text("# markup\n\n<!-- lora-eval:start -->\n## Evaluation\n\nlimit 5\n\n"
                                      "| Model | <b>ARC</b> |\n| --- | ---: |\n"
                                      "| markup | <img src=x onerror=window.pwned=5> |\n<!-- lora-eval:end -->\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    chromium, driver = browser()
    need(chromium is not None and driver is not None,
         "the playground tests need Chromium and its driver: apt-get install -y chromium chromium-driver")
    need_module("selenium", "dev")
    root = tmp_path_factory.mktemp("playground")
    adapters = root / "adapters"
    train_two(adapters)
    fit_adapter(adapters / "markup", adapters / "alpha", MARKUP_PROMPT, MARKUP)
    markup_card(adapters / "markup")
    with lora_serve_process(adapters, root, KEY) as (proc, url):
        yield {"url": url, "root": root, "adapters": adapters}


@pytest.fixture(scope="module")
def expected(server) -> dict[str, str]:
    """What lora-generate answers PROMPT with, greedily, per model (the base as `tiny-gptj`)."""
    out = server["root"] / "generated.jsonl"
    proc = cli("lora-generate", f"adapters_dir={server['adapters']}", "adapters=[base,alpha,beta]",
               f"prompt={PROMPT}", "stream=false", f"sampling.max_new_tokens={MAX_TOKENS}", f"output={out}",
               cwd=server["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = {("tiny-gptj" if r["adapter"] == "base" else r["adapter"]): r["completion"]
             for r in map(json.loads, out.read_text().splitlines())}
    assert len(set(texts.values())) == 3, f"the adapters must answer differently for these tests: {texts}"
    return texts


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"]:
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    downloads = tmp_path_factory.mktemp("downloads")
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.downloads, d.seen = downloads, set()
    yield d
    d.quit()


def wait(d, condition, what: str, timeout: float = 180):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda _: condition(), message=f"waiting for {what}")


def js(d, script: str, *args):
    return d.execute_script(script, *args)


def open_page(d, url: str) -> None:
    """Load the page, giving it the key through its form if it asks for one."""
    d.get(url + "/")
    wait(d, lambda: js(d, "return document.querySelectorAll('#models input').length > 0 || "
                          "!document.getElementById('key-form').hidden"), "the model list or the key form")
    if not js(d, "return document.getElementById('key-form').hidden"):
        d.find_element("id", "key-input").send_keys(KEY)
        d.find_element("id", "key-save").click()
        wait(d, lambda: js(d, "return document.querySelectorAll('#models input').length > 0"), "the model list")


def compare(d, models: list[str], prompt: str, max_tokens: int = MAX_TOKENS, blind: bool = False) -> list:
    """Choose `models`, send `prompt` greedily, wait until every column is done; the columns' elements."""
    for box in d.find_elements("css selector", "#models input"):
        if (box.get_attribute("value") in models) != box.is_selected():
            box.click()
    if d.find_element("id", "blind").is_selected() != blind:
        d.find_element("id", "blind").click()
    js(d, "document.getElementById('prompt').value = arguments[0];"
          "document.getElementById('temperature').value = '0';"
          "document.getElementById('max_tokens').value = String(arguments[1]);", prompt, max_tokens)
    d.find_element("id", "send").click()
    wait(d, lambda: len(d.find_elements("css selector", ".column.done")) == len(models), "every column to finish")
    return d.find_elements("css selector", ".column")


def text_of(column, selector: str = ".out") -> str:
    return column.find_element("css selector", selector).get_property("textContent")


def exported(d, suffix: str) -> Path:
    """The file the last export click downloaded (named after its comparison's start time)."""
    def newest():
        files = [p for p in d.downloads.glob(f"comparison-*{suffix}") if p.name not in d.seen]
        return files[0] if len(files) == 1 else None

    found = wait(d, newest, f"the exported {suffix} file", 30)
    d.seen.add(found.name)
    return found


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_three_columns_show_what_lora_generate_gives(server, expected, page, tmp_path):
    page.get(server["url"] + "/")
    js(page, "sessionStorage.clear()")
    page.get(server["url"] + "/")  # no key yet: the page asks for it, in words the server chose
    wait(page, lambda: not js(page, "return document.getElementById('key-form').hidden"), "the key form")
    assert "API key" in page.find_element("id", "notice").text
    open_page(page, server["url"])
    assert js(page, "return sessionStorage.getItem('lora-serve-api-key')") == KEY
    assert js(page, "return localStorage.length") == 0  # the key lives only as long as the tab

    columns = compare(page, ["tiny-gptj", "alpha", "beta"], PROMPT)
    shown = {c.find_element("css selector", ".label").text: text_of(c) for c in columns}
    assert shown == expected
    for c in columns:
        stats = c.find_element("css selector", ".stats").text
        assert re.fullmatch(rf"{MAX_TOKENS} tokens · \d+\.\d\d s · hit max_tokens", stats), stats
    shot = tmp_path / "playground.png"
    page.save_screenshot(str(shot))
    print(f"screenshot of three filled columns: {shot}")

    page.find_element("id", "export-json").click()
    page.find_element("id", "export-md").click()
    record = json.loads(exported(page, ".json").read_text())
    assert record["prompt"] == PROMPT and record["settings"]["temperature"] == 0
    assert record["settings"]["max_tokens"] == MAX_TOKENS
    assert {c["model"]: c["text"] for c in record["columns"]} == expected
    assert all(c["completion_tokens"] == MAX_TOKENS and c["seconds"] > 0 for c in record["columns"])
    md = exported(page, ".md").read_text()
    for model, text in expected.items():
        assert f"## {model}\n" in md and f"\n{text}\n" in md


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_adapter_card_shows_losses_and_the_plot_fetched_with_the_key(server, page):
    metrics = json.loads((server["adapters"] / "alpha" / "metrics.json").read_text())
    open_page(page, server["url"])
    page.find_element("css selector", ".adapter[data-name='alpha'] .card-btn").click()
    wait(page, lambda: js(page, "const i = document.querySelector('#card img.plot');"
                                "return i !== null && i.complete && i.naturalWidth > 0"), "the loss plot")
    fact = lambda key: page.find_element("css selector", f"#card dd[data-key='{key}']").text  # noqa: E731
    shown = lambda v: str(float(f"{v:.4g}"))  # noqa: E731  (4 significant digits, as the page shows numbers)
    assert fact("train loss") == shown(metrics["train_loss"])
    assert fact("eval loss").endswith(shown(metrics["eval_loss"]))
    assert fact("r") == "8" and fact("alpha") == "32" and fact("data source") == "builtin:sample"
    assert js(page, "return document.querySelector('#card img.plot').src").startswith("blob:")
    # The plot and the card are behind the key like every other route.
    assert get(server["url"] + "/v1/adapters/alpha/loss.png", key=None)[0] == 401
    assert get(server["url"] + "/v1/adapters/alpha", key=None)[0] == 401
    status, headers, body = get(server["url"] + "/v1/adapters/alpha/loss.png")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_a_prompt_longer_than_the_context_shows_the_servers_error(server, page):
    open_page(page, server["url"])
    [column] = compare(page, ["alpha"], "cats and dogs " * 1500)
    error = text_of(column, ".error")
    assert error.startswith("400: ") and "context of 2048 tokens" in error, error
    assert "error" in column.find_element("css selector", ".stats").text


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_a_stop_string_ends_the_column_before_it(server, expected, page):
    whole = expected["alpha"]
    stop = next(whole[i:i + 3] for i in range(4, len(whole) - 3) if "|" not in whole[i:i + 3])
    open_page(page, server["url"])
    js(page, "document.getElementById('stop-strings').value = arguments[0]", "never here|" + stop)
    [column] = compare(page, ["alpha"], PROMPT)
    assert text_of(column) == whole[:whole.index(stop)]
    assert column.find_element("css selector", ".stats").text.endswith("ended (EOS or a stop string)")


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_blind_mode_hides_names_until_a_pick_then_reveals_the_right_ones(server, expected, page):
    open_page(page, server["url"])
    columns = compare(page, ["tiny-gptj", "alpha", "beta"], PROMPT, blind=True)
    assert [c.find_element("css selector", ".label").text for c in columns] == ["A", "B", "C"]
    writer = {text: model for model, text in expected.items()}
    truth = {c.find_element("css selector", ".label").text: writer[text_of(c)] for c in columns}
    assert page.find_element("id", "export-json").get_attribute("disabled")  # no export before the reveal
    columns[1].find_element("css selector", ".pick").click()
    for c in columns:
        label = c.find_element("css selector", ".label").text
        assert label == f"{label[0]}: {truth[label[0]]}"
    assert "favourite" in columns[1].get_attribute("class")
    assert page.find_element("id", "notice").text == f"Your pick: B was {truth['B']}."
    page.find_element("id", "blind").click()  # back to named columns for the tests after this one


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_markup_in_an_output_or_a_card_is_text_and_never_runs(server, page):
    open_page(page, server["url"])
    [column] = compare(page, ["markup"], MARKUP_PROMPT, max_tokens=64)
    assert text_of(column) == MARKUP  # the adapter's answer, character for character, as text
    page.find_element("css selector", ".adapter[data-name='markup'] .card-btn").click()
    wait(page, lambda: "markup" in page.find_element("id", "card").text and
         page.find_elements("css selector", "#card .eval-table"), "the markup adapter's card")
    fact = lambda key: page.find_element("css selector", f"#card dd[data-key='{key}']").text  # noqa: E731
    assert fact("data source") == Path(CARD_SOURCE).name  # the file name, never the folder it came from
    assert "/private" not in page.find_element("id", "card").text
    assert fact("data revision") == CARD_REVISION
    assert "<img src=x onerror=window.pwned=5>" in page.find_element("css selector", "#card .eval-table").text
    time.sleep(0.5)  # an onerror handler would have fired by now
    assert js(page, "return window.pwned") is None
    assert js(page, "return document.querySelectorAll('#columns script, #columns img, #card script, "
                    "#card img, #card b').length") == 0


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def settings(d, **values) -> None:
    for key, value in values.items():
        el = d.find_element("id", key)
        if el.get_attribute("type") == "checkbox":
            if el.is_selected() != value:
                el.click()
        else:
            js(d, "arguments[0].value = arguments[1]", el, str(value))


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_same_seed_and_continued_chat_send_what_the_api_answers(server, page):
    open_page(page, server["url"])
    settings(page, **{"same-seed": True, "seed": "", "chat-mode": False, "max_tokens": MAX_TOKENS})
    js(page, "document.getElementById('temperature').value = '1'")
    for box in page.find_elements("css selector", "#models input"):
        if (box.get_attribute("value") in ("alpha", "beta")) != box.is_selected():
            box.click()
    js(page, "document.getElementById('prompt').value = arguments[0]", PROMPT)
    page.find_element("id", "send").click()
    wait(page, lambda: len(page.find_elements("css selector", ".column.done")) == 2, "both sampled columns")
    page.find_element("id", "export-json").click()
    record = json.loads(exported(page, ".json").read_text())
    seeds = record["settings"]["seeds"]
    assert len(seeds) == 2 and seeds[0] == seeds[1] is not None  # one seed drawn for the whole comparison
    for col in record["columns"]:  # the API, asked the same thing with that seed, answers the same
        again = post(server["url"] + "/v1/chat/completions", {
            "model": col["model"], "messages": [{"role": "user", "content": PROMPT}], "temperature": 1.0,
            "top_p": 1.0, "max_tokens": MAX_TOKENS, "seed": seeds[0]})
        assert again["choices"][0]["message"]["content"] == col["text"]

    # Continue the chat greedily: each column sends its own conversation so far.
    settings(page, **{"chat-mode": True, "temperature": 0})
    js(page, "document.getElementById('prompt').value = 'And one about dogs?'")
    page.find_element("id", "send").click()
    wait(page, lambda: len(page.find_elements("css selector", ".column.done")) == 2, "the second turn")
    for col, column in zip(record["columns"], page.find_elements("css selector", ".column")):
        turns = [t.get_property("textContent") for t in column.find_elements("css selector", ".turn")]
        assert turns == [PROMPT, col["text"], "And one about dogs?"]
        messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": col["text"]},
                    {"role": "user", "content": "And one about dogs?"}]
        want = post(server["url"] + "/v1/chat/completions", {"model": col["model"], "messages": messages,
                                                               "temperature": 0, "max_tokens": MAX_TOKENS})
        assert text_of(column) == want["choices"][0]["message"]["content"]
    settings(page, **{"chat-mode": False})


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_stop_ends_every_column_and_the_server_stops_generating(server, page):
    open_page(page, server["url"])
    before = json.loads(get(server["url"] + "/health", key=None)[2])["cancelled"]
    for box in page.find_elements("css selector", "#models input"):
        if (box.get_attribute("value") == "alpha") != box.is_selected():
            box.click()
    js(page, "document.getElementById('prompt').value = arguments[0];"
             "document.getElementById('max_tokens').value = '1000'", PROMPT)
    page.find_element("id", "send").click()
    wait(page, lambda: len(text_of(page.find_element("css selector", ".column"))) > 0, "the first words")
    page.find_element("id", "stop").click()
    wait(page, lambda: page.find_elements("css selector", ".column.done"), "the stopped column", 30)
    stats = page.find_element("css selector", ".column .stats").text
    assert stats.endswith("stopped by you") and int(stats.split()[0]) < 1000, stats
    wait(page, lambda: json.loads(get(server["url"] + "/health", key=None)[2])["cancelled"] > before,
         "the server to cancel the row", 60)


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_unload_and_load_buttons_use_the_admin_api(server, page):
    open_page(page, server["url"])
    resident = lambda: json.loads(get(server["url"] + "/admin/adapters")[2])["resident"]  # noqa: E731
    badge = lambda: js(page, "return document.querySelector(\".adapter[data-name='beta'] .badge\").textContent")  # noqa
    shown = lambda: [b.text for b in page.find_elements(  # noqa: E731
        "css selector", ".adapter[data-name='beta'] button") if b.is_displayed()]
    assert badge() == "loaded" and shown() == ["Card", "Unload"]  # only what the adapter's state allows
    page.find_element("css selector", ".adapter[data-name='beta'] .unload").click()
    wait(page, lambda: badge() == "on disk", "beta's badge to say it is unloaded", 60)
    assert "beta" not in resident() and shown() == ["Card", "Load"]
    page.find_element("css selector", ".adapter[data-name='beta'] .load").click()
    wait(page, lambda: badge() == "loaded", "beta's badge to say it is loaded", 120)
    assert "beta" in resident() and shown() == ["Card", "Unload"]


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_a_fresh_page_ticks_the_first_two_models(server, page):
    open_page(page, server["url"])
    boxes = page.find_elements("css selector", "#models input")
    assert len(boxes) >= 3 and [b.is_selected() for b in boxes][:3] == [True, True, False]


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_every_response_carries_a_content_security_policy(server):
    status, headers, body = get(server["url"] + "/", key=None)
    assert status == 200 and b"<script type=\"module\" src=\"/playground/app.js\">" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "connect-src 'self'" in headers["content-security-policy"]
    for path in ["/v1/models", "/v1/adapters/alpha", "/v1/adapters/nope", "/health"]:
        status, headers, body = get(server["url"] + path)
        assert headers["content-security-policy"].startswith("default-src 'none'"), path
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_card_route_names_adapters_never_paths(server):
    status, _, body = get(server["url"] + "/v1/adapters/nope")
    err = json.loads(body)["error"]
    assert status == 404 and err["code"] == "model_not_found" and "'nope' does not exist" in err["message"]
    assert str(server["adapters"]) not in err["message"] and "adapters_dir" in err["message"]
    for name, status_wanted in [("..", 400), ("tiny-gptj", 400), ("-x", 400)]:
        status, _, body = get(server["url"] + f"/v1/adapters/{name}")
        assert status == status_wanted and "error" in json.loads(body), name
    card = json.loads(get(server["url"] + "/v1/adapters/markup")[2])
    assert card["data"]["source"] == Path(CARD_SOURCE).name and card["plot"] is None
    assert card["evaluation"]["tables"][0]["rows"] == [["markup", "<img src=x onerror=window.pwned=5>"]]
    assert str(server["root"]) not in json.dumps(card)


def test_playground_is_on_by_default_only_on_loopback():
    from lora_train.inference import playground

    assert all(playground.enabled(None, h) for h in ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
    assert not any(playground.enabled(None, h) for h in ["0.0.0.0", "192.168.1.5", "example.org", "::"])
    assert playground.enabled(True, "0.0.0.0") and not playground.enabled(False, "127.0.0.1")
    from lora_train import compose
    from lora_train.config import typed
    from lora_train.schemas.infer import ServeJob

    assert typed(compose("serve", []), ServeJob).playground is None
    assert typed(compose("serve", ["playground=false"]), ServeJob).playground is False
    with pytest.raises(Exception, match="playground"):
        compose("serve", ["playground=sometimes"])


def test_without_the_playground_the_api_still_carries_the_policy():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lora_train.inference import playground

    for on in (False, True):
        app = FastAPI()
        app.get("/v1/ping")(lambda: {"ok": True})
        playground.mount(app, on)
        client = TestClient(app)
        page = client.get("/")
        assert page.status_code == (200 if on else 404)
        assert ("script-src 'self'" in page.headers["content-security-policy"]) == on
        api = client.get("/v1/ping")
        assert api.headers["content-security-policy"].startswith("default-src 'none'")
        if on:
            for src in re.findall(r'(?:src|href)="(/playground/[^"]+)"', page.text):
                assert client.get(src).status_code == 200, src


def test_card_facts_from_files_lora_eval_and_lora_train_write(tmp_path):
    from lora_train.evaluation import report
    from lora_train.inference.cards import eval_section, public_name

    assert public_name("/home/me/corpora/chats.jsonl") == "chats.jsonl"
    assert public_name("./data/*.parquet") == "*.parquet"
    assert public_name("nomic-ai/gpt4all-j-prompt-generations") == "nomic-ai/gpt4all-j-prompt-generations"
    assert public_name("builtin:sample") == "builtin:sample" and public_name(None) is None
    rows = [report.ModelResult("tiny (base)", None, loss={"val": {"loss": 2.5, "perplexity": 12.18}}),
            report.ModelResult("alpha", "adapters/alpha", loss={"val": {"loss": 2.25, "perplexity": 9.49}})]
    section = report.card_section("Evaluated with lora-eval", "", report.loss_markdown(rows, {"val": "held out"}))
    card = report.update_card(tmp_path, section)
    got = eval_section(card.read_text())
    [table] = got["tables"]
    assert table["title"] == "Loss and perplexity"
    assert table["columns"] == ["Model", "val: loss / perplexity"]
    assert table["rows"] == [["tiny (base)", "2.5000 / 12.18"], ["alpha", "2.2500 / 9.49"]]
    assert got["notes"][0] == "Evaluated with lora-eval"
    assert eval_section("# no evaluation here\n") is None


@pytest.mark.slow  # the shared server needs adapters trained first (minutes on 2 cores)
def test_a_stream_can_end_with_its_token_counts(server):
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(server["url"] + "/v1/chat/completions", data=body,
                                 headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5 and last["usage"]["prompt_tokens"] > 0
    assert all("usage" not in json.loads(e) for e in events[:-2])


def test_the_browsers_favicon_request_gets_an_icon_not_a_404():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lora_train.inference import playground

    app = FastAPI()
    playground.mount(app, True)
    icon = TestClient(app).get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert icon.content.startswith(b"\x89PNG\r\n\x1a\n")
