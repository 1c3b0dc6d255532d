"""A small headless Chromium driver for UI tests, over the DevTools protocol (no extra dependencies).

`Browser` starts Debian's `chromium` in its own process group with a throwaway profile, talks to
one page over the DevTools websocket (the `websockets` package Prefect already depends on), and
offers what a test of a web UI needs: open a URL, wait for text, type into a field as a user
would, press a button, take a screenshot. Closing it kills the whole process group, so a failed
test leaves no renderer processes behind.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

# Background traffic off: the test machine can reach no network, and stray requests (updates,
# sync, safe browsing) only slow a loaded machine down.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
    "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0",
]


class BrowserError(RuntimeError):
    """Chromium did not start, a DevTools call failed, or a page never showed what was awaited."""


class Browser:
    """One headless Chromium page; use as a context manager so the browser is always killed."""

    def __init__(self, profile: Path, width: int = 1440, height: int = 1000, timeout: float = 60.0) -> None:
        """Start Chromium with a fresh profile under `profile` and attach to its page."""
        executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            raise BrowserError("chromium is not installed: apt-get install chromium (make test does it as root), "
                               "or set CHROMIUM to a Chromium or Chrome binary")
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / f"{profile.name}.log"
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._ids = itertools.count(1)
        self._socket: ClientConnection | None = None
        try:
            self._socket = connect(self._page_socket(profile, timeout), max_size=None, open_timeout=timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
            # Screenshots at the size a person's laptop shows, whatever the headless default is.
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _page_socket(self, profile: Path, timeout: float) -> str:
        """The DevTools websocket URL of Chromium's first page, once Chromium is listening."""
        port_file = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with {self._process.returncode}:\n{self._tail()}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if lines and lines[0].strip().isdigit():
                try:
                    targets = httpx.get(f"http://127.0.0.1:{lines[0].strip()}/json/list", timeout=5).json()
                except httpx.HTTPError:
                    targets = []
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise BrowserError(f"chromium did not open its DevTools port within {timeout:.0f} s:\n{self._tail()}")

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill Chromium and every process it started (renderers, GPU, zygote)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
            except ProcessLookupError:
                pass
        # The group may outlive its leader (a renderer shutting down late): make sure it is gone.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events arriving meanwhile are dropped)."""
        if self._socket is None:
            raise BrowserError("the browser is closed")
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"{method}: no answer within {timeout:.0f} s")
            try:
                reply = json.loads(self._socket.recv(timeout=remaining))
            except TimeoutError:
                continue
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        """Navigate to `url` (returns once navigation starts; wait for content with `wait_for`)."""
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its (JSON) value; a thrown error raises here."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"script failed: {details.get('exception', {}).get('description', details)}")
        return result.get("result", {}).get("value")

    def text(self) -> str:
        """The page's visible text (what a person reads; no markup, no hidden elements)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def url(self) -> str:
        """The address the page is at now (single-page apps change it without a navigation)."""
        return self.evaluate("location.href")

    def wait_for(self, expression: str, timeout: float = 90.0, what: str = "", refuse: tuple[str, ...] = ()) -> Any:
        """Poll a JavaScript expression until it is truthy and return its value.

        Fails early when the page shows any text in `refuse` (an error message), and otherwise
        after `timeout` with what the page did show, so a failure says why.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            shown = self.text()
            refused = [text for text in refuse if text in shown]
            if refused or time.monotonic() > deadline:
                reason = f"page shows {refused}" if refused else f"not within {timeout:.0f} s"
                raise BrowserError(f"waiting for {what or expression}: {reason}; at {self.url()}:\n{shown[:2000]}")
            time.sleep(0.5)

    def wait_for_text(self, *texts: str, timeout: float = 90.0, refuse: tuple[str, ...] = ()) -> None:
        """Wait until the page's visible text contains every one of `texts`."""
        self.wait_for(
            f"(() => {{ const t = document.body ? document.body.innerText : ''; "
            f"return {json.dumps(list(texts))}.every(s => t.includes(s)); }})()",
            timeout=timeout, what=f"text {list(texts)}", refuse=refuse,
        )

    def type_into(self, selector: str, value: str, timeout: float = 90.0) -> None:
        """Focus the field matching `selector` and type `value` as keystrokes, as a person would.

        Real key input (Input.insertText) fires the input events frameworks (Vue, React) listen
        to, so their state sees the value; setting `.value` from script would bypass them.
        """
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", timeout=timeout, what=selector)
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                      f"e.focus(); e.select && e.select(); }})()")
        self.call("Input.insertText", text=value)

    def click(self, selector: str, timeout: float = 90.0) -> None:
        """Click the element matching `selector` with the mouse, at its centre."""
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
            f"e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); "
            f"return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()",
            timeout=timeout, what=selector,
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """Save what the page shows now as a PNG at `path`; returns `path`."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
