"""From frame scores to the rows of every predict output, for one work unit. No torch here.

The workers call `render_unit` on each unit they score, so the parent only appends text; the
re-threshold and merge paths call the same function, so every path writes the same bytes.

A record longer than one unit is split over several (`runtime.units`). Its chunk rows are
rendered with each part; its sequence row, `viral.fna` record, regions and counts need every
chunk score, so each part returns its chunks' scores (`Part`) and the parent's `Tails` renders
the rest with `render_tail` once the last part has arrived, as a worker does for a whole
record. Chunk scores cross as JSON floats, which round-trip exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from virnucpro.frames import SKIP_EMPTY, SKIP_NO_FRAME, RecordFrames, chunk_edges, n_chunks
from virnucpro.outputs import HISTOGRAM_BINS, fasta_wrapped, format_score, tsv_row
from virnucpro.regions import RegionParams, find_regions, region_fasta, region_rows
from virnucpro.verdicts import NO_CALL, NOT_VIRUS, VIRUS, call, record_verdicts, sequence_score

# The text files a unit adds to, in the order PredictWriter opens them.
TEXT_ROLES = ("predictions", "sequences", "chunks", "viral", "regions", "regions_fna")


def _new_counts() -> dict[str, Any]:
    return {"sequences": 0, "bases": 0, "chunks": 0, "chunks_scored": 0, "frames": 0,
            "predictions": {VIRUS: 0, NOT_VIRUS: 0, NO_CALL: 0}}


def add_counts(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            for k, v in value.items():
                into[key][k] += v
        else:
            into[key] += value


@dataclass(frozen=True)
class Part:
    """One part of a record split over units: its chunks' scores (None: no frame)."""

    id: str
    first: int  # its first chunk's index in the record
    scores: list[float | None]
    frames: list[int]  # kept frames per chunk
    last: bool


@dataclass
class Rendered:
    """A unit's share of every output: text per file, the original's per-chunk rows (one
    string, whole lines: sorted at the end), the sequence-score histogram, counts, and the
    parts of split records."""

    texts: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TEXT_ROLES, ""))
    highest: str = ""
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    counts: dict[str, Any] = field(default_factory=_new_counts)
    parts: list[Part] = field(default_factory=list)
    frame_ids: list[str] | None = None  # with --save-embeddings: the rows of the features

    def to_json(self) -> str:
        data = {**vars(self), "parts": [vars(p) for p in self.parts]}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Rendered:
        data = json.loads(text)
        data["parts"] = [Part(**p) for p in data["parts"]]
        if isinstance(data["highest"], list):  # saved by an earlier build: a row per item
            data["highest"] = "".join(data["highest"])
        return cls(**data)


@dataclass(frozen=True)
class Tail:
    """What a whole record adds once all its chunk scores are known."""

    texts: dict[str, str]
    histogram_bin: int | None
    counts: dict[str, Any]


def frame_lines(frames: Sequence[Any], scores: np.ndarray) -> list[str]:
    """`prediction_results.txt` rows: the argmax call (ties go to `others`, index 0)."""
    return [tsv_row((f.id, "virus" if s[1] > s[0] else "others",
                     format_score(s[0]), format_score(s[1])))
            for f, s in zip(frames, scores, strict=True)]


def _fmt_opt(score: float | None) -> str:
    return "" if score is None else format_score(score)


