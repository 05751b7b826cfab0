"""A stand-in device for the orchestration benchmark: a worker backend that sleeps as long as a
GPU would compute, and renders rows of the real size and shape, so that the parent (the pump
being measured) sees what it would see from real workers.

It speaks the real worker protocol (`virnucpro.runtime.serve.serve`), is started by the real
engine as `python -m virnucpro.runtime.serve stand_in:StandIn`, and imports no torch. The
per-frame CPU work that real workers do (parsing, translation, rendering, the saved unit's
file) runs on the workers' own cores in a real deployment; here the stand-in parses its unit
and makes the saved file as a worker does, and approximates the rest by a few string
operations per record, so that 64 stand-ins fit on a 2-core machine and the figures measure
the parent.

Its rates arrive in the spec's `dnabert_dir` field (a benchmark has no model directories):
"stand-in:FRAMES_PER_CHUNK:ESM_TOKENS_PER_FRAME:DNABERT_TOKENS_PER_FRAME:ESM_RATE:DNA_RATE".
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import Any

import numpy as np

from virnucpro.render import Rendered
from virnucpro.runtime.protocol import RecordUnit, UnitResult, WorkerSpec
from virnucpro.runtime.units import text_pieces, unit_file

# ESM-2 3B at the 65% MFU goal on one H200: 0.65 x 989 TFLOP/s (bf16 dense) over
# 2 x 2.84 GFLOP per token (two FLOPs per parameter) = 113,000 tokens/s.
ESM_TOKENS_PER_S = 113_000.0
DNABERT_TOKENS_PER_S = 495_000.0  # DNABERT-S on one H200, bf16 (measured, 2026-11-29)


def frames_for(chunk_id: str, frames_per_chunk: float) -> int:
    """The frames a stand-in keeps for a chunk: `frames_per_chunk` on average, the same
    for a chunk whichever stand-in scores it (so every N scores the same frames)."""
    whole, part = divmod(frames_per_chunk, 1.0)
    return int(whole) + (zlib.crc32(chunk_id.encode()) / 2**32 < part)


def spec_field(frames_per_chunk: float, esm_per_frame: float, dna_per_frame: float,
               esm_rate: float = ESM_TOKENS_PER_S, dna_rate: float = DNABERT_TOKENS_PER_S) -> str:
    """What a benchmark puts in `WorkerSpec.dnabert_dir` for the stand-ins."""
    return f"stand-in:{frames_per_chunk}:{esm_per_frame}:{dna_per_frame}:{esm_rate}:{dna_rate}"


class StandIn:
    """The backend: every method of `serve.Backend`, and `process`, which replaces the
    translation, the models and the rendering."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        _, *rates = spec.dnabert_dir.split(":")
        self.frames_per_chunk, self.esm, self.dna, self.esm_rate, self.dna_rate = map(
            float, rates)

    def probe(self) -> dict[str, Any]:
        return {"device": self.spec.device, "name": "stand-in H200 (sleeps)",
                "compute_capability": "9.0"}

    def load(self, settings: Any) -> dict[str, Any]:
        return {}

    def propose(self) -> dict[str, int]:
        return {"dnabert_budget": 65_536, "esm_budget": 65_536}

    def go(self, settings: Any) -> None:
        pass

    def score(self, unit: Any) -> UnitResult:
        raise NotImplementedError("the stand-in only takes predict units")

    def after_unit(self) -> None:
        pass

    def failure(self, exc: BaseException) -> str:
        return f"the stand-in on {self.spec.device} failed: {exc!r}"

    def process(self, unit: RecordUnit) -> UnitResult:
        """Rows of the real layout, after the device's time. A split record's parts would
        return their chunk scores for the parent's tail; the stand-in leaves its sequence row
        out instead (one row of millions of frames' worth)."""
        t0 = time.perf_counter()
        out = Rendered()
        predictions, chunks, sequences, highest = [], [], [], []
        n_frames = 0
        assert self.spec.render is not None
        pieces = text_pieces(unit, self.spec.render.chunk_size)  # parsed, as a worker does
        for p in pieces:
            for c in range(p.first, p.stop):
                cid = f"{p.id}_chunk_{c + 1}"
                k = frames_for(cid, self.frames_per_chunk)
                predictions.extend(f"{cid}F{i + 1}\tothers\t0.73105854\t0.26894143\n"
                                   for i in range(k))
                chunks.append(f"{cid}\t{p.id}\t0\t{p.length}\t{k}\t0.26894143\tnot_virus\n")
                highest.append(f"{cid}\tFalse\n")
                n_frames += k
            if p.whole:  # a split record's row is the parent's to write (render.Tails)
                sequences.append(f"{p.id}\t{p.length}\t1\t1\t{n_frames}\t0.26894143\t"
                                 "not_virus\t\n")
        out.texts.update(predictions="".join(predictions), chunks="".join(chunks),
                         sequences="".join(sequences))
        out.highest = "".join(highest)
        out.counts.update(sequences=len(pieces), frames=n_frames)
        seconds = {"dnabert": n_frames * self.dna / self.dna_rate,
                   "esm": n_frames * self.esm / self.esm_rate}
        time.sleep(max(0.0, sum(seconds.values()) - (time.perf_counter() - t0)))
        scores = np.full((n_frames, 2), 0.5, np.float32)
        result = UnitResult(unit.index, scores, None, seconds,
                            {"dnabert": n_frames * self.dna, "esm": n_frames * self.esm},
                            self.spec.device, None, out)
        return replace(result, saved=unit_file(unit, result))  # as a worker saves it
