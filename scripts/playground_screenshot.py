"""Take docs/playground.png: lora-serve's playground comparing a base and an adapter on one prompt.

    python scripts/playground_screenshot.py --adapters-dir adapters --models smollm2-135m,smollm2-sample \
        --prompt "List: kayak, pebble, walrus, tulip. Which word comes third?" --out docs/playground.png

Starts `lora-serve` on a free port of 127.0.0.1, drives the system's headless Chromium with selenium (never a browser
downloaded at run time), sends the prompt greedily to the chosen models and saves a screenshot once every column is
done. Needs the serve extra, selenium, and `chromium` with `chromium-driver`.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, what: str, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if got := condition():
            return got
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters-dir", default="adapters")
    ap.add_argument("--models", required=True, help="comma-separated: the base's name and adapter names")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    a = ap.parse_args()
    from selenium import webdriver

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).with_name("lora-serve")), f"adapters_dir={a.adapters_dir}",
                               f"port={port}", "host=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                return urllib.request.urlopen(url + "/health", timeout=5).status == 200
            except OSError:
                return server.poll() is not None and sys.exit("lora-serve exited")

        wait(healthy, "lora-serve")
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"]:
            opts.add_argument(arg)
        d = webdriver.Chrome(options=opts, service=webdriver.ChromeService(shutil.which("chromedriver")))
        try:
            d.get(url + "/")
            wait(lambda: d.find_elements("css selector", "#models input"), "the model list")
            models = a.models.split(",")
            for box in d.find_elements("css selector", "#models input"):
                if (box.get_attribute("value") in models) != box.is_selected():
                    box.click()
            d.execute_script("document.getElementById('prompt').value = arguments[0];"
                             "document.getElementById('temperature').value = '0';"
                             "document.getElementById('max_tokens').value = String(arguments[1]);",
                             a.prompt, a.max_tokens)
            d.find_element("id", "send").click()
            wait(lambda: len(d.find_elements("css selector", ".column.done")) == len(models), "every column")
            d.save_screenshot(str(a.out))
            print(f"wrote {a.out}")
        finally:
            d.quit()
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
