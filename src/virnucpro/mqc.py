"""MultiQC custom content: one sample's sequence calls and score histogram.

`multiqc DIR...` picks up every `*_mqc.json` under the directories it is given and merges
files of the same section id over samples, so each output directory holds one sample's
numbers and MultiQC draws all samples together, in one "VirNucPro" section with two plots:
the number of sequences per call (bar graph) and the histogram of sequence scores (line
graph, one line per sample). A custom-content JSON file holds one plot, hence two files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from virnucpro.commit import Switch
from virnucpro.errors import InputError
from virnucpro.files import write_json
from virnucpro.outputs import HISTOGRAM_BINS, MQC_FILES, predict_paths

__all__ = ["CALLS", "HISTOGRAM_BINS", "MQC_FILES", "mqc_content", "mqc_from_output",
           "score_histogram", "write_mqc"]

CALLS = ("virus", "not_virus", "no_call")  # sequences.tsv `prediction` values
_PARENT = {"parent_id": "virnucpro", "parent_name": "VirNucPro",
           "parent_description": "Viral sequences found by virnucpro predict: per-sequence "
                                 "calls and scores (sequences.tsv)."}
_COLOURS = {"virus": "#d62728", "not_virus": "#1f77b4", "no_call": "#999999"}


def score_histogram(scores: Iterable[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of scores in [k / bins, (k + 1) / bins); a score of 1 goes to the last bin."""
    counts = [0] * bins
    for s in scores:
        if not 0 <= s <= 1:
            raise ValueError(f"a sequence score must be in [0, 1], got {s}")
        counts[min(int(s * bins), bins - 1)] += 1
    return counts


def mqc_content(sample: str, counts: Mapping[str, int],
                histogram: Sequence[int]) -> dict[str, dict]:
    """The custom-content documents, by file name, for one sample: `counts` per call (CALLS;
    missing calls count 0) and a score histogram over equal bins of [0, 1]."""
    unknown = set(counts) - set(CALLS)
    if unknown:
        raise ValueError(f"unknown calls {sorted(unknown)}; expected some of {CALLS}")
    width = 1 / len(histogram) if histogram else 1.0
    calls = {
        **_PARENT, "id": "virnucpro_calls", "section_name": "Sequence calls",
        "description": "Sequences per call: virus and not_virus at the run's threshold, "
                       "no_call for sequences without a stop-free frame.",
        "plot_type": "bargraph",
        "pconfig": {"id": "virnucpro_calls_plot", "title": "VirNucPro: sequence calls",
                    "ylab": "Sequences", "cpswitch_counts_label": "Sequences"},
        "categories": {c: {"name": c, "color": _COLOURS[c]} for c in CALLS},
        "data": {sample: {c: int(counts.get(c, 0)) for c in CALLS}},
    }
    scores = {
        **_PARENT, "id": "virnucpro_scores", "section_name": "Sequence scores",
        "description": f"Sequences per virus_score bin of width {width:g} (at the bin's "
                       "centre); no_call sequences have no score.",
        "plot_type": "linegraph",
        "pconfig": {"id": "virnucpro_scores_plot", "title": "VirNucPro: sequence scores",
                    "xlab": "virus_score", "ylab": "Sequences", "xmin": 0, "xmax": 1},
        "data": {sample: {round((k + 0.5) * width, 6): int(n)
                          for k, n in enumerate(histogram)}},
    }
    return {MQC_FILES["calls"]: calls, MQC_FILES["scores"]: scores}


def write_mqc(out_dir: Path | str, sample: str, counts: Mapping[str, int],
              histogram: Sequence[int], switch: Switch | None = None) -> list[Path]:
    """Write one sample's custom-content files into `out_dir`; returns their paths. With a
    `switch`, they are staged in it, to move into place with the run's other files."""
    paths = []
    for name, doc in mqc_content(sample, counts, histogram).items():
        path = Path(out_dir) / name
        if switch is not None:
            switch.write_json(path, doc)
        else:
            write_json(path, doc)
        paths.append(path)
    return paths


def _calls_and_scores(path: Path) -> tuple[dict[str, int], list[float]]:
    """Counts per prediction and the virus_scores of a sequences.tsv."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header = lines[0].split("\t") if lines else []
    if "prediction" not in header or "virus_score" not in header:
        raise InputError(f"{path}: not a sequences.tsv (header {header!r})")
    col_call, col_score = header.index("prediction"), header.index("virus_score")
    counts, scores = dict.fromkeys(CALLS, 0), []
    for n, line in enumerate(lines[1:], 2):
        row = line.split("\t")
        if len(row) != len(header) or row[col_call] not in counts:
            raise InputError(f"{path}: line {n}: not a sequences.tsv row: {line!r}")
        counts[row[col_call]] += 1
        if row[col_score]:
            scores.append(float(row[col_score]))
    return counts, scores


def mqc_from_output(out_dir: Path | str, sample: str | None = None) -> list[Path]:
    """Write the custom-content files of a finished predict output, from its sequences.tsv.
    The sample is named after the directory unless `sample` is given."""
    out_dir = Path(out_dir)
    counts, scores = _calls_and_scores(predict_paths(out_dir)["sequences"])
    name = sample if sample is not None else out_dir.resolve().name
    return write_mqc(out_dir, name, counts, score_histogram(scores))
