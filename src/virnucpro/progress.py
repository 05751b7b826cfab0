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
    """A live bar on stderr: the share of the input scored (by bytes, so it has a total and an
    ETA from the first unit on), frames scored and per-device rates.

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
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]scoring"), BarColumn(),
                                    TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                    TextColumn("ETA"), TimeRemainingColumn(),
                                    TextColumn("{task.description}"),
                                    console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("", total=None)
            self.bar.start()

    def update(self, done: int, seen: int, all_read: bool,
               frames_per_device: dict[str, int],
               input_bytes: tuple[int, int] | None = None) -> None:
        """`done` frames scored of `seen` read so far (`all_read`: the input is read);
        `input_bytes`: (bytes of input scored, bytes in all) when the size is known."""
        now = self._clock()
        if self.bar is None and now - self.logged < self.LOG_EVERY:
            return
        elapsed = max(now - self.t0, 1e-9)
        rates = " ".join(f"{dev} {n / elapsed:.0f}/s"
                         for dev, n in sorted(frames_per_device.items()))
        frames = f"{done} of {seen} frames" if all_read else f"{done} frames"
        if self.bar is None:
            self.logged = now
            log.info("%s", _line(frames, rates, input_bytes, elapsed))
            return
        if input_bytes is not None:
            self.bar.update(self.task, completed=input_bytes[0], total=max(input_bytes[1], 1),
                            description=f"{frames}  {rates}")
        else:
            self.bar.update(self.task, completed=done, total=seen if all_read else None,
                            description=f"{frames}  {rates}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _line(frames: str, rates: str, input_bytes: tuple[int, int] | None,
          elapsed: float) -> str:
    """One progress line for the log: scored share of the input and ETA where known."""
    text = f"{frames} scored; frames/s: {rates or 'n/a'}"
    if input_bytes is None or input_bytes[1] <= 0:
        return text
    share = min(input_bytes[0] / input_bytes[1], 1.0)
    eta = elapsed * (1 - share) / share if share > 0 else None
    left = "unknown" if eta is None else _clock(eta)
    return f"{share:.0%} of the input scored, {text}; ETA {left}"


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
