"""Every output file: its name, its columns and its layout, and how it is written.

This is the one module that names output paths. Files are written under a temporary name in
their final directory and renamed into place only when the whole run succeeded, so a failed or
interrupted run never leaves a partial file behind an expected name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.commit import Switch
from virnucpro.errors import OutputError
from virnucpro.files import ExternalSort, os_error
from virnucpro.frames import Frame, RecordFrames
from virnucpro.regions import REGION_COLUMNS, RegionParams, find_regions, region_fasta, region_rows
from virnucpro.verdicts import NO_CALL, NOT_VIRUS, VIRUS, RecordVerdicts, record_verdicts

__all__ = [
    "FASTA_WIDTH",
    "SKIPPED_COLUMNS",
    "TranslateOutputs",
    "check_writable",
    "fasta_line",
    "fasta_wrapped",
    "make_output_dir",
    "translate_outputs",
    "tsv_row",
]

FASTA_WIDTH = 60  # Biopython's SeqIO FASTA writer wraps at 60, and the chunked file is its output
# `<stem>_skipped.tsv`: one row per sequence or chunk that yields no kept frame.
SKIPPED_COLUMNS = ("id", "kind", "reason")  # kind: sequence|chunk; reason: frames.SKIP_*


# ---------------------------------------------------------------------------- file names
@dataclass(frozen=True, slots=True)
class TranslateOutputs:
    """The files `virnucpro translate` writes for one input."""

    chunked: Path  # <stem>_chunked<L>.fa: the chunks, FASTA wrapped at 60 (as the original)
    nucleotide: Path  # <stem>_identified_nucleotide.fa: kept frames' DNA, one line each
    protein: Path  # <stem>_identified_protein.faa: kept frames' proteins, one line each
    skipped: Path  # <stem>_skipped.tsv: SKIPPED_COLUMNS

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.chunked, self.nucleotide, self.protein, self.skipped)


def translate_outputs(out_dir: Path, stem: str, chunk_size: int) -> TranslateOutputs:
    """Output paths for one input; the first three are named as the original names them."""
    return TranslateOutputs(
        chunked=out_dir / f"{stem}_chunked{chunk_size}.fa",
        nucleotide=out_dir / f"{stem}_identified_nucleotide.fa",
        protein=out_dir / f"{stem}_identified_protein.faa",
        skipped=out_dir / f"{stem}_skipped.tsv",
    )


# -------------------------------------------------------------------------------- layout
def fasta_wrapped(name: str, seq: str, width: int = FASTA_WIDTH) -> str:
    """A FASTA record as Biopython writes it: sequence lines of `width`, final newline."""
    lines = [seq[i: i + width] for i in range(0, len(seq), width)]
    return f">{name}\n" + "".join(line + "\n" for line in lines)


def fasta_line(name: str, seq: str) -> str:
    """A FASTA record with the whole sequence on one line (the identified files)."""
    return f">{name}\n{seq}\n"


def tsv_row(values: Iterable[object]) -> str:
    """One tab-separated line."""
    return "\t".join(map(str, values)) + "\n"


# ------------------------------------------------------------------------------- writing
def make_output_dir(out_dir: Path) -> None:
    """Create the output directory (and parents) if missing."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{out_dir}: exists and is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create directory: {exc.strerror or exc}") from None


def check_writable(paths: Sequence[Path], force: bool) -> None:
    """Refuse to overwrite existing outputs unless `force`; refuse directories always."""
    for path in paths:
        if path.is_dir():
            raise OutputError(f"{path}: is a directory; cannot write an output file there")
        if path.exists() and not force:
            raise OutputError(f"{path}: already exists (use --force to overwrite)")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot write in {parent} (permission denied)")


# ------------------------------------------------------------------ predict outputs
PREDICT_FILES = {
    "predictions": "prediction_results.txt",
    "highest": "prediction_results_highestscore.csv",
    "sequences": "sequences.tsv",
    "chunks": "chunks.tsv",
    "viral": "viral.fna",
    "regions": "regions.tsv",
    "regions_fna": "regions.fna",
    "run": "run.json",
}
# MultiQC custom content (see mqc.py): written beside the outputs, one plot per file.
MQC_FILES = {"calls": "virnucpro_calls_mqc.json", "scores": "virnucpro_scores_mqc.json"}
LOCK_FILE = ".virnucpro.lock"  # held by the run writing the directory (see files.DirLock)
EMBEDDINGS_DIR = "embeddings"
STATE_DIR = ".virnucpro"  # an unfinished run's state and saved units; removed when it ends
PREDICTION_COLUMNS = ("Sequence_ID", "Prediction", "score1", "score2")
HIGHEST_COLUMNS = ("Modified_ID", "Is_Virus")
SEQUENCE_COLUMNS = ("seq_id", "length", "n_chunks", "n_chunks_scored", "n_frames",
                    "virus_score", "prediction", "reason")
