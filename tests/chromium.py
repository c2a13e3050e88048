"""Headless Chromium driven over the DevTools protocol on a pipe, for the page's tests and
benchmarks/page_map.py: no driver, no websocket library."""

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Runs Chromium with the pipes as its fds 3 and 4, however the parent numbered them (dash's
# redirections take one digit only, and 3 or 4 may be one of the pipes themselves).
_AS_FDS_3_AND_4 = (
    "import fcntl, os, sys\n"
    "high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 10) for fd in sys.argv[1:3]]\n"
    "os.dup2(high[0], 3)\n"
    "os.dup2(high[1], 4)\n"
    "os.execv(sys.argv[3], sys.argv[3:])"
)


class Chromium:
    """Headless Chromium (--remote-debugging-pipe: it reads commands on fd 3 and answers on
    fd 4). Only localhost is reachable from it: nothing may come from a CDN."""

    def __init__(self, profile: Path, window: tuple[int, int] = (1280, 1000)):
        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _AS_FDS_3_AND_4, str(commands_read), str(answers_write),
             CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--proxy-server=127.0.0.1:9", f"--window-size={window[0]},{window[1]}",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(commands_read, answers_write),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(commands_read)
        os.close(answers_write)
        self.buffer, self.last_id = b"", 0

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                ready, _, _ = select.select([self.answers], [], [], 60)
                assert ready, f"Chromium did not answer {method}"
                chunk = os.read(self.answers, 1 << 20)
                assert chunk, "Chromium exited"
                self.buffer += chunk
            text, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(text)
            if answer.get("id") == self.last_id:  # events (no id) are not needed here
                assert "error" not in answer, answer
                return answer["result"]

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", url=url)["targetId"]
        return self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str):
        result = self.send(
            "Runtime.evaluate", session, expression=expression, returnByValue=True,
            awaitPromise=True,
        )  # fmt: skip
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(session, expression):
            assert time.monotonic() < deadline, f"the page never showed {what}"
            time.sleep(0.1)

    def mouse(self, session: str, kind: str, x: float, y: float) -> None:
        """A real pointer event at viewport (x, y): mouseMoved, mousePressed or mouseReleased."""
        buttons = {} if kind == "mouseMoved" else {"button": "left", "clickCount": 1}
        self.send("Input.dispatchMouseEvent", session, type=kind, x=x, y=y, **buttons)

    def click(self, session: str, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.mouse(session, kind, x, y)

    def screenshot(self, session: str, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        os.close(self.commands)
        os.close(self.answers)
        self.process.kill()
        self.process.wait(timeout=30)
