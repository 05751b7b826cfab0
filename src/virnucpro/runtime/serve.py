"""A worker process's side of the protocol (`protocol.py`), whatever computes the scores.

`serve` runs in the child: it settles the run with the parent, then takes units until told
to stop. A predict unit (`RecordUnit`) is parsed, chunked, translated, scored and rendered
here, and its saved file made (`process_unit`), so the parent only appends and writes bytes.
The scoring itself is a backend's: the torch models (`worker.TorchBackend`), or a
benchmark's stand-in that sleeps as long as a GPU would compute. No torch here, so a
stand-in worker starts in a blink.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from virnucpro.runtime.batching import WorkUnit
from virnucpro.runtime.protocol import (
    Channel,
    RecordUnit,
    Settings,
    UnitResult,
    WorkerSpec,
    empty_result,
    expect,
)

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What computes scores in a worker (see `worker.TorchBackend`)."""

    def probe(self) -> dict[str, Any]: ...
    def load(self, settings: Settings) -> dict[str, Any]: ...
    def propose(self) -> dict[str, int]: ...
    def go(self, settings: Settings) -> None: ...
    def score(self, unit: WorkUnit) -> UnitResult: ...
    def after_unit(self) -> None: ...
    def failure(self, exc: BaseException) -> str: ...


def process_unit(backend: Backend, spec: WorkerSpec, unit: Any) -> UnitResult:
    """Score one unit; a predict unit is first chunked and translated, and its rows are
    rendered from the scores (the stages' times are in `seconds`)."""
    if not isinstance(unit, RecordUnit):
        return backend.score(unit)
    from virnucpro.frames import piece_frames
    from virnucpro.render import render_unit
    from virnucpro.runtime.units import text_pieces, unit_file

    render = spec.render
    assert render is not None, "a predict unit needs the run's render settings"
    t0 = time.perf_counter()
    pieces = text_pieces(unit, render.chunk_size)
    records = piece_frames(pieces, render.chunk_size)
    frames = [f for rf in records for fs in rf.frames for f in fs]
    t1 = time.perf_counter()
    if frames:
        result = backend.score(WorkUnit(unit.index, tuple(f.id for f in frames),
                                        tuple(f.nucleotide for f in frames),
                                        tuple(f.protein for f in frames)))
    else:  # rendered all the same, and saved: merge and resume find every unit
        result = replace(empty_result(unit.index), worker=spec.device)
    t2 = time.perf_counter()
    rendered = render_unit(records, pieces, result.scores, render.threshold,
                           render.regions, render.chunk_size, render.save_embeddings)
    result = replace(result, rendered=rendered)
    result = replace(result, saved=unit_file(unit, result))
    seconds = {"translate": t1 - t0, **result.seconds, "render": time.perf_counter() - t2}
    return replace(result, seconds=seconds)


def serve(make_backend: Callable[[WorkerSpec], Backend], fds: list[str]) -> None:
    """The worker process: `fds` are the two pipe descriptors (read, write) from the
    parent. Settles the run, then scores units until `stop` or the parent has gone."""
    channel = Channel(int(fds[0]), int(fds[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _exit_with_parent()
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    threading.Thread(target=_receive, args=(channel, inbox), daemon=True,
                     name="virnucpro-inbox").start()
    index, spec = expect(inbox.get(), "spec")
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"virnucpro worker {index}: %(message)s")
    backend: Backend | None = None
    try:
        backend = make_backend(spec)
        channel.send("probe", plain(backend.probe()))
        channel.send("loaded", plain(backend.load(expect(inbox.get(), "load"))))
        expect(inbox.get(), "measure")
        channel.send("proposal", plain(backend.propose()))
        backend.go(expect(inbox.get(), "go"))
        process = getattr(backend, "process", None)  # a stand-in may do it all itself
        while (message := inbox.get())[0] == "unit":
            unit = message[1]
            result = process(unit) if process else process_unit(backend, spec, unit)
            channel.send("result", store(spec, unit, result))
            backend.after_unit()
    except BrokenPipeError:  # the parent has gone
        os._exit(1)
    except Exception as exc:  # reported to the parent, which stops the run
        line = backend.failure(exc) if backend is not None else \
            f"the worker on {spec.device} failed: {type(exc).__name__}: {exc}"
        channel.send("error", line)
    channel.close()


def store(spec: WorkerSpec, unit: Any, result: UnitResult) -> UnitResult:
    """Save a scored unit where the spec says (the parent then only appends its rows)."""
    if spec.units_home is None:
        return result
    from pathlib import Path

    from virnucpro.runtime.units import save_unit

    save_unit(Path(spec.units_home), unit, result)
    return replace(result, saved=None, stored=True)


def plain(data: Any) -> Any:
    """`data` as JSON types: what a worker reports is recorded in run.json, and unpickling,
    say, torch's version string would import torch into the parent."""
    return json.loads(json.dumps(data, default=str))


def _receive(channel: Channel, inbox: queue.Queue[tuple[str, Any]]) -> None:
    """Read the parent's messages ahead of the scoring loop; `stop` when the pipe closes."""
    try:
        while True:
            inbox.put(channel.recv())
    except (EOFError, OSError):
        inbox.put(("stop", None))


def _exit_with_parent() -> None:
    """End this worker when the parent dies (a kill -9 gives it no chance to stop us)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="virnucpro-parent-watch").start()


def main() -> None:
    """`python -m virnucpro.runtime.serve MODULE:BACKEND READ_FD WRITE_FD`."""
    import importlib

    module, _, name = sys.argv[1].partition(":")
    serve(getattr(importlib.import_module(module), name), sys.argv[2:])


if __name__ == "__main__":
    main()
