"""What the parent and the workers say to each other, as plain data. No torch here.

The parent (the CLI process, or the Ray driver) only reads records, groups them into work
units and appends what comes back; it never imports torch. This module holds everything that
crosses between the two: what a worker is (`WorkerSpec`), how a run computes (`Settings`,
settled into a `Plan`), the units (`RecordUnit` of raw record pieces for predict; the frame
units of `batching.WorkUnit` for train), and what a worker returns (`UnitResult`).

A local worker is a child process (`python -m virnucpro.runtime.worker`) that talks to the
parent over two pipes (`Channel`): length-prefixed pickles both ways, between two processes of
the same run. Pipes leave nothing behind when a process is killed (no named semaphores), and
the child never re-imports the caller's main module.

Messages are `(kind, payload)` tuples. Worker -> parent: `probe` (the device's facts),
`loaded` (what loading and compiling reported), `proposal` (batch budgets), `result`
(a UnitResult), `error` (one line). Parent -> worker: `load` (Settings with the run's dtype and
compile choice), `measure`, `go` (the settled Settings), `unit` (a unit to score), `stop`.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from virnucpro.regions import RegionParams


@dataclass(frozen=True)
class Render:
    """How a worker turns scores into output rows: the run's calls and chunking."""

    chunk_size: int
    threshold: float
    regions: RegionParams = field(default_factory=RegionParams)
    save_embeddings: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """What the parent gives a worker, as plain data (it crosses process boundaries)."""

    dnabert_dir: str
    esm_dir: str
    classifier_path: str | None  # None: embed only (training); features are returned
    device: str  # "cpu" | "cuda:N" (in a Ray actor: the actor's own device)
    threads: int
    save_embeddings: bool = False
    share: int = 1  # workers on this device: they split its free memory
    render: Render | None = None  # predict: how to render rows; None: return scores only
    log_level: int = 30  # the parent's logging level (WARNING)
    # A local worker saves each unit it scores there (`units.save_unit`), sparing the parent
    # the file work; None (a Ray actor, maybe on another machine): the parent saves it.
    units_home: str | None = None


@dataclass(frozen=True)
class Settings:
    """How a run computes: one dtype and one set of batch budgets for every worker, so the
    numbers do not depend on which worker scored a unit."""

    dtype: str  # "fp32" | "bf16" | "fp16"
    dnabert_budget: int
    esm_budget: int
    compile: bool = False  # encoder layers through torch.compile (runtime/compile.py)


@dataclass(frozen=True)
class Request:
    """What the user asked for that the workers settle: `None` budgets mean "auto"."""

    precision: str = "auto"
    dnabert_budget: int | None = None
    esm_budget: int | None = None
    device: str = "auto"  # as asked; the Ray engine places its actors by it
    workers: int | None = None
    threads: int | None = None
    compile: bool | None = None  # None: on CUDA devices only


@dataclass(frozen=True)
class Plan:
    """What a run settled: its Settings, and each worker's device and proposal."""

    settings: Settings
    threads: int
    workers: tuple[dict[str, Any], ...]

    def record(self) -> dict[str, Any]:
        """As state.json and run.json keep it (`plan_from_record` reads it back)."""
        return {**asdict(self.settings), "threads": self.threads, "workers": list(self.workers)}


def plan_from_record(record: dict[str, Any] | None) -> Plan | None:
    """The plan an earlier run recorded, or None."""
    if not record:
        return None
    try:
        settings = Settings(str(record["dtype"]), int(record["dnabert_budget"]),
                            int(record["esm_budget"]), bool(record.get("compile", False)))
        return Plan(settings, int(record["threads"]), tuple(record.get("workers", ())))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------ units
@dataclass(frozen=True, slots=True)
class Piece:
    """A whole record, or the part of a long one that covers chunks [first, stop)."""

    id: str
    header: str
    seq: str  # the bases of chunks first..stop-1 (the whole sequence for a whole record)
    length: int  # the whole record's length
    first: int = 0  # index of its first chunk in the record
    stop: int = 0  # one past its last chunk
    offset: int = 0  # where `seq` starts in the record

    @property
    def whole(self) -> bool:
        return self.offset == 0 and len(self.seq) == self.length


@dataclass(frozen=True, slots=True)
class RecordUnit:
    """A predict work unit: consecutive records, or parts of one long record, holding at most
    `--unit-frames` frames (six per chunk). The worker chunks, translates, scores and renders
    them. Whole records usually travel as their input text (`text`, parsed by the worker:
    `reader.parse_text`), else as pieces the parent parsed."""

    index: int
    pieces: tuple[Piece, ...]  # parsed by the parent: the last part of a split record first
    n_chunks: int
    text: bytes = b""  # then whole records of `source` as in the input (FASTA or FASTQ)
    fasta: bool = True
    source: str = ""
    first: int = 0  # the number of the text's first record in its file
    bases: int = 0  # bases the text holds

    @property
    def work(self) -> int:
        """What the progress display counts: chunks."""
        return self.n_chunks

    @property
    def cost(self) -> int:
        """Bases: a proxy for compute, used to balance shards."""
        return sum(len(p.seq) for p in self.pieces) + self.bases

    def key(self) -> str:
        """Names the unit's content, to check a saved unit against the input."""
        keys = []
        if self.pieces:
            first, last = self.pieces[0], self.pieces[-1]
            keys.append(f"{len(self.pieces)}:{first.id}:{first.first}:{last.id}:{last.stop}:"
                        f"{sum(len(p.seq) for p in self.pieces)}")
        if self.text:
            keys.append(f"text:{self.first}:{len(self.text)}:{self.n_chunks}:{self.bases}:"
                        f"{zlib.crc32(self.text):08x}")
        return "|".join(keys)


@dataclass(frozen=True)
class UnitResult:
    index: int
    scores: np.ndarray  # [n_frames, 2] float32 softmax (others, virus); [n, 0] if embed-only
    embeddings: np.ndarray | None  # [n_frames, dnabert_dim + esm_dim] float32, if asked
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    worker: str = ""  # the device that scored it; "" when loaded from an earlier run
    peak_memory: int | None = None  # bytes the device's allocator peaked at so far (CUDA)
    rendered: Any = None  # render.Rendered of a RecordUnit: the unit's output rows
    saved: bytes | None = None  # the unit's file as `units.save_unit` writes it (a worker's)
    stored: bool = False  # the worker saved it already (its spec's `units_home`)

    @property
    def n_frames(self) -> int:
        return len(self.scores)


def empty_result(index: int) -> UnitResult:
    """The result of a unit without frames: no model needs to run."""
    return UnitResult(index, np.zeros((0, 2), np.float32), None)


# ------------------------------------------------------------------ the channel
class Channel:
    """Two pipe ends: messages are read from one and written to the other."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._in = Connection(read_fd, writable=False)
        self._out = Connection(write_fd, readable=False)

    def send(self, kind: str, payload: Any = None) -> None:
        self._out.send((kind, payload))

    def recv(self) -> tuple[str, Any]:
        """The next message; EOFError when the other side has gone."""
        return self._in.recv()

    def close_sending(self) -> None:
        """Close the write end: the other side reads EOF once it has read what was sent."""
        self._out.close()

    def close_receiving(self) -> None:
        self._in.close()

    def close(self) -> None:
        self.close_sending()
        self.close_receiving()


def expect(message: tuple[str, Any], kind: str) -> Any:
    """The payload of a message that must be `kind`."""
    got, payload = message
    if got != kind:
        raise RuntimeError(f"worker protocol: expected {kind!r}, got {got!r}")
    return payload
