"""Which frames `virnucpro train` learns from: frames inside known CDS proteins (optional,
as the original's training set), then the classes balanced by a seeded down-sampling."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from virnucpro.errors import InputError
from virnucpro.fit import OTHER, VIRUS
from virnucpro.frames import RecordFrames


# ------------------------------------------------------------------ known CDS proteins
class CdsIndex:
    """Answers "is this protein inside some known CDS protein?" without scanning them all.

    Every K-mer starting at a multiple of STEP in each CDS protein is indexed. A query of at
    least K + STEP - 1 residues that occurs in a protein covers one of those K-mers at an
    offset below STEP, so trying its first STEP K-mers finds every candidate; shorter
    queries fall back to one scan of all proteins.
    """

    K, STEP = 8, 8

    def __init__(self, proteins: Iterable[str]) -> None:
        self.proteins = sorted({p.upper().rstrip("*") for p in proteins} - {""})
        self.index: dict[str, list[int]] = {}
        for i, p in enumerate(self.proteins):
            for s in range(0, len(p) - self.K + 1, self.STEP):
                hits = self.index.setdefault(p[s:s + self.K], [])
                if not hits or hits[-1] != i:
                    hits.append(i)
        self._joined = "\n".join(self.proteins)  # no protein holds '\n'

    def __len__(self) -> int:
        return len(self.proteins)

    def __contains__(self, query: object) -> bool:
        if not isinstance(query, str) or not query:
            return False
        if len(query) < self.K + self.STEP - 1:
            return query in self._joined
        proteins = self.proteins
        return any(query in proteins[i] for off in range(self.STEP)
                   for i in self.index.get(query[off:off + self.K], ()))


def read_cds_proteins(paths: Sequence[str]) -> CdsIndex:
    """The proteins of FASTA files (plain or gzip); a trailing '*' is dropped."""
    import dnaio

    proteins: list[str] = []
    for path in paths:
        try:
            with dnaio.open(path) as reader:
                proteins.extend(rec.sequence for rec in reader)
        except (OSError, UnicodeDecodeError, dnaio.exceptions.UnknownFileFormat,
                dnaio.exceptions.FileFormatError) as exc:
            raise InputError(f"{path}: cannot read CDS proteins ({exc})") from None
    index = CdsIndex(proteins)
    if not len(index):
        raise InputError(f"{', '.join(paths)}: no protein records found")
    return index


# ------------------------------------------------------------------ selecting frames


# ------------------------------------------------------------------ selecting frames
@dataclass(frozen=True)
class Selection:
    keep: np.ndarray  # bool per frame, in input order: the frames to train on
    counts: dict[str, dict[str, int]]  # frames per class: all, in a CDS, used


def select_frames(records: Iterable[tuple[RecordFrames, int]], cds: CdsIndex | None,
                  seed: int) -> Selection:
    """Keep-flags: frames inside a known CDS protein (when given), then classes balanced by
    down-sampling the larger one (a seeded random choice)."""
    kept, classes = bytearray(), bytearray()
    for rf, label in records:
        for frames in rf.frames:
            for f in frames:
                kept.append(cds is None or f.protein in cds)
                classes.append(label)
    keep = np.frombuffer(bytes(kept), np.uint8).astype(bool)
    cls = np.frombuffer(bytes(classes), np.uint8)
    idx = {c: np.flatnonzero(keep & (cls == c)) for c in (VIRUS, OTHER)}
    names = {VIRUS: "viral", OTHER: "other"}
    for c, where in idx.items():
        if not where.size:
            why = " inside a --cds-proteins protein" if cds is not None else ""
            raise InputError(f"no {names[c]} frame{why} to train on")
    n = min(len(v) for v in idx.values())
    rng = np.random.default_rng(seed)
    for where in idx.values():
        keep[rng.choice(where, size=len(where) - n, replace=False)] = False
    counts = {
        "all": {names[c]: int(np.sum(cls == c)) for c in (VIRUS, OTHER)},
        "in_cds": {names[c]: len(v) for c, v in idx.items()} if cds is not None else {},
        "used": {names[c]: n for c in (VIRUS, OTHER)},
    }
    return Selection(keep, counts)


def kept_records(records: Iterable[tuple[RecordFrames, int]],
                 keep: np.ndarray) -> Iterator[RecordFrames]:
    """The records again, each with only its kept frames; records left empty are dropped."""
    i = 0
    flags = keep.tolist()
    changed = InputError("the inputs changed while train was reading them")
    for rf, _ in records:
        frames = []
        for fs in rf.frames:
            if i + len(fs) > len(flags):
                raise changed
            frames.append([f for j, f in enumerate(fs, i) if flags[j]])
            i += len(fs)
        if any(frames):
            yield RecordFrames(rf.record, rf.chunks, frames, rf.skipped)
    if i != len(flags):
        raise changed
