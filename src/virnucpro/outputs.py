"""Every output file: its name, its columns and its layout, and how it is written.

This is the one module that names output paths. Files are written under a temporary name in
their final directory and renamed into place only when the whole run succeeded, so a failed or
interrupted run never leaves a partial file behind an expected name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.errors import OutputError

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


def predict_paths(out_dir: Path) -> dict[str, Path]:
    """Every file `predict` writes in `out_dir`, by role."""
    return {role: Path(out_dir) / name for role, name in PREDICT_FILES.items()}


def format_score(x: float) -> str:
    """A float32 in shortest round-trip form, as the original prints scores (0.12100612)."""
    return str(np.float32(x))


HISTOGRAM_BINS = 20  # sequence-score bins of width 0.05 over [0, 1] (MultiQC's histogram)


# ------------------------------------------------------------------ train, evaluate and plot
# A classifier directory (`virnucpro train`, `models convert-classifier`): its weights and
# what it was trained on (named here, so that a run can read the chunk size without torch).
CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_INFO = "classifier.json"
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
