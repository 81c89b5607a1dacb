"""A headless Chromium driven through the DevTools protocol, for the page tests.

Debian's ``chromium`` package only (never a downloaded browser): the tests skip with a
reason when ``/usr/bin/chromium`` is absent. One browser per test module; each
:meth:`Browser.load` records every request the page makes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1400,850",
]


def _read(path):
    """The text of ``path`` ("" while it does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


class Browser:
    def __init__(self):
        import websocket

        self.profile = tempfile.TemporaryDirectory(
            prefix="graphgen-chromium-", ignore_cleanup_errors=True
        )
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = os.path.join(self.profile.name, "DevToolsActivePort")
        deadline = time.monotonic() + 20
        while not _read(port_file):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(_read(port_file).split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.next_id = 0
        self.events = []
        self.send("Network.enable")
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expr):
        """Evaluate ``expr`` in the page and return its value (JSON-serializable)."""
        r = self.send(
            "Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def load(self, path, timeout=20):
        """Open ``path`` and wait until the page's script is ready; returns seconds."""
        self.events.clear()
        url = "file://" + os.path.abspath(path)
        t0 = time.perf_counter()
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while self.js("document.body && document.body.dataset.ready") != "1":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: the page did not get ready")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def requests(self):
        """Every URL the page asked for since :meth:`load` (the document included)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def errors(self):
        """Console errors and uncaught exceptions since :meth:`load`."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(e["params"]["exceptionDetails"].get("text"))
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"][
                "type"
            ] in ("error", "assert"):
                out.append(str(e["params"]["args"]))
        return out

    def key(self, key, code=None, keycode=0):
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=code or key,
                windowsVirtualKeyCode=keycode,
            )

    def mouse(self, kind, x, y):
        self.send(
            "Input.dispatchMouseEvent",
            type=kind,
            x=x,
            y=y,
            button="left",
            clickCount=1 if kind != "mouseMoved" else 0,
        )

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def center(self, selector):
        """The viewport centre of the first element matching ``selector`` (scrolled
        into view)."""
        return self.js(
            f"""(() => {{
              const e = document.querySelector({json.dumps(selector)});
              if (!e) return null;
              e.scrollIntoView({{block: "center", inline: "center"}});
              const r = e.getBoundingClientRect();
              return [r.left + r.width / 2, r.top + r.height / 2];
            }})()"""
        )

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Chromium's helper processes can still write into the profile a moment after
        # the browser exits (a CI run failed: rmtree found 'Default' not empty): clean
        # up until the directory is gone
        for _ in range(50):
            self.profile.cleanup()
            if not os.path.exists(self.profile.name):
                break
            time.sleep(0.1)
