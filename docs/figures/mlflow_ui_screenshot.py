"""Screenshot a page of the MLflow UI with headless Chromium (the operator guide's figures).

    python docs/figures/mlflow_ui_screenshot.py URL OUT.png [--height PX]

Plain ``chromium --headless --screenshot`` would do, but MLflow 3's UI opens its assistant
panel over the page on a browser's first visit; this drives Chromium through its DevTools
protocol instead (needs ``pip install websockets``), closes that panel,
and captures the page. Needs ``chromium`` on the PATH (``apt-get install -y chromium``).
Not part of fedmed: a documentation helper, run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import websockets

PORT = 9333
WIDTH = 1400
RENDER_S = 8  # the UI is a single-page app: its data arrive after the page has loaded
CLOSE_ASSISTANT = (
    "(() => { const b = [...document.querySelectorAll('button')]"
    ".find(b => b.getAttribute('aria-label') === 'Close'); if (b) b.click(); return !!b; })()"
)


async def capture(url: str, height: int) -> bytes:
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={PORT}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with websockets.connect(page_socket(), max_size=2**26) as socket:
                calls = 0

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    nonlocal calls
                    calls += 1
                    await socket.send(json.dumps({"id": calls, "method": method, "params": params}))
                    while True:
                        reply = json.loads(await socket.recv())
                        if reply.get("id") == calls:
                            return dict(reply.get("result", {}))

                await call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height,
                           deviceScaleFactor=1, mobile=False)  # fmt: skip
                await call("Page.navigate", url=url)
                await asyncio.sleep(RENDER_S)
                await call("Runtime.evaluate", expression=CLOSE_ASSISTANT)
                await asyncio.sleep(2)
                shot = await call("Page.captureScreenshot", format="png")
                return base64.b64decode(shot["data"])
        finally:
            browser.terminate()
            browser.wait()


def page_socket() -> str:
    """The DevTools websocket of Chromium's first page, once Chromium answers."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json") as answer:
                targets = json.load(answer)
            return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        except (OSError, StopIteration):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    png = asyncio.run(capture(args.url, args.height))
    with open(args.out, "wb") as handle:
        handle.write(png)
    print(f"{args.out}: {len(png)} bytes")


if __name__ == "__main__":
    main()