CHUNK_COLUMNS = ("chunk_id", "seq_id", "start", "end", "n_frames", "score", "call")
_SORT_RUN_ROWS = 50_000  # highest-score rows kept in memory before a sorted run is spilled
_MERGE_FAN_IN = 128  # sorted runs merged at once


def predict_paths(out_dir: Path) -> dict[str, Path]:
    """Every file `predict` writes in `out_dir`, by role."""
    return {role: Path(out_dir) / name for role, name in PREDICT_FILES.items()}


def format_score(x: float) -> str:
    """A float32 in shortest round-trip form, as the original prints scores (0.12100612)."""
    return str(np.float32(x))


def frame_lines(frames: Sequence[Frame], scores: np.ndarray) -> list[str]:
    """`prediction_results.txt` rows: the argmax call (ties go to `others`, index 0)."""
    return [tsv_row((f.id, "virus" if s[1] > s[0] else "others",
                  format_score(s[0]), format_score(s[1])))
            for f, s in zip(frames, scores, strict=True)]


class PredictWriter:
    """Writes predict's outputs as unit results arrive, in input order, into temporary files
    that `finish` moves into place (run.json last, so it marks a complete run)."""

    def __init__(self, out_dir: Path, tmp_dir: Path, threshold: float,
                 save_embeddings: bool = False, regions: RegionParams | None = None) -> None:
        self.paths = predict_paths(out_dir)
        self.tmp_dir = Path(tmp_dir)
        self.threshold = threshold
        self.save_embeddings = save_embeddings
        self.regions = regions or RegionParams()
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._fh = {role: (self.tmp_dir / self.paths[role].name).open("w", newline="\n")
                        for role in _STREAMED}
        except OSError as exc:
            raise os_error(self.tmp_dir, exc) from None
        self._fh["predictions"].write(tsv_row(PREDICTION_COLUMNS))
        self._fh["sequences"].write(tsv_row(SEQUENCE_COLUMNS))
        self._fh["chunks"].write(tsv_row(CHUNK_COLUMNS))
        self._fh["regions"].write(tsv_row(REGION_COLUMNS))
        self.histogram = [0] * HISTOGRAM_BINS  # sequence scores, for MultiQC
        # Chunk rows of the original's file, sorted by id at the end.
        self._highest = ExternalSort(self.tmp_dir, "highest", _SORT_RUN_ROWS, _MERGE_FAN_IN)
        self._n_units = 0
        self.frames_written = 0
        self._counts = {"sequences": 0, "bases": 0, "chunks": 0, "chunks_scored": 0,
                        "frames": 0, "predictions": {VIRUS: 0, NOT_VIRUS: 0, NO_CALL: 0}}

    def add(self, records: Sequence[RecordFrames], scores: np.ndarray,
            features: np.ndarray | None = None) -> None:
        """Write the rows of consecutive records whose frames have these [n, 2] scores."""
        pos = 0
        try:
            for rf in records:
                n = sum(len(f) for f in rf.frames)
                self._add_record(rf, scores[pos:pos + n])
                pos += n
            assert pos == len(scores), "scores do not match the frames of these records"
            if self.save_embeddings and pos:
                self._add_features(records, features)
        except OSError as exc:
            raise os_error(self.tmp_dir, exc) from None
        self._n_units += 1
        self.frames_written += pos

    def _add_features(self, records: Sequence[RecordFrames], features: np.ndarray | None,
                      ) -> None:
        ids = [f.id for rf in records for fs in rf.frames for f in fs]
        if features is None or len(features) != len(ids):
            raise OutputError(f"{self.paths['run'].parent}: the features of {len(ids)} frames "
                              "are missing; rerun with --force to recompute them")
        np.savez(self.tmp_dir / f"{EMBEDDINGS_DIR}_{self._n_units:06d}.npz",
                 frame_ids=np.array(ids, dtype=str), features=features)

    def _add_record(self, rf: RecordFrames, scores: np.ndarray) -> None:
        rec = rf.record
        rv = record_verdicts([len(f) for f in rf.frames], scores, self.threshold,
                             empty=not rec.seq)
        pos, frames_out = 0, []
        for chunk, frames, cv in zip(rf.chunks, rf.frames, rv.chunks, strict=True):
            v = cv.verdict
            self._fh["chunks"].write(tsv_row((chunk.id, rec.id, chunk.start, chunk.end,
                                              len(frames), _fmt_opt(v.score), v.call)))
            if frames:
                # The original's chunk id is the frame id minus its last two characters.
                self._highest.add(tsv_row((frames[0].id[:-2], cv.is_virus_original)))
                frames_out.extend(frame_lines(frames, scores[pos:pos + len(frames)]))
                pos += len(frames)
        self._fh["predictions"].writelines(frames_out)
        v = rv.sequence
        self._fh["sequences"].write(tsv_row((
            rec.id, len(rec.seq), len(rf.chunks), rv.n_chunks_scored, rv.n_frames,
            _fmt_opt(v.score), v.call, v.reason)))
        if v.call == VIRUS:
            self._fh["viral"].write(fasta_wrapped(rec.header, rec.seq))
        if v.score is not None:
            self.histogram[min(int(v.score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
        self._add_regions(rf, rv)
        c = self._counts
        c["sequences"] += 1
        c["bases"] += len(rec.seq)
        c["chunks"] += len(rf.chunks)
        c["chunks_scored"] += rv.n_chunks_scored
        c["frames"] += rv.n_frames
        c["predictions"][v.call] += 1

    def _add_regions(self, rf: RecordFrames, rv: RecordVerdicts) -> None:
        rec = rf.record
        found = find_regions(rec.id, len(rec.seq), [c.start for c in rf.chunks],
                             [c.end for c in rf.chunks], [c.verdict.score for c in rv.chunks],
                             self.threshold, self.regions)
        self._fh["regions"].writelines(region_rows(found))
        self._fh["regions_fna"].writelines(region_fasta(rec.seq, r) for r in found)

    def counts(self) -> dict[str, object]:
        return json.loads(json.dumps(self._counts))

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
        for role in _STREAMED:
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


_STREAMED = ("predictions", "sequences", "chunks", "viral", "regions", "regions_fna")
HISTOGRAM_BINS = 20  # sequence-score bins of width 0.05 over [0, 1] (MultiQC's histogram)


def _fmt_opt(score: float | None) -> str:
    return "" if score is None else format_score(score)


# ------------------------------------------------------------------ train, evaluate and plot
# `virnucpro train` writes into MODEL_DIR: the classifier (classifier.WEIGHTS_FILE and
# classifier.INFO_FILE), the per-epoch history, and by default the embedding cache.
TRAIN_FILES = {"history": "history.tsv"}
FEATURES_DIR = "features"  # default embedding cache: MODEL_DIR/features/<fingerprint>/
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_precision",
                   "val_recall", "val_f1", "val_auroc", "val_auprc", "lr", "seconds")
# `virnucpro evaluate --truth LABELS.tsv`: seq_id<TAB>label, label virus|other; header optional.
LABEL_COLUMNS = ("seq_id", "label")
EVALUATE_FILES = {"metrics": "metrics.json", "roc": "roc.png", "pr": "pr.png"}
PLOT_FILES = {"tracks": "score_tracks.png", "histogram": "score_histogram.png",
              "html": "plots.html"}


def train_paths(model_dir: Path) -> dict[str, Path]:
    return {role: Path(model_dir) / name for role, name in TRAIN_FILES.items()}


def evaluate_paths(out_dir: Path) -> dict[str, Path]:
    return {role: Path(out_dir) / name for role, name in EVALUATE_FILES.items()}


def plot_paths(out_dir: Path) -> dict[str, Path]:
    return {role: Path(out_dir) / name for role, name in PLOT_FILES.items()}


def format_metric(x: float | None) -> str:
    """A metric in a TSV cell: 6 significant digits, empty when undefined."""
    return "" if x is None else f"{x:.6g}"


def read_table(path: Path, columns: Sequence[str]) -> Iterator[list[str]]:
    """The rows of one of our TSV outputs, after checking its header is `columns`."""
    from virnucpro.errors import InputError

    try:
        with Path(path).open(encoding="utf-8", newline="\n") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            if tuple(header) != tuple(columns):
                raise InputError(f"{path}: header is {header}, expected {list(columns)} "
                                 "(not a virnucpro predict output?)")
            for number, line in enumerate(fh, 2):
                row = line.rstrip("\n").split("\t")
                if len(row) != len(columns):
                    raise InputError(f"{path}: line {number}: {len(row)} columns, expected "
                                     f"{len(columns)}")
                yield row
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (is this a predict output directory?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
