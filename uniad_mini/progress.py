"""A minimal progress bar on stderr (no dependency), silenced with `enabled=False`."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, width: int = 24):
        self.total, self.desc, self.enabled, self.width = max(total, 1), desc, enabled, width
        self.n, self.start, self.info = 0, time.perf_counter(), ""

    def update(self, n: int = 1, info: str = ""):
        self.n += n
        self.info = info or self.info
        if self.enabled:
            done = int(self.width * self.n / self.total)
            elapsed = time.perf_counter() - self.start
            bar = "#" * done + "." * (self.width - done)
            sys.stderr.write(f"\r{self.desc} [{bar}] {self.n}/{self.total} {elapsed:5.1f}s {self.info}")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
