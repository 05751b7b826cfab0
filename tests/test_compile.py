"""Regional torch.compile (`--compile`): same numbers as the eager layers, every graph built at
start-up, a clean fall-back when compiling fails. Runs inductor's CPU backend (needs a C++
compiler), so the real compiler runs on the tiny models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import orf_rich_fasta, predict_args

from virnucpro.cli import main
from virnucpro.models.dnabert import embed_dnabert
from virnucpro.models.esm import embed_esm
from virnucpro.outputs import predict_paths
from virnucpro.runtime.compile import compile_models
from virnucpro.runtime.worker import Settings, WorkerSpec, load_models

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="inductor's CPU backend needs a C++ compiler")


def _models(tiny_models, compile_layers: bool):
    spec = WorkerSpec(dnabert_dir=str(tiny_models.dnabert_dir), esm_dir=str(tiny_models.esm_dir),
                      classifier_path=None, device="cpu", threads=2)
    return load_models(spec, Settings("fp32", 512, 512, compile_layers))


def _rows(start: int, lengths: list[int]) -> list[list[int]]:
    return [[start, *[5 + (i * 7 + n) % 20 for i in range(n)], 2] for n in lengths]


# Batches a run meets after start-up: other row counts, lengths and paddings than the warm-up's.
BATCHES = ([40] * 5, [61, 61, 12], [5], [90, 33, 33, 8, 8, 8, 2], [18, 18])


@needs_compiler
def test_compiled_layers_embed_as_eager_and_compile_nothing_after_start_up(tiny_models):
    from torch._dynamo.utils import counters

    eager, compiled = _models(tiny_models, False), _models(tiny_models, True)
    report = compile_models(compiled)
    assert report["compiled"] is True and report["compile_seconds"] > 0
    assert all(type(layer).__name__ == "OptimizedModule"
               for net in (compiled.dnabert, compiled.esm) for layer in net.encoder.layer)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # both models went through the compiler
    with torch.inference_mode():
        for lengths in BATCHES:
            dna, prot = _rows(1, lengths), _rows(0, lengths)
            for embed, a, b, ids in ((embed_dnabert, eager.dnabert, compiled.dnabert, dna),
                                     (embed_esm, eager.esm, compiled.esm, prot)):
                assert (embed(a, ids) - embed(b, ids)).abs().max() <= 1e-5
    # The warm-up built every graph: 2 models x 12 layers ran 5 new shapes without compiling.
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_failed_compile_leaves_the_eager_layers(tiny_models, monkeypatch, caplog):
    models = _models(tiny_models, True)
    layers = [list(net.encoder.layer) for net in (models.dnabert, models.esm)]

    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise RuntimeError("no C++ compiler found\nlong details")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken())
    report = compile_models(models)
    assert report["compiled"] is False
    assert report["compile_error"] == "RuntimeError: no C++ compiler found"
    assert [list(net.encoder.layer) for net in (models.dnabert, models.esm)] == layers
    assert "torch.compile failed, running uncompiled" in caplog.text
    with torch.inference_mode():
        assert embed_esm(models.esm, _rows(0, [7, 3])).shape == (2, 32)


@needs_compiler
def test_predict_with_compile_scores_as_without(tiny_models, tmp_path):
    fasta = orf_rich_fasta(tmp_path / "in.fa", 12, seed=4)
    runs = {}
    for flag in ("--compile", None):
        out = tmp_path / (flag or "default")
        assert main(predict_args(tiny_models, [fasta], out, "--device", "cpu",
                                 *([flag] if flag else []))) == 0
        runs[flag] = out
    plans = {flag: json.loads(predict_paths(out)["run"].read_text())["plan"]
             for flag, out in runs.items()}
    assert plans["--compile"]["compile"] is True and plans["--compile"]["workers"][0]["compiled"]
    assert plans[None]["compile"] is False  # on a CPU the default is eager
    assert "compiled" not in plans[None]["workers"][0]
    tables = {flag: [line.split("\t") for line in
                     predict_paths(out)["predictions"].read_text().splitlines()[1:]]
              for flag, out in runs.items()}
    compiled, eager = tables["--compile"], tables[None]
    assert [row[0] for row in compiled] == [row[0] for row in eager] and len(eager) > 20
    scores = np.array([[float(x) for x in row[2:]] for row in compiled])
    expected = np.array([[float(x) for x in row[2:]] for row in eager])
    assert np.abs(scores - expected).max() <= 1e-4
