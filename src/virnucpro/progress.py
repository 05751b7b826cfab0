"""Progress shown to a person: a byte bar for downloads and hashing (`byte_bar`), and the
frames bar of a run (`Progress`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def byte_bar(label: str, total: int | None, enabled: bool,
                  min_total: int = 64 << 20) -> Iterator[Callable[[int], Any]]:
    """Yield an `advance(n)` callable; a rich bar on stderr when enabled and worth showing."""
    if not enabled or (total is not None and total < min_total):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


class Progress:
    """A live bar on stderr: chunks scored against the total the input check counted, frames
    scored, per-device rates and an ETA from the scoring rate so far; elapsed time and ETA
    tick every second, not only when a unit finishes. Without a total (stdin) it counts up.

    Without a live display (not a terminal, or --no-progress) the same facts go to the log
    once a minute, so long runs under a batch scheduler still show where they are."""

    LOG_EVERY = 60.0  # seconds between progress log lines without a live display

    def __init__(self, enabled: bool, total: int | None = None, unit: str = "chunks") -> None:
        import time

        self._clock = time.monotonic
        self.total, self.unit = total, unit
        self.done = 0
        self.bar: Any = None
        self.t0 = self.logged = self._clock()
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]scoring"), BarColumn(),
                                    TextColumn("{task.percentage:>3.0f}%" if total else ""),
                                    TimeElapsedColumn(), _EtaColumn(self),
                                    TextColumn("{task.description}"),
                                    console=Console(stderr=True), transient=True,
                                    refresh_per_second=2)
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None without a total or before any work."""
        if not self.total or self.done <= 0:
            return None
        rate = self.done / max(self._clock() - self.t0, 1e-9)
        return max(self.total - self.done, 0) / rate

    def update(self, done: int, frames: int, frames_per_device: dict[str, int]) -> None:
        """`done` chunks (or the display's unit) of `total` scored, `frames` frames."""
        self.done = done
        now = self._clock()
        if self.bar is None and now - self.logged < self.LOG_EVERY:
            return
        elapsed = max(now - self.t0, 1e-9)
        rates = " ".join(f"{dev} {n / elapsed:.0f}/s"
                         for dev, n in sorted(frames_per_device.items()))
        of = f" of {self.total}" if self.total else ""
        text = f"{done}{of} {self.unit}, {frames} frames; frames/s: {rates or 'n/a'}"
        if self.bar is None:
            self.logged = now
            eta = self.eta()
            share = f"{done / self.total:.0%} scored, " if self.total else ""
            left = f"; ETA {_clock(eta)}" if eta is not None else ""
            log.info("%s%s%s", share, text, left)
            return
        self.bar.update(self.task, completed=done, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _EtaColumn:
    """ETA from the scoring rate since the start, recomputed at every refresh."""

    def __new__(cls, progress: Progress) -> Any:
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Column(ProgressColumn):
            def render(self, task: Any) -> Text:
                eta = progress.eta()
                return Text("ETA " + ("-:--:--" if eta is None else _clock(eta)))

        return Column()


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
