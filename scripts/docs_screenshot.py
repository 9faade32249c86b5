"""Screenshot of `fashionlens serve` with the released model on a real photo, for the README.

    .venv/bin/python scripts/docs_screenshot.py [MODEL_DIR] [PHOTO] [OUT_PNG]

Needs Debian's chromium and the python package playwright (never `playwright install`).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from fashionlens.server.app import create_app

    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models" / "clothing-attributes-lite0"
    photo = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "examples" / "clothing-attributes-mini" / "images" / "000013.jpg"
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / "docs" / "img" / "serve-screenshot.png"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model_dir), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#results .bar", timeout=60_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
