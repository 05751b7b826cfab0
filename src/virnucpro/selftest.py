"""`virnucpro selftest`: the whole pipeline on the bundled example with tiny random models.

It proves the installation works (reading, translation, both embedders, the classifier, the
writer, resume bookkeeping) without downloading anything. The scores of random models mean
nothing; the checks are about the pipeline, not about biology.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from virnucpro import outputs

EXAMPLE = "example.fa"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def example_path() -> Path:
    """The bundled example FASTA."""
    return Path(str(resources.files("virnucpro") / "data" / EXAMPLE))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _check_outputs(out: Path, n_records: int, n_frames: int) -> list[Check]:
    paths = outputs.predict_paths(out)
    seqs = _rows(paths["sequences"])
    frames = _rows(paths["predictions"])
    highest = _rows(paths["highest"])
    chunks = _rows(paths["chunks"])
    run = json.loads(paths["run"].read_text())
    ids = [r["Modified_ID"] for r in highest]
    scored = {r["chunk_id"] for r in chunks if r["n_frames"] != "0"}
    return [
        Check("every output file written", all(p.exists() for p in paths.values())),
        Check("one sequences.tsv row per input record", len(seqs) == n_records,
              f"{len(seqs)} rows, {n_records} records"),
        Check("one prediction row per stop-free frame", len(frames) == n_frames,
              f"{len(frames)} rows, {n_frames} frames"),
        Check("scores are probabilities", all(
            abs(float(r["score1"]) + float(r["score2"]) - 1) < 1e-4 for r in frames)),
        Check("one highest-score row per scored chunk, sorted", ids == sorted(scored)),
        Check("every sequence has a call", all(
            r["prediction"] in ("virus", "not_virus", "no_call") for r in seqs)),
        Check("run.json counts agree", run["counts"]["frames"] == n_frames
              and run["counts"]["sequences"] == n_records),
    ]


def run_selftest(workdir: Path | None = None,
                 say: Callable[[str], None] = print) -> list[Check]:
    """Run the pipeline on the example with tiny models; return the checks."""
    from virnucpro.frames import iter_record_frames
    from virnucpro.predict import PredictConfig, run_predict
    from virnucpro.reader import read_records
    from virnucpro.runtime.plan import RuntimeConfig
    from virnucpro.testing import make_tiny_models

    with tempfile.TemporaryDirectory(prefix="virnucpro-selftest-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        say("writing tiny random models ...")
        models = make_tiny_models(root / "models")
        example = example_path()
        records = list(iter_record_frames(read_records([str(example)]), 500))
        n_frames = sum(len(fs) for rf in records for fs in rf.frames)
        say(f"running predict on {example.name} ({len(records)} records, {n_frames} frames) ...")
        out = root / "predict"
        runtime = RuntimeConfig(dnabert=str(models.dnabert_dir), esm=str(models.esm_dir),
                                device="cpu", offline=True, progress=False)
        cfg = PredictConfig(inputs=(str(example),), output_dir=out, runtime=runtime,
                            classifier=str(models.classifier_path), force=True,
                            command_line=("virnucpro", "selftest"))
        run_predict(cfg)
        checks = _check_outputs(out, len(records), n_frames)
        again = run_predict(replace(cfg, force=False))
        checks.append(Check("a rerun of a finished run is a no-op",
                            again.get("fingerprint") == json.loads(
                                (out / "run.json").read_text())["fingerprint"]))
    return checks
