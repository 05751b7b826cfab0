"""workflow/Snakefile: the real snakemake runs one input as shards and merges them, and the
merged directory holds the bytes of one `virnucpro predict` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARD_SETTINGS

import virnucpro

pytestmark = pytest.mark.slow

SNAKEFILE = ROOT / "workflow" / "Snakefile"
OPTIONS = {"device": "cpu", "threads": "1", "unit_frames": "24", "threshold": "0.3"}


def _files(out: Path) -> dict[str, bytes]:
    """Every file under `out` but run.json (timings) and the shard directories. The MultiQC
    files name their sample after the output directory: that name is masked."""
    def data(p: Path) -> bytes:
        raw = p.read_bytes()
        return raw.replace(f'"{out.name}"'.encode(), b'"SAMPLE"') \
            if p.name.endswith("_mqc.json") else raw
    return {str(p.relative_to(out)): data(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json" and p.relative_to(out).parts[0] != "shards"}


def test_snakemake_shards_then_merge_equal_one_run(tiny_models, shared_run, tmp_path):
    pytest.importorskip("snakemake", reason="snakemake is not installed (pip install "
                                            "'.[workflow]')")
    # Records without a frame at the end: test_shards.py's single run, with OPTIONS.
    base = shared_run("orf24+empty", *SHARD_SETTINGS)
    inp, single = base.input, base.out

    out = tmp_path / "out"
    config = {"input": inp, "outdir": out, "shards": 2, "dnabert": tiny_models.dnabert_dir,
              "esm": tiny_models.esm_dir, "model_path": tiny_models.classifier_path,
              "offline": 1, "virnucpro": f"{sys.executable} -m virnucpro", **OPTIONS}
    # The jobs import this checkout's virnucpro, as this process does.
    src = str(Path(virnucpro.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "2",
         "--directory", str(tmp_path), "--config", *(f"{k}={v}" for k, v in config.items())],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in sorted((out / "shards").iterdir())] == ["1", "2"]
    assert all((out / "shards" / i / "shard.json").is_file() for i in ("1", "2"))

    merged, expected = _files(out), _files(single)
    assert sorted(merged) == sorted(expected) and len(expected) >= 5
    for name, data in expected.items():
        assert merged[name] == data, name
    run, ref = (json.loads((d / "run.json").read_text()) for d in (out, single))
    assert run["fingerprint"] == ref["fingerprint"] and run["counts"] == ref["counts"]
    assert [s["shard"] for s in run["timing"]["shards"]] == ["1/2", "2/2"]