def render_tail(rid: str, header: str, seq: str, chunk_scores: Sequence[float | None],
                chunk_frames: Sequence[int], threshold: float, regions: RegionParams,
                chunk_size: int, chunk_counts: bool = True) -> Tail:
    """A record's sequence row, viral.fna record, regions and counts, from its chunk scores
    (`chunk_counts`: also count its chunks and frames, which each part of a split record
    counts itself)."""
    score = sequence_score(list(chunk_scores))
    v = call(score, threshold, SKIP_EMPTY if not seq else SKIP_NO_FRAME)
    n_scored = sum(n > 0 for n in chunk_frames)
    texts = {"sequences": tsv_row((rid, len(seq), len(chunk_scores), n_scored,
                                   sum(chunk_frames), _fmt_opt(v.score), v.call, v.reason))}
    texts["viral"] = fasta_wrapped(header, seq) if v.call == VIRUS else ""
    starts, ends = chunk_edges(len(seq), chunk_size)
    found = find_regions(rid, len(seq), starts, ends, chunk_scores, threshold, regions)
    texts["regions"] = "".join(region_rows(found))
    texts["regions_fna"] = "".join(region_fasta(seq, r) for r in found)
    counts: dict[str, Any] = {"sequences": 1, "bases": len(seq), "predictions": {v.call: 1}}
    if chunk_counts:
        counts |= _chunk_counts(chunk_frames)
    hist = None if v.score is None else min(int(v.score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)
    return Tail(texts, hist, counts)


def _chunk_counts(chunk_frames: Sequence[int]) -> dict[str, int]:
    return {"chunks": len(chunk_frames), "chunks_scored": sum(n > 0 for n in chunk_frames),
            "frames": sum(chunk_frames)}


def add_tail(out: Rendered, tail: Tail) -> None:
    for role, text in tail.texts.items():
        out.texts[role] += text
    if tail.histogram_bin is not None:
        out.histogram[tail.histogram_bin] += 1
    add_counts(out.counts, tail.counts)


def render_unit(records: Sequence[RecordFrames], pieces: Sequence[Any], scores: np.ndarray,
                threshold: float, regions: RegionParams, chunk_size: int,
                keep_frame_ids: bool = False) -> Rendered:
    """Every output row of a unit's pieces (`protocol.Piece`), given their chunks and frames
    (`records`, parallel) and the frames' [n, 2] scores."""
    out = Rendered()
    lines: dict[str, list[str]] = {"predictions": [], "chunks": [], "highest": []}
    pos = 0
    for rf, piece in zip(records, pieces, strict=True):
        per_chunk = [len(f) for f in rf.frames]
        n = sum(per_chunk)
        rv = record_verdicts(per_chunk, scores[pos:pos + n], threshold, empty=not piece.length)
        at = pos
        for chunk, frames, cv in zip(rf.chunks, rf.frames, rv.chunks, strict=True):
            lines["chunks"].append(tsv_row((chunk.id, piece.id, chunk.start, chunk.end,
                                            len(frames), _fmt_opt(cv.verdict.score),
                                            cv.verdict.call)))
            if frames:
                # The original's chunk id is the frame id minus its last two characters.
                lines["highest"].append(tsv_row((frames[0].id[:-2], cv.is_virus_original)))
                lines["predictions"].extend(frame_lines(frames, scores[at:at + len(frames)]))
                at += len(frames)
        pos += n
        chunk_scores = [cv.verdict.score for cv in rv.chunks]
        if piece.whole:
            add_tail(out, render_tail(piece.id, piece.header, piece.seq, chunk_scores,
                                      per_chunk, threshold, regions, chunk_size))
        else:
            out.parts.append(Part(piece.id, piece.first, chunk_scores, per_chunk,
                                  piece.stop == n_chunks(piece.length, chunk_size)))
            add_counts(out.counts, _chunk_counts(per_chunk))
    assert pos == len(scores), "scores do not match the frames of these pieces"
    out.texts["predictions"] = "".join(lines["predictions"])
    out.texts["chunks"] = "".join(lines["chunks"])
    out.highest = "".join(lines["highest"])
    if keep_frame_ids:
        out.frame_ids = [f.id for rf in records for fs in rf.frames for f in fs]
    return out


class Tails:
    """The parent's side of split records: collects each one's parts, in order, and renders
    its tail when the last part arrives. A shard may hold only some parts of a record
    (`partial_ok`): that record gets no tail there; merge renders it."""

    def __init__(self, threshold: float, regions: RegionParams, chunk_size: int,
                 partial_ok: bool = False) -> None:
        self.threshold, self.regions, self.chunk_size = threshold, regions, chunk_size
        self.partial_ok = partial_ok
        self._id: str | None = None
        self._scores: list[float | None] = []
        self._frames: list[int] = []
        self._complete = False

    def add(self, part: Part, record: Any) -> Tail | None:
        """Take a part (in record order) of `record` (a reader.Record); the record's tail
        once this is its last part."""
        expected = len(self._scores) if self._id == part.id else 0
        if part.first != expected:
            if not self.partial_ok:
                raise ValueError(f"{part.id}: the part from chunk {part.first + 1} arrived "
                                 f"after chunk {expected}")
            self._complete = False
        elif expected == 0:
            self._complete = True
        if self._id != part.id:
            self._id, self._scores, self._frames = part.id, [], []
        self._scores.extend(part.scores)
        self._frames.extend(part.frames)
        if not part.last:
            return None
        self._id = None
        if not self._complete:
            return None
        return render_tail(record.id, record.header, record.seq, self._scores, self._frames,
                           self.threshold, self.regions, self.chunk_size, chunk_counts=False)
