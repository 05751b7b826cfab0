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
    """A live line on stderr: frames scored of those read so far, per-device rate, ETA.

    Without a live display (not a terminal, or --no-progress) the same facts go to the log
    once a minute, so long runs under a batch scheduler still show where they are."""

    LOG_EVERY = 60.0  # seconds between progress log lines without a live display

    def __init__(self, enabled: bool) -> None:
        import time

        self._clock = time.perf_counter
        self.bar: Any = None
        self.t0 = self.logged = self._clock()
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]frames"), BarColumn(),
                                    MofNCompleteColumn(), TimeElapsedColumn(),
                                    TimeRemainingColumn(), TextColumn("{task.description}"),
                                    console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("", total=None)
            self.bar.start()

    def update(self, done: int, seen: int, all_read: bool,
               frames_per_device: dict[str, int]) -> None:
        now = self._clock()
        if self.bar is None and now - self.logged < self.LOG_EVERY:
            return
        elapsed = max(now - self.t0, 1e-9)
        rates = " ".join(f"{dev} {n / elapsed:.0f}/s"
                         for dev, n in sorted(frames_per_device.items()))
        more = "" if all_read else " (still reading input)"
        if self.bar is None:
            self.logged = now
            log.info("%d of %d frames scored%s; frames/s: %s", done, seen, more,
                     rates or "n/a")
            return
        self.bar.update(self.task, completed=done, total=seen if all_read else None,
                        description=rates + more)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
