"""Helpers for the web app's browser tests (``test_web.py``): the server as a subprocess on a
free 127.0.0.1 port, Debian's Chromium through Playwright, and page geometry (where a RAS point
of a slice view is on the page)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_CHROMIUM = ("sudo apt-get install -y chromium libegl1 libegl-mesa0 libgl1-mesa-dri "
                    "(Debian/Ubuntu; .ci/run does it)")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = "NoduleSAM web app on "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """``nodulesam serve`` in a subprocess; its output goes to ``log``."""

    def __init__(self, args: list[str], log: Path, timeout_s: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "NoduleSAMLib.cli", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        start = time.monotonic()
        while not self._ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() - start > timeout_s:
                self.stop()
                raise RuntimeError(f"the server did not start; its output:\n{self.output()}")
        self.start_s = time.monotonic() - start

    def _pump(self) -> None:
        with open(self.log, "w") as log:
            for line in self.process.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                if line.startswith(READY):
                    self._ready.set()

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def listening_addresses(port: int) -> list[str]:
    """The local IPv4/IPv6 addresses with a listening TCP socket on ``port`` (Linux /proc)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                if len(address) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    raw = bytes.fromhex(address)
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def state(page, key: str):
    return page.evaluate(f"window.trame.state.get({key!r})")


def wait_state(page, expression: str, timeout_s: float = 60.0, poll_s: float = 0.25):
    """Wait until a JS expression over ``s`` (the trame state's getter) is truthy; returns it."""
    script = f"(() => {{ const s = (k) => window.trame.state.get(k); return ({expression}); }})()"
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {expression}; "
                                 f"error: {state(page, 'error')!r}, notice: {state(page, 'notice')!r}")
        time.sleep(poll_s)


def view_image(page, view: str):
    """The streamed image of a view (``Red``, ``Green``, ``Yellow``, ``ThreeD``)."""
    return page.locator(f"#marker-{view}").locator("xpath=..").locator("img.image-display-area")


def page_point(page, view: str, point_ras) -> tuple[float, float]:
    """Where a RAS point is on the page in a slice view (the server's XY of the point, scaled
    from the render window to the image element; XY has its origin bottom left)."""
    xy = page.evaluate("(args) => window.trame.trigger('nodulesam_view_xy', args)",
                       [view, [float(v) for v in point_ras]])
    box = view_image(page, view).bounding_box()
    return (box["x"] + xy["x"] * box["width"] / xy["width"],
            box["y"] + (xy["height"] - xy["y"]) * box["height"] / xy["height"])


def drag(page, start, end, hover_s: float = 0.4) -> None:
    """Press at ``start``, move to ``end`` and release, pausing first so the widget under the
    mouse picks its handle."""
    page.mouse.move(*start)
    time.sleep(hover_s)
    page.mouse.move(start[0] + 1, start[1])
    time.sleep(hover_s)
    page.mouse.down()
    page.mouse.move(*end, steps=12)
    time.sleep(0.2)
    page.mouse.up()


def views_have_frames(page, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for view in ("Red", "Green", "Yellow", "ThreeD"):
        image = view_image(page, view)
        while not (image.count() and (image.first.get_attribute("src") or "")):
            if time.monotonic() > deadline:
                raise AssertionError(f"the {view} view shows no image")
            time.sleep(0.25)
