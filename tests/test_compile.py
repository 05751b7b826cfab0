"""Regional torch.compile (`--compile`): same numbers as the eager layers, every graph built at
start-up (at real batch sizes, both alignments), one clear error when compiling fails. Runs
inductor's CPU backend (needs a C++ compiler), so the real compiler runs on the tiny models."""

from __future__ import annotations

import json
import shutil
import sysconfig

import numpy as np
import pytest
import torch
from conftest import SHARD_SETTINGS, predict_args

from virnucpro.cli import main
from virnucpro.models.dnabert import embed_dnabert
from virnucpro.models.esm import embed_esm
from virnucpro.outputs import predict_paths
from virnucpro.runtime.compile import (
    WARM_TOKENS,
    CompileError,
    compile_models,
    toolchain_missing,
    warm_batches,
)
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


def test_a_failed_compile_is_one_clear_error_and_leaves_the_eager_layers(tiny_models,
                                                                        monkeypatch):
    models = _models(tiny_models, True)
    layers = [list(net.encoder.layer) for net in (models.dnabert, models.esm)]

    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise RuntimeError("inductor blew up\nlong details")

    monkeypatch.setattr("virnucpro.runtime.compile.toolchain_missing", lambda device: None)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken())
    with pytest.raises(CompileError) as err:
        compile_models(models)
    assert str(err.value) == ("compiling the layers on cpu failed (RuntimeError: inductor blew "
                              "up); run with --no-compile to score with the eager layers")
    assert [list(net.encoder.layer) for net in (models.dnabert, models.esm)] == layers
    with torch.inference_mode():
        assert embed_esm(models.esm, _rows(0, [7, 3])).shape == (2, 32)


def test_a_missing_toolchain_is_named_before_compiling(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert toolchain_missing("cpu") == (f"a C++ compiler (c++, g++, clang++ not on PATH); "
                                        f"Python's headers ({tmp_path}/Python.h)")
    assert toolchain_missing("cuda").startswith("a C compiler (cc, gcc, clang not on PATH)")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module))
    with pytest.raises(CompileError, match=r"cannot compile the layers on cpu: no a C\+\+ "
                                           r"compiler .*; install it or run with --no-compile"):
        compile_models(_models(tiny_models, True))
    assert compiled == []  # nothing was tried


def test_compiling_by_default_only_where_the_toolchain_is_there():
    from virnucpro.runtime.engine import Request, settle_start

    gpu = {"compute_capability": "9.0", "compile_missing": None}
    assert settle_start([gpu, gpu], Request(), None).compile is True
    bare = {**gpu, "compile_missing": "a C compiler (cc, gcc, clang not on PATH)"}
    assert settle_start([gpu, bare], Request(), None).compile is False
    assert settle_start([bare], Request(compile=True), None).compile is True  # asked: it fails


def test_warm_up_covers_both_alignments_at_a_real_batch_size():
    batches = warm_batches(WARM_TOKENS["cuda"])
    lengths = {max(b) for b in batches}
    assert {n % 8 == 0 for n in lengths} == {True, False}
    assert max(sum(b) for b in batches) > 0.9 * WARM_TOKENS["cuda"]  # not 3 x 37 tokens
    assert sorted(len(set(b)) for b in batches) == [1, 1, 1, 1, 2, 2]  # a mask in two
    assert sorted(len(b) for b in batches)[:2] == [1, 1]  # the single-row graph


def _realistic_batches(budget: int) -> list[list[int]]:
    """Token lengths of the batches a run over 500 bp chunks and 150-300 bp reads meets: most
    proteins 166 residues (168 tokens), the rest shorter, cut by the engine's own batching."""
    from virnucpro.runtime.batching import token_batches

    rng = np.random.default_rng(3)
    lengths = [168] * 60 + [int(n) for n in rng.integers(20, 168, 60)] + [102] * 30
    rng.shuffle(lengths)
    return [[lengths[i] for i in batch] for batch in token_batches(lengths, budget)]


@needs_compiler
def test_no_recompile_over_realistic_shapes(tiny_models):
    """After the warm-up, every batch of a realistic run (aligned and unaligned lengths,
    padded and not, last short batches) runs on the graphs built: none compiles again."""
    models = _models(tiny_models, True)
    compile_models(models)
    batches = _realistic_batches(2048) + _realistic_batches(700)
    assert {max(b) % 8 == 0 for b in batches} == {True, False}
    with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
        for lengths in batches:
            embed_dnabert(models.dnabert, _rows(1, [n - 2 for n in lengths]))
            embed_esm(models.esm, _rows(0, [n - 2 for n in lengths]))


@needs_compiler
def test_predict_with_compile_scores_as_without(tiny_models, shared_run, tmp_path):
    settings = SHARD_SETTINGS
    base = shared_run("orf24+empty", *settings)  # eager: test_shards' single run
    runs = {None: base.out, "--compile": tmp_path / "--compile"}
    assert main(predict_args(tiny_models, [base.input], runs["--compile"], *settings,
                             "--compile")) == 0
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
