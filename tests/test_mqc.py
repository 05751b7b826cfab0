"""mqc.py: MultiQC custom content from counts and from a finished output, read back by the
real `multiqc` over two samples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_predict_output

from virnucpro.errors import InputError
from virnucpro.mqc import (
    CALLS,
    MQC_FILES,
    mqc_content,
    mqc_from_output,
    score_histogram,
    write_mqc,
)
from virnucpro.outputs import SEQUENCE_COLUMNS, tsv_row

# A second hand-made sequences.tsv (README columns): two virus, one not_virus, two no_call.
SAMPLE_B = [("a", 900, 3, 3, 9, "0.97", "virus", ""), ("b", 600, 2, 2, 4, "1.0", "virus", ""),
            ("c", 300, 1, 1, 2, "0.05", "not_virus", ""), ("d", 0, 0, 0, 0, "", "no_call",
                                                           "empty"),
            ("e", 120, 1, 0, 0, "", "no_call", "no_stop_free_frame")]


def _sample_b(out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "sequences.tsv").write_text(tsv_row(SEQUENCE_COLUMNS)
                                       + "".join(tsv_row(r) for r in SAMPLE_B))
    return out


def test_score_histogram():
    expected = [2, 1] + [0] * 8 + [1] + [0] * 8 + [2]
    assert score_histogram([0, 0.0499, 0.05, 0.5, 0.999, 1.0]) == expected
    assert score_histogram([0.2, 0.7], bins=2) == [1, 1] and score_histogram([]) == [0] * 20
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="must be in"):
            score_histogram([bad])


def test_mqc_content():
    docs = mqc_content("S", {"virus": 2, "no_call": 1}, [1, 0, 3, 4])
    assert list(docs) == list(MQC_FILES.values())
    calls, scores = docs.values()
    assert calls["id"] == "virnucpro_calls" and calls["plot_type"] == "bargraph"
    assert calls["data"] == {"S": {"virus": 2, "not_virus": 0, "no_call": 1}}
    assert list(calls["categories"]) == list(CALLS)
    assert scores["plot_type"] == "linegraph"
    assert scores["data"] == {"S": {0.125: 1, 0.375: 0, 0.625: 3, 0.875: 4}}
    assert {calls["parent_id"], scores["parent_id"]} == {"virnucpro"}
    with pytest.raises(ValueError, match=re.escape("unknown calls ['viral']")):
        mqc_content("S", {"viral": 1}, [])


def test_write_mqc_and_from_output(tmp_path):
    paths = write_mqc(tmp_path, "S", {"virus": 1}, [1])
    assert [p.name for p in paths] == list(MQC_FILES.values())
    assert json.loads(paths[0].read_text())["data"] == {"S": {"virus": 1, "not_virus": 0,
                                                              "no_call": 0}}
    out = _sample_b(tmp_path / "run_b")
    mqc_from_output(out)
    calls, scores = (json.loads((out / name).read_text()) for name in MQC_FILES.values())
    assert calls["data"] == {"run_b": {"virus": 2, "not_virus": 1, "no_call": 2}}
    assert scores["data"]["run_b"]["0.075"] == 1 and scores["data"]["run_b"]["0.975"] == 2
    assert sum(scores["data"]["run_b"].values()) == 3
    mqc_from_output(out, sample="B")
    assert list(json.loads((out / MQC_FILES["calls"]).read_text())["data"]) == ["B"]

    (out / "sequences.tsv").write_text("seq_id\tscore\n")
    with pytest.raises(InputError, match=r"not a sequences\.tsv"):
        mqc_from_output(out)
    (out / "sequences.tsv").write_text(tsv_row(SEQUENCE_COLUMNS) + "x\t1\t1\t1\t1\t0.5\tmaybe\t\n")
    with pytest.raises(InputError, match=r"line 2: not a sequences\.tsv row"):
        mqc_from_output(out)
    with pytest.raises(InputError, match="cannot read"):
        mqc_from_output(tmp_path / "missing")


def test_multiqc_reads_both_samples(tmp_path):
    pytest.importorskip("multiqc", reason="multiqc is not installed (pip install '.[report]')")
    a = write_predict_output(tmp_path / "run_a")  # conftest's output: 3 virus, 2 not, 1 no_call
    b = _sample_b(tmp_path / "run_b")
    for out in (a, b):
        mqc_from_output(out)
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "multiqc", str(a), str(b), "-o", str(report),
                           "--no-ansi"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((report / "multiqc_data" / "multiqc_data.json").read_text())
    raw = data["report_saved_raw_data"]
    assert raw["multiqc_virnucpro_calls_plot"] == {
        "run_a": {"virus": 3, "not_virus": 2, "no_call": 1},
        "run_b": {"virus": 2, "not_virus": 1, "no_call": 2}}
    hist = raw["multiqc_virnucpro_scores_plot"]
    assert sorted(hist) == ["run_a", "run_b"]
    assert {k: v for k, v in hist["run_a"].items() if v} == {
        "0.225": 1, "0.425": 1, "0.525": 1, "0.575": 1, "0.825": 1}
    assert {"virnucpro_calls_plot", "virnucpro_scores_plot"} <= set(data["report_plot_data"])
    assert "VirNucPro" in (report / "multiqc_report.html").read_text()
