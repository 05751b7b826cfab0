"""Chunking and six-frame translation, exactly as VirNucPro does them (SPEC §2–3). Pure: no files.

Translation is vectorised with numpy over batches of many chunks: the chunks of a batch are laid
out as rows of a 2-D array of base codes, every codon position is looked up in small tables at
once, and only the frames that survive (stop-free, non-empty) are turned back into strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from virnucpro.reader import Record

__all__ = [
    "FRAME_NAMES",
    "GENETIC_CODE",
    "SKIP_EMPTY",
    "SKIP_NO_FRAME",
    "Chunk",
    "Frame",
    "RecordFrames",
    "Skip",
    "chunk_bounds",
    "chunk_record",
    "iter_record_frames",
    "n_chunks",
    "piece_frames",
    "translate_six_frames",
]

SKIP_EMPTY = "empty"  # a sequence of length 0 (the original crashes on it)
SKIP_NO_FRAME = "no_stop_free_frame"  # a chunk none of whose six frames is kept
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
DEFAULT_BATCH_BASES = 1 << 20  # bases translated per numpy batch: bounds the working memory

_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
GENETIC_CODE: dict[str, str] = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for (i, a), (j, b), (k, c) in product(enumerate("TCAG"), repeat=3)
}
# The original complements A, C, G, T only; other characters stay as they are.
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a record. `index` is 0-based; the id carries index + 1."""

    id: str
    parent_id: str
    index: int
    start: int
    end: int
    seq: str  # in the input's case


@dataclass(frozen=True, slots=True)
class Frame:
    """A kept reading frame of a chunk: id is `{chunk_id}{name}`."""

    id: str
    chunk_id: str
    name: str  # 'F1'..'F3', 'R1'..'R3'
    nucleotide: str  # upper case, one base longer than the translated region (as the original)
    protein: str


@dataclass(frozen=True, slots=True)
class Skip:
    """A sequence or chunk that yields no frame, and why."""

    id: str
    kind: str  # 'sequence' or 'chunk'
    reason: str  # SKIP_EMPTY or SKIP_NO_FRAME


@dataclass(frozen=True, slots=True)
class RecordFrames:
    """A record, its chunks, the kept frames of each chunk (F1..R3 order) and what was skipped."""

    record: Record
    chunks: list[Chunk]
    frames: list[list[Frame]]  # parallel to `chunks`
    skipped: list[Skip]


