"""oneDNN fp32 linears: same products as nn.Linear, same parameters, used by CPU workers."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

import virnucpro.runtime.cpu as onednn
from virnucpro.models.dnabert import embed_dnabert, load_dnabert
from virnucpro.models.esm import embed_esm, load_esm
from virnucpro.runtime.cpu import OneDnnLinear, onednn_linear_works, row_blocks, use_onednn_linears
from virnucpro.runtime.worker import Settings, WorkerSpec, load_models

needs_onednn = pytest.mark.skipif(not onednn_linear_works(),
                                  reason="no oneDNN linear op on this machine")


@needs_onednn
@pytest.mark.parametrize("shape", [(0, 96), (7, 96), (4, 33, 96), (3, 250, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_nn_linear(shape, bias):
    torch.manual_seed(0)
    ref = nn.Linear(96, 200, bias=bias)
    model = nn.Sequential(ref)
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = ref(x)
        assert use_onednn_linears(model) == 1
        got = model(x)
    assert type(model[0]) is OneDnnLinear and model[0].weight is ref.weight
    assert got.shape == expected.shape == (*shape[:-1], 200)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)


def test_row_blocks_cover_every_row_with_few_shapes():
    padded_sizes = set()
    for n in range(0, 3000):
        blocks = row_blocks(n)
        assert [b[0] for b in blocks] == list(range(0, n, 256))
        assert sum(b[1] for b in blocks) == n
        assert all(rows <= padded < rows + 32 and padded % 32 == 0 for _, rows, padded in blocks)
        padded_sizes |= {padded for _, _, padded in blocks}
    assert padded_sizes == {32, 64, 96, 128, 160, 192, 224, 256}


@needs_onednn
def test_swap_keeps_names_and_freezes(tiny_models):
    model = load_dnabert(tiny_models.dnabert_dir)
    keys = model.state_dict().keys()
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert n_linear > 0 and use_onednn_linears(model) == n_linear
    assert model.state_dict().keys() == keys
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert not torch.backends.mkldnn.enabled  # no implicit, per-shape cached oneDNN kernels
    half = load_dnabert(tiny_models.dnabert_dir, dtype=torch.bfloat16)
    assert use_onednn_linears(half) == (n_linear if onednn_linear_works(torch.bfloat16) else 0)


@needs_onednn
def test_models_give_the_same_embeddings_through_onednn(tiny_models):
    dna_ids = [[1, *range(5, 5 + n), 2] for n in (3, 40, 17)]
    prot_ids = [[0, *([5, 9, 13, 20] * n), 2] for n in (1, 12, 30)]
    plain_dna, fast_dna = (load_dnabert(tiny_models.dnabert_dir) for _ in range(2))
    (plain_esm, _), (fast_esm, _) = (load_esm(tiny_models.esm_dir) for _ in range(2))
    assert use_onednn_linears(fast_dna) > 0 and use_onednn_linears(fast_esm) > 0
    dna_diff = embed_dnabert(fast_dna, dna_ids) - embed_dnabert(plain_dna, dna_ids)
    esm_diff = embed_esm(fast_esm, prot_ids) - embed_esm(plain_esm, prot_ids)
    assert dna_diff.abs().max() <= 1e-5 and esm_diff.abs().max() <= 1e-5


def test_cpu_worker_uses_onednn_where_it_works(tiny_models):
    spec = WorkerSpec(dnabert_dir=str(tiny_models.dnabert_dir), esm_dir=str(tiny_models.esm_dir),
                      classifier_path=None, device="cpu", threads=1)
    models = load_models(spec, Settings("fp32", 512, 512))
    kinds = {type(m) for net in (models.dnabert, models.esm) for m in net.modules()}
    if onednn_linear_works():
        assert OneDnnLinear in kinds and nn.Linear not in kinds
    else:
        assert OneDnnLinear not in kinds and nn.Linear in kinds


def test_other_machines_keep_nn_linear(monkeypatch):
    monkeypatch.setattr(onednn, "_WORKS", {})
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    model = nn.Sequential(nn.Linear(8, 8))
    assert not onednn_linear_works()
    assert use_onednn_linears(model) == 0 and type(model[0]) is nn.Linear
    assert model[0].weight.requires_grad


# ------------------------------------------------------------------ CPUs this process may use
@pytest.mark.parametrize(("text", "expected"), [
    ("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5),
    ("50000 100000", 0.5), ("", None), (None, None), ("garbage", None), ("1 0", None),
])
def test_cgroup_v2_cpu_max(text, expected):
    assert onednn.parse_cpu_max(text) == expected


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("-1\n", "100000\n", None), ("400000", "100000", 4.0), ("x", "1", None), (None, None, None),
])
def test_cgroup_v1_cfs_quota(quota, period, expected):
    assert onednn.parse_cfs_quota(quota, period) == expected


def test_available_cpus_follows_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(onednn.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(onednn, "_own_cgroup_v2", lambda: "/job")
    assert onednn.available_cpus(tmp_path) == 4  # no cgroup files: the affinity mask
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("250000 100000\n")
    assert onednn.available_cpus(tmp_path) == 2  # 2.5 CPUs of quota: 2 threads
    (tmp_path / "job" / "cpu.max").write_text("50000 100000\n")
    assert onednn.available_cpus(tmp_path) == 1  # never fewer than one
