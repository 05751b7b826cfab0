"""A finished predict run, rerun with only a new `--threshold` (or region settings): its
verdict files are rewritten from the frame scores it saved, in seconds, without any model.

The scores come from `prediction_results.txt` (float32 in shortest round-trip form, so they
read back exactly); the records come from the inputs again (checked by sha256 against
run.json), cut into the run's units, chunked and translated as the workers did (here, in this
process: no model is needed); both go through the same rendering and writer a run uses, so
the files equal those of a run made with the new settings from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro import mqc, outputs
from virnucpro.commit import Switch
from virnucpro.errors import OutputError
from virnucpro.frames import piece_frames
from virnucpro.reader import ReadStats
from virnucpro.render import render_unit
from virnucpro.runtime.protocol import Render
from virnucpro.runtime.units import UnitStream, text_pieces
from virnucpro.writer import PredictWriter

log = logging.getLogger(__name__)


def saved_scores(path: Path) -> Iterator[tuple[str, float, float]]:
    """(frame id, score1, score2) per row of a finished run's prediction_results.txt."""
    try:
        with path.open(encoding="utf-8") as fh:
            if fh.readline().rstrip("\n").split("\t") != list(outputs.PREDICTION_COLUMNS):
                raise OutputError(f"{path}: not a prediction_results.txt; use --force")
            for line in fh:
                frame_id, _, s1, s2 = line.rstrip("\n").split("\t")
                yield frame_id, float(s1), float(s2)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read the saved scores ({exc}); use --force to "
                          "recompute") from None


def _take(rows: Iterator[tuple[str, float, float]], frame_ids: tuple[str, ...],
          path: Path) -> np.ndarray:
    scores = np.empty((len(frame_ids), 2), np.float32)
    for i, want in enumerate(frame_ids):
        got = next(rows, None)
        if got is None or got[0] != want:
            raise OutputError(f"{path}: its frames do not match the inputs any more; use "
                              "--force to recompute")
        scores[i] = got[1:]
    return scores


def rethreshold(inputs: tuple[str, ...], out_dir: Path, finished: dict[str, Any],
                render: Render, shard: tuple[int, int] | None) -> dict[str, Any]:
    """Rewrite the verdict files of the finished run in `out_dir` (whose run.json is
    `finished`) with `render`'s threshold and region settings; returns the new run.json."""
    t0 = time.perf_counter()
    if "-" in inputs:
        raise OutputError(f"{out_dir}: its finished run read stdin, which cannot be read "
                          "again to apply a new threshold; use --force to recompute")
    params = finished["params"]
    paths = outputs.predict_paths(out_dir)
    rows = saved_scores(paths["predictions"])
    render = replace(render, save_embeddings=False)
    writer = PredictWriter(out_dir, out_dir / outputs.STATE_DIR / "tmp", render,
                           partial_ok=shard is not None)
    read = ReadStats()
    # The inputs are the finished run's (checked by sha256): their ids were checked then.
    stream = UnitStream(inputs, params["chunk_size"], params["unit_frames"], shard,
                        ids_checked=True)
    try:
        for unit, record in stream.units(read):
            pieces = text_pieces(unit, render.chunk_size)
            records = piece_frames(pieces, render.chunk_size)
            ids = tuple(f.id for rf in records for fs in rf.frames for f in fs)
            scores = _take(rows, ids, paths["predictions"])
            writer.add(render_unit(records, pieces, scores, render.threshold,
                                   render.regions, render.chunk_size), record)
        if next(rows, None) is not None:
            raise OutputError(f"{paths['predictions']}: holds more frames than the inputs; "
                              "use --force to recompute")
    except BaseException:
        writer.abort()
        raise
    counts = {**writer.counts(), "rna_records": read.rna_records}
    threshold = render.threshold
    new = {**params, "threshold": threshold,
           "min_region_length": render.regions.min_region_length,
           "region_switch_prob": render.regions.switch_prob}
    record = {**finished, "params": new, "counts": counts,
              "rethresholded": {"from": params.get("threshold"),
                                "seconds": round(time.perf_counter() - t0, 3)}}
    # Every file the writer made (prediction_results.txt again, with the same scores), the
    # MultiQC files and run.json change together, or not at all (commit.py).
    switch = Switch(out_dir, remove=[out_dir / outputs.STATE_DIR])
    mqc.write_mqc(out_dir, Path(out_dir).resolve().name, counts["predictions"],
                  writer.histogram, switch)
    writer.finish(record, switch)
    log.info("applied threshold %g (was %g) to the saved scores in %s; no model was run",
             threshold, params.get("threshold"), out_dir)
    return record