# ------------------------------------------------------------------------------ chunking
def n_chunks(length: int, chunk_size: int) -> int:
    """How many chunks a sequence of `length` is cut into."""
    return -(-length // chunk_size) if length > 0 else 0


def chunk_edges(length: int, chunk_size: int, first: int = 0,
                stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Half-open [start, end) of chunks first..stop-1 (default: all) of a sequence of
    `length` (SPEC §2), as two int64 arrays: a multi-Mbp record's thousands of chunks
    without a tuple each."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    n = n_chunks(length, chunk_size)
    j = np.arange(first, n if stop is None else min(stop, n), dtype=np.int64)
    if n <= 1:
        return np.zeros(len(j), np.int64), np.full(len(j), length, np.int64)
    overlap = n * chunk_size - length
    lo = overlap // n  # the original's int(overlap / n): equal for any realistic length
    need = overlap - lo * (n - 1)  # quirk: not `overlap % n`; shifts `lo + 1` for j < need
    # Chunk j starts after j steps of chunk_size - lo, the first `need` of them one shorter.
    starts = j * (chunk_size - lo) - np.minimum(j, need)
    return starts, np.minimum(starts + chunk_size, length)


def chunk_bounds(length: int, chunk_size: int, first: int = 0,
                 stop: int | None = None) -> list[tuple[int, int]]:
    """`chunk_edges` as (start, end) pairs."""
    starts, ends = chunk_edges(length, chunk_size, first, stop)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def chunk_record(record: Record, chunk_size: int) -> list[Chunk]:
    """The chunks of one record, ids `{id}_chunk_{k+1}`."""
    rid, seq = record.id, record.seq
    if 0 < len(seq) <= chunk_size:  # the common case of reads and short contigs, made cheap
        return [Chunk(rid + "_chunk_1", rid, 0, 0, len(seq), seq)]
    return [
        Chunk(f"{rid}_chunk_{k + 1}", rid, k, start, end, seq[start:end])
        for k, (start, end) in enumerate(chunk_bounds(len(seq), chunk_size))
    ]


# --------------------------------------------------------------------------- translation
# Bases are coded A=0 C=1 G=2 T=3, anything else 4 (case-insensitive: chunks are upper-cased
# before translation in the original). A codon's index is 25*b0 + 5*b1 + b2 (125 values).
_CODE = np.full(256, 4, np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _CODE[_b | 0x20] = _i
_VALID, _STOP_FWD, _STOP_REV = 1, 2, 4


def _codon_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per codon index: its amino acid, that of its reverse complement (0 = no amino acid: the
    codon holds a non-ACGT base and is dropped), and VALID/STOP flag bits."""
    fwd, rev, flags = (np.zeros(125, np.uint8) for _ in range(3))
    for a, b, c in product(range(4), repeat=3):
        codon = "ACGT"[a] + "ACGT"[b] + "ACGT"[c]
        aa, aa_rc = GENETIC_CODE[codon], GENETIC_CODE[codon.translate(_COMPLEMENT)[::-1]]
        i = 25 * a + 5 * b + c
        fwd[i], rev[i] = ord(aa), ord(aa_rc)
        flags[i] = _VALID | (_STOP_FWD if aa == "*" else 0) | (_STOP_REV if aa_rc == "*" else 0)
    return fwd, rev, flags


_AA_FWD, _AA_REV, _FLAGS = _codon_tables()

# Kept frames of one batch: row -> [(slot 0..5, nucleotide, protein), ...] in slot order.
_Kept = dict[int, list[tuple[int, str, str]]]


def translate_six_frames(seqs: Sequence[str]) -> list[list[tuple[str, str, str]]]:
    """For each sequence (one chunk), its kept frames as (name, nucleotide, protein)."""
    kept = _translate_batch(seqs)
    return [[(FRAME_NAMES[s], nuc, prot) for s, nuc, prot in kept.get(i, ())]
            for i in range(len(seqs))]


def _translate_batch(seqs: Sequence[str]) -> _Kept:
    """Kept frames of many chunks. Chunks are grouped by the bit length of their length so
    that padding every row to the longest one wastes at most half the array."""
    if not seqs:
        return {}
    lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
    buckets = np.frexp(lengths.astype(np.float64))[1]  # == int.bit_length for lengths > 0
    if buckets.min() == buckets.max():
        return _translate_bucket(seqs, lengths)
    kept: _Kept = {}
    for bucket in np.unique(buckets):
        rows = np.flatnonzero(buckets == bucket)
        sub = _translate_bucket([seqs[i] for i in rows.tolist()], lengths[rows])
        kept.update((int(rows[i]), items) for i, items in sub.items())
    return kept


def _translate_bucket(seqs: Sequence[str], lengths: np.ndarray) -> _Kept:
    width = int(lengths.max())
    if width < 3:
        return {}
    grid = _code_grid(seqs, lengths)
    # Codon index at every position j of every row: shape (n, 3m), column class j % 3.
    idx = grid[:, :-2] * 25
    idx += grid[:, 1:-1] * 5
    idx += grid[:, 2:]
    n, cols = idx.shape
    flags = np.take(_FLAGS, idx).reshape(n, cols // 3, 3).transpose(0, 2, 1)
    by_class = np.bitwise_or.reduce(np.ascontiguousarray(flags), axis=2)  # (n, 3)
    keep = np.empty((n, 6), bool)
    keep[:, :3] = (by_class & (_VALID | _STOP_FWD)) == _VALID
    rev_ok = (by_class & (_VALID | _STOP_REV)) == _VALID
    rev_class = _reverse_classes(lengths)
    keep[:, 3:] = np.take_along_axis(rev_ok, rev_class, axis=1)
    if not keep.any():
        return {}
    return _kept_frames(seqs, idx, keep, rev_class)


def _code_grid(seqs: Sequence[str], lengths: np.ndarray) -> np.ndarray:
    """Rows of base codes, padded with 4 (an invalid base) to a width of 3m + 2."""
    n, width = len(seqs), int(lengths.max())
    padded = 3 * -(-(width - 2) // 3) + 2
    # 'replace' keeps one byte per character, so offsets stay right even for odd input.
    raw = np.frombuffer("".join(seqs).encode("ascii", "replace"), np.uint8)
    codes = np.take(_CODE, raw)
    if lengths.min() == width == padded:
        return codes.reshape(n, width)
    grid = np.full((n, padded), 4, np.uint8)
    if lengths.min() == width:
        grid[:, :width] = codes.reshape(n, width)
    else:
        grid[np.arange(padded) < lengths[:, None]] = codes
    return grid


def _reverse_classes(lengths: np.ndarray) -> np.ndarray:
    """For R1..R3 of each row, the forward codon-position class (q % 3) it reads.

    Reverse frame g reads rc[g-1+3i : g+2+3i], the reverse complement of the forward codon at
    q = L-2-g-3i. So its codons are the forward positions q ≡ L-2-g (mod 3), read backwards."""
    g = np.arange(1, 4)
    return (lengths[:, None] - 2 - g[None, :]) % 3


def _kept_frames(seqs: Sequence[str], idx: np.ndarray, keep: np.ndarray,
                 rev_class: np.ndarray) -> _Kept:
    """Turn kept frames into strings, a few numpy calls per frame slot and codon class."""
    kept: _Kept = {}
    rc_cache: dict[int, str] = {}
    for slot in range(6):
        rows = np.flatnonzero(keep[:, slot])
        if not rows.size:
            continue
        classes = np.full(rows.size, slot) if slot < 3 else rev_class[rows, slot - 3]
        for cls in np.unique(classes).tolist():
            sel = rows[classes == cls]
            proteins = _proteins(idx[sel, cls::3], reverse=slot >= 3)
            for row, protein in zip(sel.tolist(), proteins, strict=True):
                nucleotide = _nucleotide(seqs[row], slot, len(protein), row, rc_cache)
                kept.setdefault(row, []).append((slot, nucleotide, protein))
    return kept


def _proteins(codons: np.ndarray, *, reverse: bool) -> list[str]:
    """Translate rows of codon indices, dropping codons with a non-ACGT base."""
    # A reverse frame reads its codons from the highest forward position down.
    aa = np.take(_AA_REV, codons)[:, ::-1] if reverse else np.take(_AA_FWD, codons)
    present = aa != 0
    text = aa[present].tobytes().decode("ascii")
    ends = np.cumsum(np.count_nonzero(present, axis=1)).tolist()
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _nucleotide(seq: str, slot: int, p: int, row: int, rc_cache: dict[int, str]) -> str:
    """The original's slice, one base longer than the 3p translated bases (a known quirk)."""
    if slot < 3:
        return seq[slot: slot + 3 * p + 1].upper()
    rc = rc_cache.get(row)
    if rc is None:
        rc = rc_cache[row] = seq.upper().translate(_COMPLEMENT)[::-1]
    g = slot - 2
    return rc[g - 1: g + 3 * p]


# ------------------------------------------------------------------------------ streaming
def piece_frames(pieces: Sequence[Any], chunk_size: int) -> list[RecordFrames]:
    """Chunk and translate the pieces of a work unit (`runtime.protocol.Piece`: whole records
    or parts of long ones), with the chunk ids and coordinates of the whole record."""
    records: list[Record] = []
    chunk_lists: list[list[Chunk]] = []
    for p in pieces:
        record = Record(p.id, p.header, p.seq, "")
        records.append(record)
        if p.whole:
            chunk_lists.append(chunk_record(record, chunk_size))
            continue
        bounds = chunk_bounds(p.length, chunk_size, p.first, p.stop)
        chunk_lists.append([Chunk(f"{p.id}_chunk_{k + 1}", p.id, k, start, end,
                                  p.seq[start - p.offset:end - p.offset])
                            for k, (start, end) in enumerate(bounds, p.first)])
    return list(_finish(records, chunk_lists, max(1, DEFAULT_BATCH_BASES // chunk_size)))



def iter_record_frames(records: Iterable[Record], chunk_size: int, *,
                       batch_bases: int = DEFAULT_BATCH_BASES) -> Iterator[RecordFrames]:
    """Chunk and translate records, in input order, holding about `batch_bases` at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    step = max(1, batch_bases // chunk_size)  # chunks per numpy batch: splits long records
    waiting: list[Record] = []
    chunk_lists: list[list[Chunk]] = []
    bases = 0
    for record in records:
        waiting.append(record)
        chunk_lists.append(chunk_record(record, chunk_size))
        bases += len(record.seq)
        if bases >= batch_bases:
            yield from _finish(waiting, chunk_lists, step)
            waiting, chunk_lists, bases = [], [], 0
    yield from _finish(waiting, chunk_lists, step)


def _finish(records: list[Record], chunk_lists: list[list[Chunk]],
            step: int) -> Iterator[RecordFrames]:
    """Translate the chunks of `records`, `step` chunks per numpy batch, and yield results."""
    seqs = [chunk.seq for chunks in chunk_lists for chunk in chunks]
    kept: _Kept = {}
    for first in range(0, len(seqs), step):
        part = _translate_batch(seqs[first: first + step])
        kept.update((first + i, items) for i, items in part.items())
    kept_items = kept.get
    position = 0
    for record, chunks in zip(records, chunk_lists, strict=True):
        frames: list[list[Frame]] = []
        skipped = [] if chunks else [Skip(record.id, "sequence", SKIP_EMPTY)]
        for chunk in chunks:
            items = kept_items(position)
            position += 1
            if items is None:
                frames.append([])
                skipped.append(Skip(chunk.id, "chunk", SKIP_NO_FRAME))
            else:
                frames.append([Frame(chunk.id + FRAME_NAMES[slot], chunk.id, FRAME_NAMES[slot],
                                     nucleotide, protein) for slot, nucleotide, protein in items])
        yield RecordFrames(record, chunks, frames, skipped)
