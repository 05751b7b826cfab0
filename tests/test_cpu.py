"""oneDNN fp32 linears: same products as nn.Linear, same parameters, used by CPU workers
where timing at start finds them faster than MKL."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

import virnucpro.runtime.cpu as onednn
import virnucpro.runtime.host as host
from virnucpro.models.dnabert import embed_dnabert, load_dnabert
from virnucpro.models.esm import embed_esm, load_esm
from virnucpro.runtime.cpu import (
    OneDnnLinear,
    choose_cpu_linears,
    faster_linears,
    onednn_linear_works,
    row_blocks,
    time_linears,
    use_onednn_linears,
)

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


@pytest.mark.parametrize(("blas", "onednn", "expected"), [
    (1.0, 0.5, "onednn"), (1.0, 0.94, "onednn"), (1.0, 0.96, "blas"), (1.0, 1.0, "blas"),
    (1.0, 1.3, "blas"), (2e-3, 1.8e-3, "onednn"),
])
def test_onednn_only_when_faster_by_the_margin(blas, onednn, expected):
    assert faster_linears(blas, onednn) == expected
    assert faster_linears(1.0, 0.9, margin=0.2) == "blas"


@needs_onednn
def test_time_linears_times_both_kernels_briefly():
    import time

    linear = nn.Linear(640, 2560)  # ESM-2 150M's feed-forward
    t0 = time.perf_counter()
    blas, fast, rows = time_linears(linear, seconds=0.05)
    assert time.perf_counter() - t0 < 2.0  # a few products (0.3 s on 2 quiet cores)
    assert blas > 0 and fast > 0 and rows == 512
    assert onednn.probe_rows(768, 6144) == 512  # DNABERT-S's gated MLP
    assert onednn.probe_rows(2560, 10240) == 256  # ESM-2 3B's feed-forward: fewer rows
    assert type(linear) is nn.Linear and linear.weight.requires_grad  # timing moves nothing


@needs_onednn
@pytest.mark.parametrize(("timings", "kernel", "kind"), [
    ((1e-3, 5e-4, 256), "onednn", OneDnnLinear), ((1e-3, 1e-3, 256), "mkl", nn.Linear)])
def test_choose_cpu_linears_follows_the_timing(timings, kernel, kind, monkeypatch):
    monkeypatch.setattr(onednn, "time_linears", lambda linear: timings)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
    record = choose_cpu_linears({"net": model})
    assert record == {"net": {"kernel": kernel, "timed_shape": [256, 8, 32],
                              "blas_ms": 1.0, "onednn_ms": timings[1] * 1e3}}
    assert {type(m) for m in model if not isinstance(m, nn.GELU)} == {kind}
    assert not any(p.requires_grad for p in model.parameters())
    assert not torch.backends.mkldnn.enabled  # whichever kernel: no implicit oneDNN


@needs_onednn
def test_bf16_linears_go_to_onednn_untimed(monkeypatch):
    monkeypatch.setattr(onednn, "time_linears", lambda linear: pytest.fail("timed bf16"))
    model = nn.Sequential(nn.Linear(8, 8)).to(torch.bfloat16)
    expected = "onednn" if onednn_linear_works(torch.bfloat16) else "mkl"
    assert choose_cpu_linears({"net": model}) == {"net": {"kernel": expected}}


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
    assert host.parse_cpu_max(text) == expected


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("-1\n", "100000\n", None), ("400000", "100000", 4.0), ("x", "1", None), (None, None, None),
])
def test_cgroup_v1_cfs_quota(quota, period, expected):
    assert host.parse_cfs_quota(quota, period) == expected


def test_available_cpus_follows_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(host, "_own_cgroup_v2", lambda: "/job")
    assert host.available_cpus(tmp_path) == 4  # no cgroup files: the affinity mask
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("250000 100000\n")
    assert host.available_cpus(tmp_path) == 2  # 2.5 CPUs of quota: 2 threads
    (tmp_path / "job" / "cpu.max").write_text("50000 100000\n")
    assert host.available_cpus(tmp_path) == 1  # never fewer than one
