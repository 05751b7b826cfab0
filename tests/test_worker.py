"""The worker: scoring a unit, and the out-of-memory backoff (error injected on CPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import orf_rich_fasta

import virnucpro.models.dnabert
import virnucpro.models.esm
from virnucpro.frames import iter_record_frames
from virnucpro.reader import read_records
from virnucpro.runtime.batching import iter_units
from virnucpro.runtime.worker import Settings, WorkerSpec, load_models, score_unit


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    path = orf_rich_fasta(tmp_path_factory.mktemp("in") / "in.fa", 12)
    (u, _), = iter_units(iter_record_frames(read_records([str(path)]), 500), 10_000)
    assert u.n_frames >= 12
    return u


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
    assert small.tokens == big.tokens


def test_embed_only_mode_returns_features(tiny_models, unit):
    with torch.inference_mode():
        r = score_unit(_models(tiny_models, classifier=None), unit)
    assert r.scores.shape == (unit.n_frames, 0)
    assert r.embeddings is not None and r.embeddings.shape == (unit.n_frames, 64)
