"""`virnucpro evaluate`: metrics against hand-computed values and a pairwise reference."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from conftest import PREDICT_TRUTH, write_predict_output

from virnucpro.cli import main
from virnucpro.errors import InputError
from virnucpro.evaluate import (
    auroc,
    average_precision,
    binary_metrics,
    labels_from_fasta,
    read_labels,
    roc_curve,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ slow references
def pairwise_auroc(labels, scores) -> float:
    """P(score of a random virus > score of a random other), ties counting one half."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def stepwise_ap(labels, scores) -> float:
    """Average precision: call virus at each distinct score, add precision x recall gained."""
    n_pos, ap, last_recall = sum(labels), 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        called = [y for y, s in zip(labels, scores, strict=True) if s >= t]
        recall = sum(called) / n_pos
        ap += (recall - last_recall) * sum(called) / len(called)
        last_recall = recall
    return ap


# ------------------------------------------------------------------ metric functions
def test_binary_metrics_hand_computed():
    labels = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.2, 0.7, 0.2, 0.3, 0.1])
    m = binary_metrics(labels, scores, scores >= 0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert (m["n"], m["n_virus"], m["n_other"]) == (7, 3, 4)
    assert m["accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-12)
    # 12 virus/other pairs: 0.9 and 0.8 beat all four others, 0.2 beats 0.1 and ties 0.2.
    assert m["auroc"] == pytest.approx(9.5 / 12, abs=1e-12)
    # Thresholds 0.9, 0.8 (precision 1, recall 1/3 each), then 0.2 adds recall 1/3 at 3/6.
    assert m["auprc"] == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 1 / 2, abs=1e-12)


def test_curve_areas_match_slow_references():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 50):
        for _ in range(20):
            labels = rng.random(n) < 0.5
            labels[0], labels[1] = True, False
            scores = rng.integers(0, 6, n) / 5  # many ties
            assert auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores),
                                                          abs=1e-12)
            assert average_precision(labels, scores) == pytest.approx(
                stepwise_ap(list(labels), list(scores)), abs=1e-12)


