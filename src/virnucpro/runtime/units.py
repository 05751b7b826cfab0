"""The work units of a run: the stream that makes them, shard selection, and saved results.

Units come from the inputs by a fixed rule (`UnitStream`), so the same inputs and
`--unit-frames` always give the same units with the same indexes: a resumed run, a shard and
`merge` all rebuild them. Every scored unit is saved (`save_unit`) as `units/NNNNNN.npz`:
frame ids, scores and, when the run keeps them, the features; `NNNNNN.npz.sha256` beside it
holds the digest of its bytes, checked before the unit is reused.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from virnucpro.errors import OutputError
from virnucpro.files import digest_path, digest_problem, os_error, write_digest
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.reader import ReadStats, read_records
from virnucpro.runtime.batching import WorkUnit, iter_units
from virnucpro.runtime.worker import UnitResult

log = logging.getLogger(__name__)
T = TypeVar("T")
UNITS_DIR = "units"


@dataclass(frozen=True)
class UnitStream:
    """The work units of a run, optionally only one shard's, with their records.

    Plain data, so it can be iterated again (merge) or elsewhere (a Ray task)."""

    inputs: tuple[str, ...]
    chunk_size: int
    unit_frames: int
    shard: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[tuple[WorkUnit, list[RecordFrames]]]:
        return self.units()

    def units(self, stats: ReadStats | None = None,
              ) -> Iterator[tuple[WorkUnit, list[RecordFrames]]]:
        """The units; `stats` follows the reader (bytes read, RNA records)."""
        records = iter_record_frames(read_records(list(self.inputs), stats), self.chunk_size)
        units = iter_units(records, self.unit_frames)
        return units if self.shard is None else select_shard(units, self.shard)


class Balancer:
    """Gives each unit, in order, to the shard with the least work so far (the lowest
    number on ties). Deterministic, and balanced by residues + bases, not by unit count."""

    def __init__(self, count: int) -> None:
        self._heap = [(0, k) for k in range(1, count + 1)]  # (work so far, shard): a heap

    def assign(self, cost: int) -> int:
        load, shard = self._heap[0]
        heapq.heapreplace(self._heap, (load + cost, shard))
        return shard


def select_shard(units: Iterable[tuple[WorkUnit, T]], shard: tuple[int, int],
                 ) -> Iterator[tuple[WorkUnit, T]]:
    """The units of shard I of N; the others are read and dropped without scoring."""
    index, count = shard
    balancer = Balancer(count)
    for unit, payload in units:
        if balancer.assign(unit.cost) == index:
            yield unit, payload


# ------------------------------------------------------------------ saved units
def unit_path(home: Path, index: int) -> Path:
    return Path(home) / UNITS_DIR / f"{index:06d}.npz"


def save_unit(home: Path, unit: WorkUnit, result: UnitResult) -> None:
    arrays: dict[str, np.ndarray] = {"scores": result.scores,
                                     "frame_ids": np.array(unit.frame_ids, dtype=str)}
    if result.embeddings is not None:
        arrays["features"] = result.embeddings
    path = unit_path(home, unit.index)
    # Written under a hidden name that the `[0-9]*.npz` scan for finished units cannot
    # match, then renamed: a run killed mid-write leaves no unit that looks finished.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        digest_path(path).unlink(missing_ok=True)  # a rescored unit: its old digest goes
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(path, exc) from None
    # The digest of the file's bytes, whatever they hold, written after it: a unit counts
    # as done only when its digest matches (`finished_units`, `load_unit`).
    write_digest(path)


class UnitDamaged(OutputError):
    """A saved unit whose bytes no longer match the digest recorded when it was saved."""


def unit_problem(home: Path, index: int) -> str | None:
    """None when the saved unit `index` is whole; else one line naming its file."""
    path = unit_path(home, index)
    problem = digest_problem(path)
    return None if problem is None else f"{path}: {problem}"


def finished_units(home: Path) -> set[int]:
    """Indexes of the units saved in `home` by `save_unit` whose bytes match their digest (a
    resumed run reuses them); a damaged one is named in the log, and scored again."""
    done = set()
    for p in (Path(home) / UNITS_DIR).glob("[0-9]*.npz"):
        index = int(p.name.split(".")[0])
        problem = unit_problem(home, index)
        if problem is None:
            done.add(index)
        elif digest_path(p).exists():  # no digest yet: a run was killed as it saved this one
            log.warning("%s; this unit is scored again", problem)
    return done


def load_unit(home: Path, unit: WorkUnit, *, need_features: bool = False) -> UnitResult:
    """A saved unit's result; its bytes must match their digest (else `UnitDamaged`), its
    frames the unit's (and its features must be there, when the run keeps them)."""
    path = unit_path(home, unit.index)
    problem = unit_problem(home, unit.index)
    if problem is not None:
        raise UnitDamaged(problem)
    with np.load(path) as z:
        if tuple(z["frame_ids"]) != unit.frame_ids:
            raise OutputError(f"{path}: saved frames differ from the input; rerun with --force")
        features = z["features"] if "features" in z.files else None
        if need_features and features is None:
            raise OutputError(f"{path}: saved without features; rerun with --force")
        return UnitResult(unit.index, z["scores"], features)
