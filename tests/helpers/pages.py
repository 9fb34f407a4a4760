"""Reading rendered report pages back: plots and their marks, and a headless Chromium run."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest


class Figures(HTMLParser):
    """figure id -> {"attrs": figure attributes, "marks": [mark attributes]}; body attributes."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.body: dict[str, str] = {}
        self.external: list[str] = []
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        for key in ("src", "href"):
            if key in a:
                self.external.append(f"{tag} {key}={a[key]}")
        if tag == "link" or (tag == "script" and "src" in a):
            self.external.append(tag)
        if tag == "figure" and "plot" in a.get("class", ""):
            self._current = a["id"].removeprefix("plot-")
            self.figures[self._current] = {"attrs": a, "marks": []}
            self._depth = 0
        elif self._current:
            if tag == "figure":
                self._depth += 1
            if "mark" in a.get("class", "").split():
                self.figures[self._current]["marks"].append(a)

    def handle_endtag(self, tag):
        if tag == "figure" and self._current:
            if self._depth:
                self._depth -= 1
            else:
                self._current = None


def parse(page: str) -> Figures:
    p = Figures()
    p.feed(page)
    return p


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def run_chromium(exe: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
           "--v=0", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
