"""The worker: scoring a unit, and the out-of-memory backoff (error injected on CPU, and a
double that really holds memory per row; tests/gpu runs that double under a CUDA cap)."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import orf_rich_fasta

import virnucpro.models.dnabert
import virnucpro.models.esm
from virnucpro.frames import iter_record_frames
from virnucpro.reader import read_records
from virnucpro.runtime.batching import iter_units
from virnucpro.runtime.protocol import Settings, WorkerSpec
from virnucpro.runtime.worker import load_models, prepare_models, score_unit


def one_unit(path: Path):
    """Every frame of 12 generated records in one work unit."""
    orf_rich_fasta(path, 12)
    (u, _), = iter_units(iter_record_frames(read_records([str(path)]), 500), 10_000)
    assert u.n_frames >= 12
    return u


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    return one_unit(tmp_path_factory.mktemp("in") / "in.fa")


def _models(tiny_models, **kw):
    settings = Settings("fp32", kw.pop("dna", 4096), kw.pop("esm", 4096))
    spec = WorkerSpec(dnabert_dir=str(tiny_models.dnabert_dir), esm_dir=str(tiny_models.esm_dir),
                      classifier_path=kw.pop("classifier", str(tiny_models.classifier_path)),
                      device="cpu", threads=1, **kw)
    return load_models(spec, settings)


def _oom_above(fn, max_rows, calls):
    def wrapped(model, token_ids):
        calls.append(len(token_ids))
        if len(token_ids) > max_rows:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return fn(model, token_ids)
    return wrapped


def test_oom_halves_the_batch_and_loses_nothing(tiny_models, unit, monkeypatch, caplog):
    models = _models(tiny_models)
    with torch.inference_mode():
        expect = score_unit(models, unit)
    dna_calls: list[int] = []
    esm_calls: list[int] = []
    monkeypatch.setattr(virnucpro.models.dnabert, "embed_dnabert",
                        _oom_above(virnucpro.models.dnabert.embed_dnabert, 3, dna_calls))
    monkeypatch.setattr(virnucpro.models.esm, "embed_esm",
                        _oom_above(virnucpro.models.esm.embed_esm, 2, esm_calls))
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        got = score_unit(models, unit)
    # Every failing batch was split until it fit; every frame was still scored, in order.
    assert max(dna_calls) > 3 and max(esm_calls) > 2
    assert got.scores.shape == expect.scores.shape == (unit.n_frames, 2)
    np.testing.assert_allclose(got.scores, expect.scores, atol=1e-5)
    oom_logs = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(oom_logs) == 1, "the backoff is logged once per worker"


@dataclass
class MemoryMeter:
    """Bytes held by the live blocks of `allocating` doubles. A block's bytes are subtracted
    when the block is freed (weakref.finalize), so `live` is what is really still held."""

    cap: int | None  # None: the device's allocator is the limit (tests/gpu caps CUDA itself)
    live: int = 0
    peak: int = 0

    def take(self, nbytes: int, device: str) -> torch.Tensor:
        if self.cap is not None and self.live + nbytes > self.cap:
            raise torch.OutOfMemoryError(f"double: {self.live} + {nbytes} bytes > {self.cap}")
        block = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(block, self._free, nbytes)
        return block

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def allocating(fn, meter: MemoryMeter, row_bytes: int, device: str, calls: list[int]):
    """`fn` (an embed function) that first holds `row_bytes` per row, as activations would.
    The blocks sit in a local list, so after an out-of-memory error they stay alive for as
    long as its traceback does (model activations are held by frame locals the same way)."""
    def wrapped(model, token_ids):
        calls.append(len(token_ids))
        held = []
        for _ in token_ids:
            held.append(meter.take(row_bytes, device))
        return fn(model, token_ids)
    return wrapped


ROW_BYTES = 1 << 20


def test_oom_backoff_frees_the_failed_attempt_before_retrying(tiny_models, unit, monkeypatch,
                                                              caplog):
    """Room for 3.5 rows: a batch that does not fit completes in halves, with the scores of
    an unconstrained run. Retrying inside the `except` block would keep the failed attempt's
    rows alive through the traceback, so no half would fit and the unit would fail."""
    models = _models(tiny_models)
    with torch.inference_mode():
        expect = score_unit(models, unit)
    meter = MemoryMeter(cap=ROW_BYTES * 7 // 2)
    dna_calls: list[int] = []
    esm_calls: list[int] = []
    monkeypatch.setattr(virnucpro.models.dnabert, "embed_dnabert", allocating(
        virnucpro.models.dnabert.embed_dnabert, meter, ROW_BYTES, "cpu", dna_calls))
    monkeypatch.setattr(virnucpro.models.esm, "embed_esm", allocating(
        virnucpro.models.esm.embed_esm, meter, ROW_BYTES, "cpu", esm_calls))
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        got = score_unit(models, unit)
    for calls in (dna_calls, esm_calls):
        assert calls[0] > 3 and calls[1] == calls[0] // 2, calls  # too big, then its half
    np.testing.assert_allclose(got.scores, expect.scores, rtol=0, atol=1e-6)
    assert got.scores.shape == (unit.n_frames, 2)
    oom_logs = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(oom_logs) == 1, "the split is logged once per worker"
    assert meter.peak <= meter.cap
    assert meter.live == 0


def test_oom_on_a_single_row_is_raised(tiny_models, unit, monkeypatch):
    models = _models(tiny_models)
    monkeypatch.setattr(virnucpro.models.esm, "embed_esm",
                        _oom_above(virnucpro.models.esm.embed_esm, 0, []))
    with pytest.raises(torch.OutOfMemoryError), torch.inference_mode():
        score_unit(models, unit)


def test_budget_does_not_change_scores_beyond_rounding(tiny_models, unit):
    with torch.inference_mode():
        big = score_unit(_models(tiny_models), unit)
        small = score_unit(_models(tiny_models, dna=64, esm=64), unit)
    np.testing.assert_allclose(big.scores, small.scores, atol=1e-5)
    real = ("dnabert", "esm")  # padding depends on the budget, the real tokens do not
    assert {k: small.tokens[k] for k in real} == {k: big.tokens[k] for k in real}
    assert all(small.tokens[f"{k}_padded"] >= small.tokens[k] for k in real)


def test_embed_only_mode_returns_features(tiny_models, unit):
    with torch.inference_mode():
        r = score_unit(_models(tiny_models, classifier=None), unit)
    assert r.scores.shape == (unit.n_frames, 0)
    assert r.embeddings is not None and r.embeddings.shape == (unit.n_frames, 64)


@pytest.mark.parametrize("onednn_faster", [True, False])
def test_a_cpu_worker_reports_its_linear_kernels(tiny_models, monkeypatch, onednn_faster):
    """The timing at start picks each model's kernel; the choice goes to run.json's plan."""
    from torch import nn

    import virnucpro.runtime.cpu as cpu

    if not cpu.onednn_linear_works():
        pytest.skip("no oneDNN linear op on this machine")
    monkeypatch.setattr(cpu, "time_linears",
                        lambda linear: (2e-3, 1e-3 if onednn_faster else 3e-3, 256))
    spec = WorkerSpec(dnabert_dir=str(tiny_models.dnabert_dir), esm_dir=str(tiny_models.esm_dir),
                      classifier_path=None, device="cpu", threads=1)
    models, report = prepare_models(spec, Settings("fp32", 512, 512))
    kernel = "onednn" if onednn_faster else "mkl"
    assert {name: choice["kernel"] for name, choice in report["cpu_linears"].items()} == {
        "dnabert": kernel, "esm": kernel}
    kinds = {type(m) for net in (models.dnabert, models.esm) for m in net.modules()
             if isinstance(m, nn.Linear)}
    assert kinds == {cpu.OneDnnLinear if onednn_faster else nn.Linear}


# ------------------------------------------------------------------ GPU readiness (issue 20)
def test_the_first_stage_mark_comes_after_tokenizing(tiny_models, unit, monkeypatch):
    """Host tokenizing is not counted as DNABERT-S time (nor as the device being busy)."""
    import virnucpro.runtime.worker as worker

    events: list[str] = []

    def spy(name: str, real):
        def call(*args):
            events.append(name)
            return real(*args)
        return call

    for name, module in (("tokenize_dna", virnucpro.models.dnabert),
                         ("tokenize_protein", virnucpro.models.esm),
                         ("embed_dnabert", virnucpro.models.dnabert),
                         ("embed_esm", virnucpro.models.esm)):
        monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    real_mark = worker.StageClock.mark
    monkeypatch.setattr(worker.StageClock, "mark",
                        lambda self: (events.append("mark"), real_mark(self))[1])
    with torch.inference_mode():
        score_unit(_models(tiny_models), unit)
    first = events.index("mark")
    assert set(events[:first]) == {"tokenize_dna", "tokenize_protein"}
    assert events[first + 1] == "embed_dnabert"


def test_padded_tokens_are_counted_beside_the_real_ones(tiny_models, unit):
    from virnucpro.runtime.worker import padded_tokens

    # Batches longest first: [5, 4] (2 x 5) then [2] (1 x 2) at a budget of 10.
    assert padded_tokens([[0] * 4, [0] * 2, [0] * 5], 10) == 12
    with torch.inference_mode():
        tokens = score_unit(_models(tiny_models, dna=64, esm=64), unit).tokens
    for stage in ("dnabert", "esm"):
        assert tokens[f"{stage}_padded"] >= tokens[stage] > 0


def test_a_cuda_worker_makes_its_device_current_before_any_cuda_work(monkeypatch):
    import virnucpro.runtime.devices as devices
    import virnucpro.runtime.worker as worker

    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls.append(("set", dev)))
    worker.claim_device("cpu")
    assert calls == []

    def probe(device):
        calls.append(("probe", device))
        raise RuntimeError("stop here")

    monkeypatch.setattr(devices, "describe_device", probe)
    monkeypatch.setattr("virnucpro.runtime.cpu.apply_process_settings",
                        lambda *a: calls.append(("settings",)))
    spec = WorkerSpec("d", "e", None, device="cuda:3", threads=1)
    backend = worker.TorchBackend(spec)  # what the worker process builds first
    with pytest.raises(RuntimeError, match="stop here"):
        backend.probe()
    assert calls == [("set", torch.device("cuda:3")), ("settings",),
                     ("probe", torch.device("cuda:3"))]
