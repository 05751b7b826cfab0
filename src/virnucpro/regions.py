"""Viral regions inside a sequence (a prophage in a host contig) from its chunk scores.

A two-state hidden Markov model (host, virus) walks along the chunks of one sequence, and
the Viterbi path through it gives each chunk a state; each run of virus chunks is a region.

- **Emissions.** A chunk with score s (clipped to [SCORE_CLIP, 1 - SCORE_CLIP]) votes
  log(s / t) for virus and log((1 - s) / (1 - t)) for host, t being the threshold (clipped
  the same way). Read as a calibrated P(virus | chunk) against a 50:50 prior, s / (1 - s) is
  the chunk's likelihood ratio; dividing by t / (1 - t) makes a chunk at the threshold
  neutral, so the model only smooths the calls the threshold makes. The clip bounds how far
  one chunk tips the balance, log(99) = 4.6 nats at t = 0.5, so no single confident chunk
  makes a region (nor, with t above 0.99, does any chunk).
- **no_call chunks** (no stop-free frame, score NaN or None) vote 0 for both states: the
  neighbours decide. Between two virus chunks they join the region; between a region and host
  or a sequence end they stay outside it (ties go to host).
- **Transitions.** Either state moves to the other with `switch_prob` per chunk step; both
  states are equally likely at the first chunk. A region inside a sequence pays two switches
  (2 x 6.9 nats at the default 1e-3), so it needs about three confident chunks.
- **Edges.** A region begins and ends with chunks called virus (score >= threshold): at a
  sequence end the path may keep one host chunk rather than pay a switch, or run on through
  no_call chunks at no cost, and those chunks are trimmed off. So a region never claims
  sequence that was not scored: 100 kb without frames after an island do not join it.
- **Coordinates.** 0-based, end exclusive. Where two chunks in different states overlap (or
  leave a gap), the boundary is the midpoint between the first one's end and the second
  one's start; the regions and the host parts between them tile the sequence.
- **Filters.** A region is kept when its score (the mean score of its scored chunks) is
  >= threshold and, unless it is `whole`, its length is >= `min_region_length`. A region is
  `whole` when it spans the whole sequence. A whole region's score is the sequence's own
  `virus_score`, so it is kept only where the sequence is called virus; a sequence of one
  chunk gets a whole region exactly then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.errors import InputError

__all__ = [
    "REGION_COLUMNS",
    "SCORE_CLIP",
    "Region",
    "RegionParams",
    "find_regions",
    "region_fasta",
    "region_rows",
    "regions_from_chunks_tsv",
    "viterbi",
]

# `regions.tsv`: one row per region. start/end 0-based, end exclusive; score: mean chunk
# score over the region's scored chunks; kind: whole | partial.
REGION_COLUMNS = ("seq_id", "region_id", "start", "end", "length", "n_chunks", "score", "kind")
WHOLE, PARTIAL = "whole", "partial"
SCORE_CLIP = 0.01  # scores and threshold are clipped to [0.01, 0.99] before the logs
_FASTA_WIDTH = 60  # as viral.fna


@dataclass(frozen=True)
class RegionParams:
    """How regions are segmented. Both change results, so both belong in run.json."""

    min_region_length: int = 1000  # bp; shorter partial regions are dropped
    switch_prob: float = 1e-3  # per chunk step; smaller means fewer, longer regions

    def __post_init__(self) -> None:
        if self.min_region_length < 0:
            raise ValueError(f"min_region_length must be >= 0, got {self.min_region_length}")
        if not 0 < self.switch_prob < 0.5:
            raise ValueError(f"switch_prob must be in (0, 0.5), got {self.switch_prob}")


@dataclass(frozen=True)
class Region:
    seq_id: str
    region_id: str  # region_1, region_2, ... along the sequence
    start: int
    end: int
    n_chunks: int
    score: float
    kind: str  # whole | partial

    @property
    def length(self) -> int:
        return self.end - self.start


def _emissions(scores: np.ndarray, threshold: float) -> np.ndarray:
    """[n, 2] log-votes (host, virus) per chunk; 0 for both where the score is NaN."""
    s = np.clip(scores, SCORE_CLIP, 1 - SCORE_CLIP)
    t = min(max(threshold, SCORE_CLIP), 1 - SCORE_CLIP)
    votes = np.stack([np.log((1 - s) / (1 - t)), np.log(s / t)], axis=1)
    votes[np.isnan(scores)] = 0.0
    return votes


def viterbi(votes: np.ndarray, switch_prob: float) -> np.ndarray:
    """The most likely state per chunk (True = virus) given [n, 2] (host, virus) log-votes."""
    stay, switch = math.log1p(-switch_prob), math.log(switch_prob)
    n = len(votes)
    if n == 0:
        return np.zeros(0, bool)
    # came_from[i, k]: the state at chunk i - 1 on the best path into state k at chunk i.
    came_from = np.zeros((n, 2), bool)
    host, virus = float(votes[0, 0]), float(votes[0, 1])
    for i in range(1, n):
        h_from_v = virus + switch > host + stay  # strictly: ties stay host
        v_from_v = virus + stay > host + switch
        came_from[i] = (h_from_v, v_from_v)
        host, virus = (max(host + stay, virus + switch) + float(votes[i, 0]),
                       max(virus + stay, host + switch) + float(votes[i, 1]))
    states = np.zeros(n, bool)
    states[-1] = virus > host
    for i in range(n - 1, 0, -1):
        states[i - 1] = came_from[i, int(states[i])]
    return states


def _runs(states: np.ndarray) -> list[tuple[int, int]]:
    """[first, last + 1) chunk index of each run of True."""
    padded = np.concatenate([[False], states, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _trim(first: int, stop: int, scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """Narrow a run of virus states to begin and end with chunks called virus. Only at a
    sequence end can the path hold other chunks at a run's edge: leaving the virus state
    there costs a switch that one host chunk does not repay, and no_call chunks (no votes)
    never repay it, so a host flank of one chunk or any no_call flank would join the
    region."""
    called = np.flatnonzero(scores[first:stop] >= threshold)  # NaN (no_call) is never called
    if not len(called):
        return first, first  # not reached: a run's votes sum above zero
    return first + int(called[0]), first + int(called[-1]) + 1


def _as_arrays(starts: Sequence[int], ends: Sequence[int],
               scores: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(starts, np.int64)
    e = np.asarray(ends, np.int64)
    x = np.array([np.nan if v is None else v for v in scores], np.float64)
    if not len(s) == len(e) == len(x):
        raise ValueError(f"{len(s)} chunk starts, {len(e)} ends and {len(x)} scores differ")
    if np.any(e <= s) or np.any(s < 0):
        i = int(np.flatnonzero((e <= s) | (s < 0))[0])
        raise ValueError(f"chunk {i}: bad coordinates [{s[i]}, {e[i]})")
    return s, e, x


def find_regions(seq_id: str, seq_length: int, chunk_starts: Sequence[int],
                 chunk_ends: Sequence[int], chunk_scores: Sequence[float | None],
                 threshold: float, params: RegionParams = RegionParams()) -> list[Region]:
    """The viral regions of one sequence, from its chunks in order (no_call: None or NaN)."""
    starts, ends, scores = _as_arrays(chunk_starts, chunk_ends, chunk_scores)
    if len(starts) and ends.max() > seq_length:
        raise ValueError(f"{seq_id}: a chunk ends at {ends.max()}, past its length {seq_length}")
    order = np.argsort(starts, kind="stable")
    starts, ends, scores = starts[order], ends[order], scores[order]
    if len(starts) < 2:
        if len(scores) and not np.isnan(scores[0]) and scores[0] >= threshold:
            return [Region(seq_id, "region_1", 0, seq_length, 1, float(scores[0]), WHOLE)]
        return []
    states = viterbi(_emissions(scores, threshold), params.switch_prob)
    # Boundary between chunk k and k + 1: midway between k's end and k + 1's start.
    cuts = np.concatenate([[0], (ends[:-1] + starts[1:]) // 2, [seq_length]])
    regions: list[Region] = []
    for run in _runs(states):
        first, stop = _trim(*run, scores, threshold)
        start, end = int(cuts[first]), int(cuts[stop])
        kind = WHOLE if (start, end) == (0, seq_length) else PARTIAL
        scored = scores[first:stop][~np.isnan(scores[first:stop])]
        score = float(scored.mean()) if len(scored) else math.nan
        if not score >= threshold or (kind == PARTIAL and end - start < params.min_region_length):
            continue
        regions.append(Region(seq_id, f"region_{len(regions) + 1}", start, end, stop - first,
                              score, kind))
    return regions


def region_rows(regions: Sequence[Region]) -> list[str]:
    """`regions.tsv` lines (REGION_COLUMNS, without the header); scores as float32 text, as
    in chunks.tsv."""
    return ["\t".join(map(str, (r.seq_id, r.region_id, r.start, r.end, r.length, r.n_chunks,
                                np.float32(r.score), r.kind))) + "\n" for r in regions]


def region_fasta(record_sequence: str, region: Region) -> str:
    """One `regions.fna` record: `>{seq_id}|{region_id}|{start}-{end}` (0-based, end
    exclusive, as in regions.tsv), the bases wrapped at 60."""
    if region.end > len(record_sequence):
        raise ValueError(f"{region.seq_id}|{region.region_id} ends at {region.end}, past the "
                         f"sequence's {len(record_sequence)} bases")
    seq = record_sequence[region.start:region.end]
    lines = "".join(seq[i:i + _FASTA_WIDTH] + "\n" for i in range(0, len(seq), _FASTA_WIDTH))
    return f">{region.seq_id}|{region.region_id}|{region.start}-{region.end}\n{lines}"


def _read_chunks(path: Path) -> list[tuple[str, list[int], list[int], list[float | None]]]:
    """(seq_id, starts, ends, scores) per record of a chunks.tsv, in file order. A chunk that
    starts at 0 begins a new record, so repeated ids stay apart."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    try:
        cols = [header.index(c) for c in ("seq_id", "start", "end", "score")]
    except ValueError:
        raise InputError(f"{path}: not a chunks.tsv (header {header!r})") from None
    records: list[tuple[str, list[int], list[int], list[float | None]]] = []
    for n, line in enumerate(lines[1:], 2):
        try:
            sid, start, end, score = (line.split("\t")[c] for c in cols)
            row = (int(start), int(end), float(score) if score else None)
        except (IndexError, ValueError):
            raise InputError(f"{path}: line {n}: not a chunks.tsv row: {line!r}") from None
        if not records or records[-1][0] != sid or row[0] == 0:
            records.append((sid, [], [], []))
        for column, value in zip(records[-1][1:], row, strict=True):
            column.append(value)
    return records


def regions_from_chunks_tsv(path: Path | str, threshold: float,
                            params: RegionParams = RegionParams()) -> list[Region]:
    """The regions of every sequence of a finished output's chunks.tsv, in file order, at a
    new threshold or parameters, without running a model. A record's length is taken as its
    last chunk's end, which is exact for chunks as predict makes them."""
    regions: list[Region] = []
    for sid, starts, ends, scores in _read_chunks(Path(path)):
        regions.extend(find_regions(sid, max(ends), starts, ends, scores, threshold, params))
    return regions
