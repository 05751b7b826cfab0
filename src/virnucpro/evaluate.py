"""`virnucpro evaluate`: how well a predict run matches known labels, per frame, chunk and sequence.

Truth is per sequence; a chunk and a frame take the label of their sequence. Metrics count
virus as the positive class:

    accuracy, precision, recall, F1     from one rule at every level: virus when the score
                                        >= the run's threshold (run.json, as re-thresholding
                                        leaves it). Chunks and sequences: the calls predict
                                        wrote, made so; frames: score2 >= threshold, not the
                                        original's argmax in prediction_results.txt
    AUROC, AUPRC                        from the scores (frame: score2 = P(virus); chunk:
                                        chunk score; sequence: virus_score)
    confusion matrix                    tp, fp, tn, fn

A metric whose denominator is zero (no predicted virus, one class only) is `null`. Chunks and
sequences without a call (no_call) are left out of every metric and counted. AUPRC is average
precision: the sum over score thresholds of (recall step) x precision, as scikit-learn computes
it. The metric functions are plain numpy, so `train` uses them too without a second copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro import __version__, files, outputs
from virnucpro.errors import InputError

log = logging.getLogger(__name__)

LEVELS = ("frame", "chunk", "sequence")
# Accepted spellings in LABELS.tsv (case-insensitive). `others` and `not_virus` are the names
# the original and our outputs give the negative class.
POSITIVE_LABELS = frozenset({"virus", "viral", "1"})
NEGATIVE_LABELS = frozenset({"other", "others", "not_virus", "host", "0"})
VIRUS = "virus"  # the call, in chunks.tsv and sequences.tsv, counted as positive
CALL_RULE = ("virus when score >= threshold (run.json's) at every level; score: score2 per "
             "frame, the chunk score per chunk, virus_score per sequence")


# ------------------------------------------------------------------ metrics (plain numpy)
def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """tp, fp, tn, fn of boolean `predicted` against boolean `labels` (True = virus)."""
    y, p = np.asarray(labels, bool), np.asarray(predicted, bool)
    return {"tp": int(np.sum(y & p)), "fp": int(np.sum(~y & p)),
            "tn": int(np.sum(~y & ~p)), "fn": int(np.sum(y & ~p))}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _curve_counts(labels: np.ndarray, scores: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) when calling virus at each distinct score, highest first."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, y = np.asarray(scores, np.float64)[order], np.asarray(labels, bool)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each score value
    tps = np.cumsum(y)[last]
    return tps, last + 1 - tps, s[last]


def roc_curve(labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), starting at (0, 0)."""
    tps, fps, thresholds = _curve_counts(labels, scores)
    n_pos, n_neg = tps[-1] if len(tps) else 0, fps[-1] if len(fps) else 0
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(fps) + 1, np.nan)
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(tps) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def pr_curve(labels: np.ndarray, scores: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, highest first."""
    tps, fps, thresholds = _curve_counts(labels, scores)
    n_pos = tps[-1] if len(tps) else 0
    recall = tps / n_pos if n_pos else np.full(len(tps), np.nan)
    return tps / (tps + fps), recall, thresholds


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None without both classes."""
    y = np.asarray(labels, bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision; None without positives."""
    y = np.asarray(labels, bool)
    if not y.any():
        return None
    precision, recall, _ = pr_curve(y, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(labels: np.ndarray, scores: np.ndarray,
                   predicted: np.ndarray) -> dict[str, Any]:
    """Every metric of one level: counts, threshold metrics from `predicted`, curve areas."""
    y = np.asarray(labels, bool)
    c = confusion(y, predicted)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "n": int(y.size), "n_virus": int(y.sum()), "n_other": int((~y).sum()),
        "accuracy": _ratio(tp + tn, y.size), "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": auroc(y, scores), "auprc": average_precision(y, scores), "confusion": c,
    }


# ------------------------------------------------------------------ truth labels
def parse_label(text: str, where: str) -> bool:
    """True for virus, False for other; anything else is an error naming `where`."""
    word = text.strip().lower()
    if word in POSITIVE_LABELS:
        return True
    if word in NEGATIVE_LABELS:
        return False
    raise InputError(f"{where}: label {text.strip()!r} is neither virus nor other "
                     f"(accepted: {', '.join(sorted(POSITIVE_LABELS | NEGATIVE_LABELS))})")


def read_labels(path: Path) -> dict[str, bool]:
    """LABELS.tsv: `seq_id<TAB>label` per line; an optional `seq_id<TAB>label` header, blank
    lines and `#` comments are skipped. Extra columns are ignored."""
    labels: dict[str, bool] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read labels ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise InputError(f"{path}: line {number}: expected seq_id<TAB>label")
        seq_id, label = fields[0].strip(), fields[1]
        if number == 1 and tuple(f.strip().lower() for f in fields[:2]) == outputs.LABEL_COLUMNS:
            continue
        value = parse_label(label, f"{path}: line {number}")
        if labels.setdefault(seq_id, value) != value:
            raise InputError(f"{path}: line {number}: {seq_id!r} is labelled both ways")
    if not labels:
        raise InputError(f"{path}: no labels found")
    return labels


def labels_from_fasta(viral: Sequence[str], other: Sequence[str]) -> dict[str, bool]:
    """Every record of `viral` is virus, every record of `other` is not."""
    from virnucpro.reader import read_records

    labels = {r.id: True for r in read_records(list(viral))} if viral else {}
    for r in read_records(list(other)) if other else ():
        if r.id in labels:
            raise InputError(f"{r.source}: {r.id!r} is also in a --viral file")
        labels[r.id] = False
    if not labels:
        raise InputError("no truth given: use --truth LABELS.tsv or --viral/--other FASTA")
    return labels


# ------------------------------------------------------------------ predict outputs
@dataclass
class Level:
    """Scored items of one level that have a truth label."""

    labels: np.ndarray  # bool, True = virus
    scores: np.ndarray  # float64, P(virus)-like
    predicted: np.ndarray  # bool, the call predict made
    n_no_call: int = 0  # items without a call (left out)
    n_unlabelled: int = 0  # items whose sequence has no label (left out)


def _level(rows: Iterator[tuple[str, str, str]], truth: dict[str, bool],
           threshold: float | None = None) -> Level:
    """rows: (seq_id, score or '', call). Keeps labelled items with a score; each is
    predicted virus by its call, or where `threshold` is given, by score >= threshold."""
    labels: list[bool] = []
    scores: list[float] = []
    predicted: list[bool] = []
    no_call = unlabelled = 0
    for seq_id, score, call in rows:
        label = truth.get(seq_id)
        if label is None:
            unlabelled += 1
        elif score == "":
            no_call += 1
        else:
            labels.append(label)
            scores.append(float(score))
            predicted.append(call == VIRUS if threshold is None else scores[-1] >= threshold)
    return Level(np.array(labels, bool), np.array(scores, np.float64),
                 np.array(predicted, bool), no_call, unlabelled)


def read_levels(pred_dir: Path, truth: dict[str, bool], threshold: float) -> dict[str, Level]:
    """The frame, chunk and sequence tables of a predict output, joined with the truth. A
    frame is predicted virus when its score2 >= `threshold`, the run's: the Prediction column
    is the original's argmax, at 0.5 whatever the threshold. Chunks and sequences keep the
    calls predict made at that threshold (from their unrounded scores)."""
    paths = outputs.predict_paths(pred_dir)
    # A frame id is `{record_id}_chunk_{k}{F|R}{1-3}`: its record id is exact to recover.
    frames = ((r[0][:-2].rsplit("_chunk_", 1)[0], r[3], r[1])
              for r in outputs.read_table(paths["predictions"], outputs.PREDICTION_COLUMNS))
    chunk_cols = outputs.CHUNK_COLUMNS
    chunks = ((r[1], r[chunk_cols.index("score")], r[chunk_cols.index("call")])
              for r in outputs.read_table(paths["chunks"], chunk_cols))
    seq_cols = outputs.SEQUENCE_COLUMNS
    seqs = ((r[0], r[seq_cols.index("virus_score")], r[seq_cols.index("prediction")])
            for r in outputs.read_table(paths["sequences"], seq_cols))
    return {"frame": _level(frames, truth, threshold), "chunk": _level(chunks, truth),
            "sequence": _level(seqs, truth)}


def predict_threshold(pred_dir: Path) -> float | None:
    """The threshold the predict run used (its run.json), or None when not recorded."""
    import json

    try:
        run = json.loads(outputs.predict_paths(pred_dir)["run"].read_text())
        return float(run["params"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_threshold(pred_dir: Path) -> float:
    """The run's threshold, which evaluate needs to call frames as the run called chunks."""
    threshold = predict_threshold(pred_dir)
    if threshold is not None:
        return threshold
    paths = outputs.predict_paths(pred_dir)
    if not paths["predictions"].exists():  # not a predict output at all: say that first
        raise InputError(f"{paths['predictions']}: no such file (is this a predict output "
                         "directory?)")
    raise InputError(f"{paths['run']}: no threshold recorded (is this a finished predict "
                     "output?)")


# ------------------------------------------------------------------ figures
def _figure(title: str, xlabel: str, ylabel: str):  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.set_aspect("equal")
    return fig, ax


LEVEL_COLOURS = {"frame": "#7f7f7f", "chunk": "#1f77b4", "sequence": "#d62728"}


def plot_roc(levels: dict[str, Level], metrics: dict[str, Any], path: Path) -> None:
    fig, ax = _figure("ROC", "false positive rate", "true positive rate")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
    for name, lv in levels.items():
        area = metrics[name]["auroc"]
        if area is not None:
            fpr, tpr, _ = roc_curve(lv.labels, lv.scores)
            ax.plot(fpr, tpr, color=LEVEL_COLOURS[name], lw=2, label=f"{name} (AUROC {area:.3f})")
    ax.legend(loc="lower right")
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_pr(levels: dict[str, Level], metrics: dict[str, Any], path: Path) -> None:
    fig, ax = _figure("Precision-recall", "recall", "precision")
    for name, lv in levels.items():
        area = metrics[name]["auprc"]
        if area is not None:
            precision, recall, _ = pr_curve(lv.labels, lv.scores)
            # Precision at threshold k holds over the recall gained there: (r[k-1], r[k]].
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre",
                    color=LEVEL_COLOURS[name], lw=2, label=f"{name} (AUPRC {area:.3f})")
    ax.legend(loc="lower left")
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# ------------------------------------------------------------------ entry point
def run_evaluate(pred_dir: Path, truth: dict[str, bool], out_dir: Path | None = None,
                 truth_source: str = "") -> dict[str, Any]:
    """Compute metrics.json, roc.png and pr.png for a predict output; returns the metrics."""
    out_dir = Path(out_dir) if out_dir is not None else Path(pred_dir)
    threshold = _run_threshold(Path(pred_dir))
    levels = read_levels(Path(pred_dir), truth, threshold)
    if not levels["sequence"].labels.size and not levels["sequence"].n_no_call:
        raise InputError(f"{pred_dir}: no predicted sequence has a truth label "
                         "(do the ids match the inputs' first header words?)")
    metrics = {name: binary_metrics(lv.labels, lv.scores, lv.predicted)
               | {"n_no_call": lv.n_no_call, "n_unlabelled": lv.n_unlabelled}
               for name, lv in levels.items()}
    n_seq = metrics["sequence"]["n"] + metrics["sequence"]["n_no_call"]
    record = {
        "virnucpro_version": __version__, "pred_dir": str(Path(pred_dir).resolve()),
        "truth": truth_source, "positive_class": "virus",
        "threshold": threshold, "call_rule": CALL_RULE,
        "labels": {"given": len(truth), "matched_sequences": n_seq,
                   "without_prediction": len(truth) - n_seq},
        "levels": metrics,
    }
    if record["labels"]["without_prediction"]:
        log.warning("%d labelled sequences are not in %s", len(truth) - n_seq, pred_dir)
    outputs.make_output_dir(out_dir)
    paths = outputs.evaluate_paths(out_dir)
    plot_roc(levels, metrics, paths["roc"])
    plot_pr(levels, metrics, paths["pr"])
    files.write_json(paths["metrics"], record)
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What `evaluate` prints: the call rule, one line of metrics per level, and what each
    level left out."""
    lines = [f"calls: virus when score >= {record['threshold']:g} (run.json's threshold) at "
             "every level: frame score2, chunk score, sequence virus_score"]
    for level, m in record["levels"].items():
        fmt = {k: "n/a" if m[k] is None else f"{m[k]:.4f}"
               for k in ("accuracy", "precision", "recall", "f1", "auroc", "auprc")}
        lines.append(f"{level:>8}: n={m['n']} accuracy {fmt['accuracy']} precision "
                     f"{fmt['precision']} recall {fmt['recall']} F1 {fmt['f1']} AUROC "
                     f"{fmt['auroc']} AUPRC {fmt['auprc']}; left out: {m['n_no_call']} "
                     f"no_call, {m['n_unlabelled']} unlabelled")
    return lines
