"""The work units of a run: the stream that makes them, shard selection, and saved results.

Units come from the inputs by a fixed rule (`UnitStream`), so the same inputs and
`--unit-frames` always give the same units with the same indexes: a resumed run, a shard and
`merge` all rebuild them. The parent only groups records: a unit holds whole records of at
most `--unit-frames` / 6 chunks in all (six frames a chunk at most), and a record with more
chunks than that is cut at chunk boundaries into parts that fill units of their own, its
last part opening the next unit. Records come in scanned blocks (`reader.read_blocks`), so a
unit of whole records is a slice of the input's text that the worker parses; records the
reader parsed one by one (stdin's, and text a block scan does not take) travel as pieces and
never share a unit with text. Chunking and translation happen in the workers. Every scored
unit is saved (`save_unit`) as `units/NNNNNN.npz` (scores, rendered rows and, when the run
keeps them, the features), its bytes made by the worker (`unit_file`), and written by it too
when it is a local process (a Ray actor's, by the driver); `NNNNNN.npz.sha256` beside it
holds the digest of its bytes, checked before the unit is reused.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from virnucpro.blocks import Scan
from virnucpro.errors import OutputError
from virnucpro.files import digest_path, digest_problem, os_error, write_digest
from virnucpro.frames import chunk_bounds, n_chunks
from virnucpro.reader import ReadStats, Record, parse_text, read_blocks
from virnucpro.runtime.protocol import Piece, RecordUnit, UnitResult

log = logging.getLogger(__name__)
T = TypeVar("T")
UNITS_DIR = "units"
FRAMES_PER_CHUNK = 6  # at most: a unit of --unit-frames frames holds a sixth as many chunks


@dataclass(frozen=True)
class UnitStream:
    """The work units of a run, optionally only one shard's, each with the record it holds
    a part of (None when it holds whole records only).

    Plain data, so it can be iterated again (merge) or elsewhere (a Ray task)."""

    inputs: tuple[str, ...]
    chunk_size: int
    unit_frames: int
    shard: tuple[int, int] | None = None
    ids_checked: bool = False  # every input is a regular file whose ids were checked

    def __iter__(self) -> Iterator[tuple[RecordUnit, Record | None]]:
        return self.units()

    def units(self, stats: ReadStats | None = None,
              ) -> Iterator[tuple[RecordUnit, Record | None]]:
        """The units; `stats` follows the reader (bytes read, RNA records)."""
        items = read_blocks(list(self.inputs), stats, self.ids_checked)
        units = record_units(items, self.chunk_size, self.unit_frames)
        return units if self.shard is None else select_shard(units, self.shard)


def unit_chunks(unit_frames: int) -> int:
    """The most chunks one unit holds."""
    return max(1, unit_frames // FRAMES_PER_CHUNK)


def whole_piece(rec: Record, chunk_size: int) -> Piece:
    """A whole record as a unit holds it."""
    return Piece(rec.id, rec.header, rec.seq, len(rec.seq), 0, n_chunks(len(rec.seq), chunk_size))


def text_pieces(unit: RecordUnit, chunk_size: int) -> tuple[Piece, ...]:
    """The pieces of a unit: those it holds, then the records of its text (in a worker)."""
    if not unit.text:
        return unit.pieces
    return unit.pieces + tuple(whole_piece(rec, chunk_size) for rec in
                               parse_text(unit.text, unit.fasta, unit.source, unit.first))


def record_units(items: Iterable[Record | Scan], chunk_size: int, unit_frames: int,
                 ) -> Iterator[tuple[RecordUnit, Record | None]]:
    """Group consecutive records (parsed ones, or the records of scanned blocks) into units
    of at most `unit_chunks(unit_frames)` chunks; longer records are cut into parts (see the
    module note)."""
    packer = _Packer(chunk_size, unit_chunks(unit_frames))
    for item in items:
        yield from (packer.add_scan(item) if isinstance(item, Scan) else packer.add(item))
    yield from packer.flush()


class _Packer:
    """The unit being filled: pieces (the last part of a split record first, then records
    the reader parsed), and a slice of one file's text after them."""

    def __init__(self, chunk_size: int, most: int) -> None:
        self.chunk_size, self.most = chunk_size, most
        self.index = self.count = 0  # the unit's index, and its chunks so far
        self.pieces: list[Piece] = []
        self.held: Record | None = None  # the split record whose last part is in `pieces`
        self.text: list[bytes] = []
        self.where: tuple[str, bool, int] = ("", True, 0)  # the text's file, format, first
        self.bases = 0  # in the text
        # (file, format, record number) of the one record of a block that may join the unit
        self.follow: tuple[str, bool, int] | None = None

    def flush(self) -> Iterator[tuple[RecordUnit, Record | None]]:
        if self.pieces or self.text:
            source, fasta, first = self.where
            yield RecordUnit(self.index, tuple(self.pieces), self.count, b"".join(self.text),
                             fasta, source, first, self.bases), self.held
            self.index += 1
        self.count, self.pieces, self.held, self.text, self.follow = 0, [], None, [], None
        self.bases = 0

    def add(self, rec: Record) -> Iterator[tuple[RecordUnit, Record | None]]:
        """A record the reader parsed."""
        n = n_chunks(len(rec.seq), self.chunk_size)
        if n > self.most:
            yield from self._split(rec, n)
            return
        if self.text or self.count + n > self.most:
            yield from self.flush()
        self.pieces.append(Piece(rec.id, rec.header, rec.seq, len(rec.seq), 0, n))
        self.count, self.follow = self.count + n, None

    def _split(self, rec: Record, n: int) -> Iterator[tuple[RecordUnit, Record | None]]:
        """Cut `rec` into parts of whole units; its last part opens the next unit."""
        yield from self.flush()
        for first in range(0, n, self.most):
            stop = min(first + self.most, n)
            (start, _), = chunk_bounds(len(rec.seq), self.chunk_size, first, first + 1)
            (_, end), = chunk_bounds(len(rec.seq), self.chunk_size, stop - 1, stop)
            self.pieces, self.held, self.count = [Piece(
                rec.id, rec.header, rec.seq[start:end], len(rec.seq), first, stop, start)], rec, \
                stop - first
            if stop < n:
                yield from self.flush()

    def add_scan(self, block: Scan) -> Iterator[tuple[RecordUnit, Record | None]]:
        """The records of a scanned block: slices of its text, whole units at a time."""
        chunks = -(-block.lengths // self.chunk_size)
        total = np.concatenate(([0], np.cumsum(chunks)))
        long = np.flatnonzero(chunks > self.most)
        i, n = 0, len(block)
        while i < n:
            here = (block.source, block.fasta, block.first + i)
            if chunks[i] > self.most:  # parsed here, to be cut into parts
                rec = _long_record(block, i)
                yield from self._split(rec, int(chunks[i]))
                self.follow, i = (block.source, block.fasta, block.first + i + 1), i + 1
                continue
            if (self.pieces or self.text) and self.follow != here:
                yield from self.flush()  # text joins only the record right before it
            stop = long[np.searchsorted(long, i)] if len(long) and long[-1] > i else n
            j = min(stop, int(np.searchsorted(total, total[i] + self.most - self.count,
                                              side="right")) - 1)
            if j <= i:  # record i does not fit: it opens the next unit
                yield from self.flush()
                continue
            if not self.text:
                self.where = here
            self.text.append(block.data[block.starts[i]:block.starts[j]])
            self.bases += int(block.lengths[i:j].sum())
            self.count += int(total[j] - total[i])
            self.follow, i = (block.source, block.fasta, block.first + j), j


def _long_record(block: Scan, i: int) -> Record:
    """Record `i` of `block`, read in the parent to be cut into parts."""
    header, seq = block.plain_record(i)
    return Record(id=header.split(maxsplit=1)[0], header=header, seq=seq, source=block.source)


class Balancer:
    """Gives each unit, in order, to the shard with the least work so far (the lowest
    number on ties). Deterministic, and balanced by bases, not by unit count."""

    def __init__(self, count: int) -> None:
        self._heap = [(0, k) for k in range(1, count + 1)]  # (work so far, shard): a heap

    def assign(self, cost: int) -> int:
        load, shard = self._heap[0]
        heapq.heapreplace(self._heap, (load + cost, shard))
        return shard


def select_shard(units: Iterable[tuple[Any, T]], shard: tuple[int, int],
                 ) -> Iterator[tuple[Any, T]]:
    """The units of shard I of N; the others are read and dropped without scoring."""
    index, count = shard
    balancer = Balancer(count)
    for unit, payload in units:
        if balancer.assign(unit.cost) == index:
            yield unit, payload


# ------------------------------------------------------------------ saved units
def unit_path(home: Path, index: int) -> Path:
    return Path(home) / UNITS_DIR / f"{index:06d}.npz"


def _key(unit: Any) -> str:
    """What a saved unit must match: a record unit's key, or a frame unit's frame ids."""
    return unit.key() if isinstance(unit, RecordUnit) else "\n".join(unit.frame_ids)


def unit_file(unit: Any, result: UnitResult) -> bytes:
    """The bytes of a scored unit's file: its key, scores, rendered rows, and features when
    the run keeps them. Made where the unit was scored (the parent only writes them)."""
    arrays: dict[str, np.ndarray] = {"scores": result.scores, "key": np.array(_key(unit))}
    if result.rendered is not None:
        # UTF-8 bytes: a numpy str array would hold four bytes a character.
        arrays["rendered"] = np.frombuffer(result.rendered.to_json().encode(), np.uint8)
    if result.embeddings is not None:
        arrays["features"] = result.embeddings
        ids = unit.frame_ids if result.rendered is None else result.rendered.frame_ids
        arrays["frame_ids"] = np.array(ids, dtype=str)  # the rows of the features
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def save_unit(home: Path, unit: Any, result: UnitResult) -> None:
    """Save a scored unit (a RecordUnit with its rendered rows, or a frame unit with its
    scores), so that a resumed run, or merge, reuses it."""
    data = result.saved if result.saved is not None else unit_file(unit, result)
    path = unit_path(home, unit.index)
    # Written under a hidden name that the `[0-9]*.npz` scan for finished units cannot
    # match, then renamed: a run killed mid-write leaves no unit that looks finished.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        digest_path(path).unlink(missing_ok=True)  # a rescored unit: its old digest goes
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(path, exc) from None
    # The digest of the file's bytes, whatever they hold, written after it: a unit counts
    # as done only when its digest matches (`finished_units`, `load_unit`).
    write_digest(path, hashlib.sha256(data).hexdigest())


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


def load_unit(home: Path, unit: Any, *, need_features: bool = False) -> UnitResult:
    """A saved unit's result; its bytes must match their digest (else `UnitDamaged`), and it
    must be this unit's (holding features, when the run keeps them)."""
    from virnucpro.render import Rendered

    path = unit_path(home, unit.index)
    problem = unit_problem(home, unit.index)
    if problem is not None:
        raise UnitDamaged(problem)
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != _key(unit):
            raise OutputError(f"{path}: saved frames differ from the input; rerun with --force")
        features = z["features"] if "features" in z.files else None
        if need_features and features is None and len(z["scores"]):
            raise OutputError(f"{path}: saved without features; rerun with --force")
        rendered = (Rendered.from_json(z["rendered"].tobytes().decode())
                    if "rendered" in z.files else None)
        return UnitResult(unit.index, z["scores"], features, rendered=rendered)
