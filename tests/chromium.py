"""A headless Chromium driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``): no
websocket library, no network. Tests type into pages, press keys, click, and read the DOM back.

Chromium reads commands on fd 3 and writes answers on fd 4, each a JSON object ended by a NUL byte. The pipes are
put on fds 3 and 4 by bash (dash cannot redirect fds above 9), so no preexec_fn runs in the forked child."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time

CHROMIUM = os.environ.get("QKV_CHROMIUM") or shutil.which("chromium")
BASH = shutil.which("bash")


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page. Use as a context manager; every call has a deadline."""

    def __init__(self, profile_dir, *, timeout: float = 60.0, width: int = 1280, height: int = 900):
        if CHROMIUM is None or BASH is None:
            raise BrowserError("chromium (and bash) are needed")
        self.timeout, self._id, self._buf, self.console = timeout, 0, b"", []
        to_r, to_w = os.pipe()  # we write commands, chromium reads them on fd 3
        from_r, from_w = os.pipe()  # chromium writes answers on fd 4
        hi_r, hi_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.close(to_r)
        os.close(from_w)
        cmd = [BASH, "-c", f'exec "$0" "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-', CHROMIUM,
               "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", f"--window-size={width},{height}", f"--user-data-dir={profile_dir}",
               "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(hi_r, hi_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(hi_r)
        os.close(hi_w)
        self._read, self._write = from_r, to_w
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Runtime.enable", session=True)
        self.call("Page.enable", session=True)

    # -- the protocol ----------------------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float | None = None):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for reply in self._messages(deadline):
                if reply.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                                 for a in reply["params"].get("args", [])))
                elif reply.get("method") == "Runtime.exceptionThrown":
                    self.console.append("Uncaught " + json.dumps(reply["params"]["exceptionDetails"])[:500])
                elif reply.get("id") == self._id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    def _messages(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError("chromium did not answer in time")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium closed the pipe (exit status {self.proc.poll()})")
            self._buf += chunk
        out = []
        while b"\0" in self._buf:
            raw, self._buf = self._buf.split(b"\0", 1)
            out.append(json.loads(raw))
        return out

    # -- what tests do ---------------------------------------------------------------------------------------
    def evaluate(self, expression: str, *, timeout: float | None = None):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                           "timeout": int(1000 * (timeout or self.timeout))},
                      session=True, timeout=(timeout or self.timeout) + 5)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:80]}...: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def goto(self, url: str) -> None:
        """Load url and wait until the page has rendered (body's data-status is no longer "loading")."""
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("document.readyState === 'complete' && document.body && "
                      "document.body.getAttribute('data-status') !== 'loading'")

    def wait_for(self, condition: str, *, timeout: float | None = None) -> None:
        """Wait, inside the page (a MutationObserver, no polling from here), until a JS condition holds."""
        ms = int(1000 * (timeout or self.timeout))
        ok = self.evaluate(f"""new Promise(function (resolve) {{
            function test() {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }}
            if (test()) return resolve(true);
            var obs = new MutationObserver(function () {{ if (test()) {{ obs.disconnect(); resolve(true); }} }});
            obs.observe(document, {{ attributes: true, childList: true, subtree: true, characterData: true }});
            document.addEventListener('readystatechange', function () {{ if (test()) resolve(true); }});
            setTimeout(function () {{ obs.disconnect(); resolve(test()); }}, {ms});
        }})""", timeout=(timeout or self.timeout) + 5)
        if not ok:
            raise BrowserError(f"timed out waiting for: {condition}")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the first element matching selector."""
        box = self.evaluate(f"(function () {{ var e = document.querySelector({json.dumps(selector)}); "
                            f"e.scrollIntoView({{block: 'center'}}); var r = e.getBoundingClientRect(); "
                            f"return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1}, session=True)

    def type(self, selector: str, text: str) -> None:
        """Focus an input (by clicking it), clear it, and type text as keyboard input."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Backspace", "code": "Backspace",
                                             "windowsVirtualKeyCode": 8}, session=True)
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Backspace", "code": "Backspace",
                                             "windowsVirtualKeyCode": 8}, session=True)
        if text:
            self.call("Input.insertText", {"text": text}, session=True)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter", "text": "\r",
                                                 "windowsVirtualKeyCode": 13}, session=True)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
