"""Screenshot of the inspection page (``patchbank serve``'s ``/``) in headless Chromium, for the docs.

Starts the real server on a free 127.0.0.1 port with MODEL, opens the page in Debian's chromium
(driven by playwright), drops IMAGE on it, waits for the result and writes the screenshot.

    python benchmarks/screenshot_page.py MODEL IMAGE -o docs/serve_page.png
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from patchbank.service.process import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=860)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium binary: apt-get install chromium")
    with ServerProcess([args.model], ["--quiet"]) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=60000)
        page.set_input_files("#file", str(args.image))
        page.wait_for_function("document.getElementById('canvas').dataset.rendered === '1'", timeout=120000)
        page.screenshot(path=str(args.out), full_page=True)
        print(f"{args.image.name}: {page.inner_text('#badge')}, normalised score {page.inner_text('#score')}, "
              f"threshold {page.inner_text('#thr')}; wrote {args.out}")
        browser.close()


if __name__ == "__main__":
    main()
