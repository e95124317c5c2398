"""The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven over
the DevTools protocol (aiohttp's websocket client), against a Trader on the simulator.

DASHBOARD_SCREENSHOT=docs/dashboard.png also saves a phone-sized screenshot for the README.
"""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from tests.test_api import TOKEN, ApiCase, Client, open_trader, run_loop, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


class Browser:
    """One Chromium page over the DevTools protocol (asyncio, aiohttp)."""

    def __init__(self, width: int = 412, height: int = 915):
        self.width, self.height = width, height
        self.profile = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0

    def port(self, timeout: float = 30.0) -> int:
        marker = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.1)
        raise RuntimeError("chromium opened no DevTools port")

    async def connect(self) -> None:
        import aiohttp
        port = self.port()
        self.session = aiohttp.ClientSession()
        for _ in range(50):
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width,
                        height=self.height, deviceScaleFactor=1, mobile=self.width < 600)

    async def send(self, method: str, **params):
        self._id += 1
        ident = self._id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=30)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"never true in the page: {expression}")

    async def close(self) -> None:
        if getattr(self, "session", None) is not None:
            await self.session.close()

    def quit(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.profile.cleanup()


@unittest.skipIf(CHROMIUM is None,
                 "chromium not installed: apt-get install chromium chromium-driver (see .ci/run)")
class TestDashboardInChromium(ApiCase):
    @classmethod
    def setUpClass(cls):
        cls.trader = open_trader(cls)
        cls.thread = run_loop(cls, cls.trader)
        cls.server = serve(cls, cls.trader)
        cls.api = Client(cls.server)
        status, answer = cls.api.json("POST", "/api/v1/pause")  # fewer moving parts
        assert status == 200, answer

    def test_the_page_shows_the_api_and_force_exit_closes_a_position(self):
        asyncio.run(self.drive())

    async def drive(self):
        browser = Browser()
        self.addCleanup(browser.quit)
        try:
            await browser.connect()
            await browser.send("Page.navigate", url=f"{self.server.url}/?token={TOKEN}")
            await browser.wait_for("document.body && document.body.dataset.loaded")
            # the token left the URL; the page authenticates by its HttpOnly cookie
            self.assertEqual(await browser.evaluate("location.href"), self.server.url + "/")
            self.assertEqual(await browser.evaluate("document.cookie"), "",
                             "the cookie is HttpOnly: scripts cannot read it")
            self.assertTrue(await browser.evaluate("document.getElementById('login').hidden"))

            await browser.wait_for("(() => { const i = document.getElementById('equity');"
                                   " return i.complete && i.naturalWidth > 0; })()")

            # the loop trades on: compare once a refresh of the page caught up with the API
            rows_js = ("[...document.querySelectorAll('#positions tr[data-symbol]')]"
                       ".map(tr => tr.dataset.symbol)")
            trades_js = ("[...document.querySelectorAll('#trades tr[data-symbol]')].map(tr =>"
                         " [tr.dataset.symbol, tr.querySelector('.reason').textContent])")
            deadline = time.monotonic() + 20
            while True:
                held = self.api.get("/api/v1/positions")["positions"]
                trades = self.api.get("/api/v1/trades?per_page=20")["trades"]
                shown, rows = await browser.evaluate(f"[{rows_js}, {trades_js}]")
                expected = [[t["symbol"], t["exit_reason"]] for t in trades]
                if (sorted(shown) == sorted(p["symbol"] for p in held) and rows == expected
                        or time.monotonic() > deadline):
                    break
                await asyncio.sleep(0.2)
            self.assertTrue(held, "a position to show")
            self.assertEqual(sorted(shown), sorted(p["symbol"] for p in held))
            self.assertEqual(rows, expected)
            stops = await browser.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#positions tr[data-symbol]')]"
                ".map(tr => [tr.dataset.symbol, tr.querySelector('.stop').textContent]))")
            for p in held:
                self.assertAlmostEqual(float(stops[p["symbol"]]), p["stop_loss"],
                                       delta=abs(p["stop_loss"]) * 1e-5)

            equity = self.api.get("/api/v1/status")["equity"]
            text = await browser.evaluate("document.getElementById('f-equity').textContent")
            shown_equity = float("".join(c for c in text.split()[0] if c.isdigit() or c == "."))
            self.assertAlmostEqual(shown_equity, equity, delta=equity * 0.02)  # it moves

            if os.environ.get("DASHBOARD_SCREENSHOT"):
                shot = await browser.send("Page.captureScreenshot", format="png",
                                          captureBeyondViewport=True)
                Path(os.environ["DASHBOARD_SCREENSHOT"]).write_bytes(
                    base64.b64decode(shot["data"]))

            target = held[0]["symbol"]
            clicked = await browser.evaluate(
                f"(() => {{ const b = document.querySelector("
                f"'button.force-exit[data-symbol={json.dumps(target)}]');"
                f" if (!b) return false; b.click(); return true; }})()")
            self.assertTrue(clicked, "the position's force-exit button")
            self.wait_for(lambda: target not in {p["symbol"] for p in
                                                 self.api.get("/api/v1/positions")["positions"]},
                          20, f"{target} closed")
            last = self.api.get("/api/v1/trades?per_page=1")["trades"][0]
            self.assertEqual((last["symbol"], last["exit_reason"]), (target, "force_exit"))
            await browser.wait_for(
                f"!document.querySelector('#positions tr[data-symbol={json.dumps(target)}]')")
            self.assertIn("closed 1 position",
                          await browser.evaluate("document.getElementById('message').textContent"))
        finally:
            await browser.close()


if __name__ == "__main__":
    unittest.main()