def test_roc_curve_points():
    fpr, tpr, thresholds = roc_curve(np.array([1, 0, 1, 0], bool), np.array([0.8, 0.6, 0.6, 0.1]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thresholds.tolist() == [np.inf, 0.8, 0.6, 0.1]


def test_undefined_metrics_are_none():
    labels = np.array([0, 0, 0], bool)
    m = binary_metrics(labels, np.array([0.1, 0.2, 0.3]), np.zeros(3, bool))
    assert m["accuracy"] == 1.0
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None
    assert m["auroc"] is None and m["auprc"] is None


# ------------------------------------------------------------------ truth labels
def test_read_labels(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("seq_id\tlabel\n# a comment\nA\tvirus\n\nB\tother\tnote\nC\tOthers\n"
                    "D\tnot_virus\nE\tViral\n")
    assert read_labels(path) == {"A": True, "B": False, "C": False, "D": False, "E": True}
    path.write_text("A\tvirus\n")  # no header
    assert read_labels(path) == {"A": True}
    path.write_text("A\tvirus\nB\tplasmid\n")
    with pytest.raises(InputError, match=r"labels.tsv: line 2: label 'plasmid'"):
        read_labels(path)
    path.write_text("A\tvirus\nA\tother\n")
    with pytest.raises(InputError, match="labelled both ways"):
        read_labels(path)
    path.write_text("A virus\n")
    with pytest.raises(InputError, match="line 1: expected seq_id<TAB>label"):
        read_labels(path)


def test_labels_from_fasta(tmp_path):
    (tmp_path / "v.fa").write_text(">v1 a virus\nACGT\n>v2\nACGT\n")
    (tmp_path / "o.fa").write_text(">o1\nACGT\n")
    assert labels_from_fasta([str(tmp_path / "v.fa")], [str(tmp_path / "o.fa")]) == {
        "v1": True, "v2": True, "o1": False}
    with pytest.raises(InputError, match="also in a --viral file"):
        labels_from_fasta([str(tmp_path / "v.fa")], [str(tmp_path / "v.fa")])


# ------------------------------------------------------------------ end to end
def _truth_file(path: Path) -> Path:
    path.write_text("seq_id\tlabel\n" + "".join(f"{k}\t{v}\n" for k, v in PREDICT_TRUTH.items()))
    return path


def _expect(m: dict, confusion: tuple[int, int, int, int], auroc_value: Fraction,
            auprc_value: float | None = None) -> None:
    tp, fp, tn, fn = confusion
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    n = tp + fp + tn + fn
    assert m["n"] == n and m["accuracy"] == pytest.approx((tp + tn) / n, abs=1e-12)
    assert m["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    assert m["recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    assert m["auroc"] == pytest.approx(float(auroc_value), abs=1e-12)
    if auprc_value is not None:
        assert m["auprc"] == pytest.approx(auprc_value, abs=1e-12)


def test_evaluate_hand_made_prediction(tmp_path):
    pred = write_predict_output(tmp_path / "pred")
    truth = _truth_file(tmp_path / "labels.tsv")
    out = tmp_path / "eval"
    assert main(["evaluate", str(pred), "--truth", str(truth), "-o", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    levels = record["levels"]
    # Sequences: v1 0.525 virus (tp), v2 0.2 (fn), o1 0.4 (tn), o2 0.55 virus (fp); o3 has no
    # call and x1 no label. Pairs: only 0.525 > 0.4 of 4. Thresholds: 0.55 (P 0), 0.525
    # (P 1/2, R 1/2), 0.4, 0.2 (P 1/2, R 1): AP = 1/4 + 1/4.
    _expect(levels["sequence"], (1, 1, 1, 1), Fraction(1, 4), 0.5)
    assert (levels["sequence"]["n_no_call"], levels["sequence"]["n_unlabelled"]) == (1, 1)
    # Chunks: virus 0.75 (tp), 0.3 (fn), 0.2 (fn); other 0.4 (tn), 0.55 (fp); 2 no_call.
    _expect(levels["chunk"], (1, 1, 1, 2), Fraction(2, 6))
    assert (levels["chunk"]["n_no_call"], levels["chunk"]["n_unlabelled"]) == (2, 1)
    # Frames: virus 0.9, 0.6 (tp), 0.3, 0.2 (fn); other 0.1 (tn), 0.7, 0.55 (fp).
    _expect(levels["frame"], (2, 2, 1, 2), Fraction(3 + 2 + 1 + 1, 12))
    assert (levels["frame"]["n_no_call"], levels["frame"]["n_unlabelled"]) == (0, 1)
    assert record["labels"] == {"given": 6, "matched_sequences": 5, "without_prediction": 1}
    assert record["threshold"] == 0.5 and record["positive_class"] == "virus"
    for name in ("roc.png", "pr.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def _rethresholded(pred: Path, threshold: float) -> Path:
    """The hand-made output as re-thresholding leaves it: run.json and the chunk and
    sequence calls at `threshold`; prediction_results.txt (the original's argmax) as it was."""
    for name, score_col, call_col in (("chunks.tsv", 5, 6), ("sequences.tsv", 5, 6)):
        lines = (pred / name).read_text().splitlines(keepends=True)
        rows = [line.rstrip("\n").split("\t") for line in lines[1:]]
        for row in rows:
            if row[score_col]:
                row[call_col] = "virus" if float(row[score_col]) >= threshold else "not_virus"
        (pred / name).write_text(lines[0] + "".join("\t".join(r) + "\n" for r in rows))
    (pred / "run.json").write_text(json.dumps({"params": {"threshold": threshold}}))
    return pred


def test_evaluate_after_rethresholding_uses_one_threshold(tmp_path, capsys):
    """Issue 21: at threshold 0.2 frames were still called by the 0.5 argmax of
    prediction_results.txt while chunks and sequences used 0.2."""
    pred = _rethresholded(write_predict_output(tmp_path / "pred"), 0.2)
    assert main(["evaluate", str(pred), "--truth", str(_truth_file(tmp_path / "l.tsv"))]) == 0
    record = json.loads((pred / "metrics.json").read_text())
    assert record["threshold"] == 0.2
    assert record["call_rule"].startswith("virus when score >= threshold (run.json's)")
    confusion = {level: tuple(m["confusion"][k] for k in ("tp", "fp", "tn", "fn"))
                 for level, m in record["levels"].items()}
    # score2 >= 0.2: virus 0.9, 0.6, 0.3, 0.2 (tp); other 0.7, 0.55 (fp), 0.1 (tn). The
    # argmax would have given tp 2 (0.9, 0.6) and fn 2.
    assert confusion["frame"] == (4, 2, 1, 0)
    # Chunks: virus 0.75, 0.3, 0.2 (tp); other 0.4, 0.55 (fp). Sequences: v1, v2 (tp); o1, o2.
    assert confusion["chunk"] == (3, 2, 0, 0)
    assert confusion["sequence"] == (2, 2, 0, 0)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("calls: virus when score >= 0.2 (run.json's threshold) at every level: "
                      "frame score2, chunk score, sequence virus_score")
    assert out[1].startswith("   frame: n=7 ") and out[1].endswith(
        "; left out: 0 no_call, 1 unlabelled")
    assert out[2].startswith("   chunk: n=5 ") and out[2].endswith(
        "; left out: 2 no_call, 1 unlabelled")
    assert out[3].startswith("sequence: n=4 accuracy 0.5000 precision 0.5000 recall 1.0000 ")
    assert out[3].endswith("; left out: 1 no_call, 1 unlabelled")


def test_evaluate_needs_the_runs_threshold(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    (pred / "run.json").write_text("{}")
    assert main(["evaluate", str(pred), "--truth", str(_truth_file(tmp_path / "l.tsv"))]) == 1
    assert capsys.readouterr().err == (f"virnucpro: error: {pred / 'run.json'}: no threshold "
                                       "recorded (is this a finished predict output?)\n")


def test_evaluate_with_fasta_truth_writes_into_pred_dir(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    (tmp_path / "v.fa").write_text(">v1\nACGT\n>v2\nACGT\n")
    (tmp_path / "o.fa").write_text(">o1\nACGT\n>o2\nACGT\n>o3\nACGT\n")
    assert main(["evaluate", str(pred), "--viral", str(tmp_path / "v.fa"),
                 "--other", str(tmp_path / "o.fa")]) == 0
    record = json.loads((pred / "metrics.json").read_text())
    assert record["levels"]["sequence"]["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert (pred / "roc.png").is_file() and (pred / "pr.png").is_file()
    assert "sequence: n=4 accuracy 0.5000" in capsys.readouterr().out


def test_evaluate_errors(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    assert main(["evaluate", str(pred)]) == 1
    assert "give either --truth" in capsys.readouterr().err
    other = tmp_path / "labels.tsv"
    other.write_text("zz\tvirus\n")
    assert main(["evaluate", str(pred), "--truth", str(other)]) == 1
    assert "no predicted sequence has a truth label" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--truth", str(other)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("virnucpro: error: ") and "prediction_results.txt: no such file" in err
    (pred / "chunks.tsv").write_text("chunk\tscore\n")
    assert main(["evaluate", str(pred), "--truth", str(_truth_file(other))]) == 1
    assert "chunks.tsv: header is" in capsys.readouterr().err
