"""From frame scores to chunk and sequence calls.

The original calls a chunk `virus` when, over its frames, max P(virus) >= max P(others).
We give every chunk a score with that rule built in, and every sequence the mean of its
chunk scores:

    chunk_score    = (max s2 + (1 - max s1)) / 2          (s1 = P(others), s2 = P(virus))
    virus_score    = mean of chunk_score over the chunks that have frames
    prediction     = virus if virus_score >= threshold, else not_virus;
                     no_call when no chunk has a frame (reason: empty | no_stop_free_frame)

Since s1 = 1 - s2, chunk_score is the hint's (max s2 + min s2) / 2; written with max s1 it
is >= 0.5 exactly when max s2 >= max s1 in the original's float32 numbers, so a one-chunk
sequence at threshold 0.5 gets the original's call, even on rounding ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from virnucpro.frames import SKIP_EMPTY, SKIP_NO_FRAME

VIRUS, NOT_VIRUS, NO_CALL = "virus", "not_virus", "no_call"


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float | None  # None for no_call
    call: str
    reason: str = ""


def chunk_score(scores: np.ndarray) -> float:
    """Score of one chunk from its frames' [n, 2] (others, virus) probabilities, n >= 1."""
    s = scores.astype(np.float64)
    return float((s[:, 1].max() + (1.0 - s[:, 0].max())) / 2.0)


def is_virus_original(scores: np.ndarray) -> bool:
    """The original's `Is_Virus` for a chunk: max score2 >= max score1, in float32."""
    return bool(scores[:, 1].max() >= scores[:, 0].max())


def call(score: float | None, threshold: float, reason_if_none: str) -> Verdict:
    if score is None:
        return Verdict(None, NO_CALL, reason_if_none)
    return Verdict(score, VIRUS if score >= threshold else NOT_VIRUS)


def sequence_score(chunk_scores: list[float | None]) -> float | None:
    """Mean chunk score over the chunks that were scored; None when none was."""
    scored = [s for s in chunk_scores if s is not None]
    return sum(scored) / len(scored) if scored else None


@dataclass(frozen=True, slots=True)
class ChunkVerdict:
    verdict: Verdict  # the chunk's score and call (no_call: no kept frame)
    n_frames: int
    is_virus_original: bool | None  # the original's Is_Virus; None without frames


@dataclass(frozen=True, slots=True)
class RecordVerdicts:
    chunks: tuple[ChunkVerdict, ...]
    sequence: Verdict
    n_frames: int
    n_chunks_scored: int


def record_verdicts(frames_per_chunk: list[int], scores: np.ndarray, threshold: float,
                    empty: bool) -> RecordVerdicts:
    """Chunk and sequence verdicts of one record from its frames' [n, 2] scores, given how
    many frames each chunk kept; `empty`: the record has no bases."""
    pos, chunks = 0, []
    for n in frames_per_chunk:
        s = scores[pos:pos + n]
        pos += n
        score = chunk_score(s) if n else None
        chunks.append(ChunkVerdict(call(score, threshold, SKIP_NO_FRAME), n,
                                   is_virus_original(s) if n else None))
    assert pos == len(scores), "scores do not match the record's frames"
    seq = sequence_score([c.verdict.score for c in chunks])
    reason = SKIP_EMPTY if empty else SKIP_NO_FRAME
    return RecordVerdicts(tuple(chunks), call(seq, threshold, reason), pos,
                          sum(c.n_frames > 0 for c in chunks))
