"""A real headless browser for the report tests: Debian's `chromium`, installed here with apt-get where it is
missing and we may (root, apt-get present), else the tests skip saying why.

    python tests/helpers/browser.py REPORT.html SCREENSHOT.png     # the screenshot of docs/report.png

Each run gets a fresh --user-data-dir, no network services, no GPU, no sandbox (containers).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]


def find_chromium(install: bool = True) -> tuple[str | None, str]:
    """(the browser's path, or None with the reason it is missing)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name), ""
    if not install:
        return None, "no chromium on PATH"
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None, "no chromium on PATH, and apt-get cannot install it here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode:
            return None, f"apt-get could not install chromium ({' '.join(cmd)}: {r.stderr.strip()[-200:]})"
    return find_chromium(install=False)


def run(browser: str, page: Path, *args: str) -> tuple[str, list[str]]:
    """(stdout, the page's console lines from the browser log) of one headless run on a local file."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args, Path(page).resolve().as_uri()],
                           capture_output=True, text=True, timeout=180)
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console


def dump_dom(browser: str, page: Path) -> tuple[str, list[str]]:
    """The DOM after load (scripts run) and the console lines."""
    return run(browser, page, "--dump-dom")


def screenshot(browser: str, page: Path, png: Path, width: int = 1280, height: int = 1400) -> list[str]:
    """Write a PNG of the page's first `height` pixels; returns the console lines."""
    png = Path(png).resolve()
    _, console = run(browser, page, f"--screenshot={png}", f"--window-size={width},{height}")
    return console


if __name__ == "__main__":
    browser, why = find_chromium()
    if browser is None:
        sys.exit(f"browser.py: {why}")
    lines = screenshot(browser, Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(lines) or f"wrote {sys.argv[2]}; no console output")
