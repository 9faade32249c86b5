"""Progress that reads well in a terminal and in a log.

On a terminal: tqdm bars that update in place. When stderr is a file or a pipe (CI, `nohup`, a job
scheduler): a short line every ``interval`` seconds and one at the end, never a line per refresh.
Training likewise: Lightning's bar on a terminal, one line per epoch with the key metrics otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar


T = TypeVar("T")

LOG_INTERVAL_SECONDS = 10.0


def interactive(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress:
    """tqdm's small interface (``update``, ``close``, iteration) printing a line every few seconds."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 interval: float = LOG_INTERVAL_SECONDS, stream=None, disable: bool = False):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.interval = desc, unit, interval
        self.stream = stream or sys.stderr
        self.disable = disable
        self.count = 0
        self.started = self._last = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        self.count += count
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.count:
                self._print(final=True)

    def _print(self, final: bool = False) -> None:
        if self.disable:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        end = " done" if final else ""
        print(f"{self.desc}: {self.count}{of} {self.unit} ({rate:.1f} {self.unit}/s, {elapsed:.0f} s){end}",
              file=self.stream, flush=True)


def progress_bar(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, unit: str = "it",
                 disable: bool = False, stream=None):
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise."""
    stream = stream or sys.stderr
    if interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=stream, leave=False)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=disable, stream=stream)
