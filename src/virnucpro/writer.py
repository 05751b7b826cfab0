"""The parent's writer: appends each unit's rendered rows, in unit order, to predict's output
files, and moves them into place when the run is complete.

The rows come rendered from the workers (`render.render_unit`); the writer adds the tails of
records split over units (`render.Tails`), the sorted per-chunk file, the MultiQC histogram,
the counts and, with --save-embeddings, one features file per unit. Files are written into a
temporary directory and renamed into place only by `finish`, run.json last.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.commit import Switch
from virnucpro.errors import OutputError
from virnucpro.files import ExternalSort, os_error
from virnucpro.outputs import (
    CHUNK_COLUMNS,
    EMBEDDINGS_DIR,
    HIGHEST_COLUMNS,
    PREDICTION_COLUMNS,
    SEQUENCE_COLUMNS,
    predict_paths,
    tsv_row,
)
from virnucpro.regions import REGION_COLUMNS
from virnucpro.render import TEXT_ROLES, Rendered, Tails, add_counts, add_tail
from virnucpro.runtime.protocol import Render

_SORT_RUN_CHARS = 1 << 18  # highest-score text kept in memory before a sorted run is spilled
_MERGE_FAN_IN = 128  # sorted runs merged at once
_HEADERS = {"predictions": PREDICTION_COLUMNS, "sequences": SEQUENCE_COLUMNS,
            "chunks": CHUNK_COLUMNS, "regions": REGION_COLUMNS}


class PredictWriter:
    """Writes predict's outputs as rendered units arrive, in input order, into temporary
    files that `finish` moves into place (run.json last, so it marks a complete run)."""

    def __init__(self, out_dir: Path, tmp_dir: Path, render: Render,
                 partial_ok: bool = False) -> None:
        """`partial_ok`: a shard, which may hold only some parts of a long record."""
        self.paths = predict_paths(out_dir)
        self.tmp_dir = Path(tmp_dir)
        self.save_embeddings = render.save_embeddings
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._fh = {role: (self.tmp_dir / self.paths[role].name).open("w", newline="\n")
                        for role in TEXT_ROLES}
            for role, columns in _HEADERS.items():
                self._fh[role].write(tsv_row(columns))
        except OSError as exc:
            raise os_error(self.tmp_dir, exc) from None
        self._tails = Tails(render.threshold, render.regions, render.chunk_size, partial_ok)
        self._total = Rendered()  # histogram and counts of every unit so far
        # Chunk rows of the original's file, sorted by id at the end.
        self._highest = ExternalSort(self.tmp_dir, "highest", _SORT_RUN_CHARS, _MERGE_FAN_IN)
        self._n_units = 0

    @property
    def histogram(self) -> list[int]:
        return self._total.histogram

    def add(self, rendered: Rendered, record: Any = None,
            features: np.ndarray | None = None) -> None:
        """Append one unit's rows; `record`: the record it holds a part of, if any."""
        try:
            for part in rendered.parts:
                tail = self._tails.add(part, record)
                if tail is not None:
                    for role, text in tail.texts.items():
                        self._fh[role].write(text)
                    add_tail(self._total, tail)
            for role in TEXT_ROLES:
                self._fh[role].write(rendered.texts[role])
            self._highest.add(rendered.highest)
            self._total.histogram[:] = [a + b for a, b in zip(self._total.histogram,
                                                              rendered.histogram, strict=True)]
            add_counts(self._total.counts, rendered.counts)
            if self.save_embeddings and rendered.frame_ids:
                self._add_features(rendered.frame_ids, features)
        except OSError as exc:
            raise os_error(self.tmp_dir, exc) from None
        self._n_units += 1

    def _add_features(self, frame_ids: list[str], features: np.ndarray | None) -> None:
        if features is None or len(features) != len(frame_ids):
            raise OutputError(f"{self.paths['run'].parent}: the features of {len(frame_ids)} "
                              "frames are missing; rerun with --force to recompute them")
        np.savez(self.tmp_dir / f"{EMBEDDINGS_DIR}_{self._n_units:06d}.npz",
                 frame_ids=np.array(frame_ids, dtype=str), features=features)

    def counts(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._total.counts))

    def finish(self, run_record: dict[str, object], switch: Switch | None = None) -> None:
        """Switch every output into place at once, run.json last (`commit.Switch`: a kill
        leaves all the old files or all the new ones); `switch` may hold more of the run's
        files (MultiQC's)."""
        switch = switch if switch is not None else Switch(self.paths["run"].parent)
        try:
            for fh in self._fh.values():
                fh.close()
            highest = self.tmp_dir / self.paths["highest"].name
            with highest.open("w", newline="\n") as fh:
                # Whole lines sort as ids: ids hold no whitespace, and the tab after an id
                # sorts before any character of a longer id.
                fh.write(tsv_row(HIGHEST_COLUMNS))
                self._highest.write_sorted(fh)
        except OSError as exc:
            raise os_error(self.paths["run"].parent, exc) from None
        for role in TEXT_ROLES:
            switch.add(self.tmp_dir / self.paths[role].name, self.paths[role])
        switch.add(highest, self.paths["highest"])
        if self.save_embeddings:
            emb_dir = self.paths["run"].parent / EMBEDDINGS_DIR
            for p in sorted(self.tmp_dir.glob(f"{EMBEDDINGS_DIR}_*.npz")):
                switch.add(p, emb_dir / p.name.replace(f"{EMBEDDINGS_DIR}_", "unit_"))
        switch.commit(self.paths["run"], run_record)

    def abort(self) -> None:
        for fh in self._fh.values():
            with contextlib.suppress(OSError):
                fh.close()
