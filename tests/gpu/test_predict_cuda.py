"""predict on a CUDA GPU with tiny random models: the same calls as on the CPU, the same bytes
whatever the worker count, what the default precision changes, and no CUDA in the caller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import predict_results

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Score columns of each table predict writes; every other column must match exactly.
SCORES = {"prediction_results.txt": ("score1", "score2"), "chunks.tsv": ("score",),
          "sequences.tsv": ("virus_score",)}


def _table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _assert_same_but_scores(a: Path, b: Path, scores: tuple[str, ...], atol: float) -> None:
    """Equal tables, except that score columns may differ by `atol` (empty stays empty)."""
    ta, tb = _table(a), _table(b)
    assert len(ta) == len(tb) and ta[0] == tb[0], a.name
    numeric = {ta[0].index(c) for c in scores}
    for ra, rb in zip(ta[1:], tb[1:], strict=True):
        assert [v for i, v in enumerate(ra) if i not in numeric] == \
            [v for i, v in enumerate(rb) if i not in numeric], (a.name, ra, rb)
        for i in numeric:
            assert ra[i] == rb[i] or abs(float(ra[i]) - float(rb[i])) <= atol, (a.name, ra, rb)


def _plan(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["plan"]


def test_cuda_fp32_equals_cpu_fp32(runs):
    """Every call the same; frame, chunk and sequence scores within 1e-5."""
    cpu, cuda = runs.get("cpu-fp32"), runs.get("cuda-fp32")
    assert _plan(cuda)["workers"][0]["device"] == "cuda:0" and _plan(cuda)["dtype"] == "fp32"
    for name, scores in SCORES.items():
        _assert_same_but_scores(cpu / name, cuda / name, scores, atol=1e-5)
    got, expect = predict_results(cuda), predict_results(cpu)
    assert got["highest"] == expect["highest"] and got["viral"] == expect["viral"]


def test_two_workers_on_one_gpu_equal_one_byte_for_byte(runs):
    two, one = runs.get("cuda-2-workers"), runs.get("cuda")
    assert [w["device"] for w in _plan(two)["workers"]] == ["cuda:0", "cuda:0"]
    assert _plan(two)["dtype"] == _plan(one)["dtype"]
    assert predict_results(two) == predict_results(one)


def _column(out: Path, name: str, column: str) -> dict[str, str]:
    table = _table(out / name)
    i = table[0].index(column)
    return {row[0]: row[i] for row in table[1:]}


def test_default_precision_against_fp32(runs):
    """What the default precision (bf16 from compute capability 8.0, else fp16) changes:
    printed for the README's Precision table (benchmarks/gpu_tests.sh shows it)."""
    fp32, default = runs.get("cuda-fp32"), runs.get("cuda")
    dtype = _plan(default)["dtype"]
    calls_32 = _column(fp32, "chunks.tsv", "call")
    calls = _column(default, "chunks.tsv", "call")
    assert calls.keys() == calls_32.keys()
    changed = sum(calls[k] != calls_32[k] for k in calls)
    agreement = 1 - changed / len(calls)
    s32 = _column(fp32, "prediction_results.txt", "score2")
    s = _column(default, "prediction_results.txt", "score2")
    assert s.keys() == s32.keys()
    worst = max(abs(float(s[k]) - float(s32[k])) for k in s)
    name = _plan(default)["workers"][0]["name"]  # as the worker saw it (no CUDA here)
    print(f"(f) {dtype} vs fp32 on {name}, tiny models, {len(calls)} chunks / {len(s)} frames: "
          f"{changed} chunk calls changed ({agreement:.2%} agreement), largest frame-score "
          f"difference {worst:.1e}")
    assert dtype in ("bf16", "fp16")
    assert agreement >= 0.9


def test_a_gpu_run_compiles_by_default_and_agrees_with_eager(runs):
    """(h) On a GPU the layers are compiled by default (`--compile`), once, at start-up; the
    scores agree with an uncompiled run to within the precision's rounding."""
    compiled, eager = runs.get("cuda"), runs.get("cuda-eager")
    plan, worker = _plan(compiled), _plan(compiled)["workers"][0]
    assert plan["compile"] is True and _plan(eager)["compile"] is False
    assert plan["dtype"] == _plan(eager)["dtype"]
    calls, calls_eager = (_column(o, "chunks.tsv", "call") for o in (compiled, eager))
    changed = sum(calls[k] != calls_eager[k] for k in calls)
    s, se = (_column(o, "prediction_results.txt", "score2") for o in (compiled, eager))
    worst = max(abs(float(s[k]) - float(se[k])) for k in s)
    print(f"(h) compiled on {worker['name']}: {worker.get('compiled')} in "
          f"{worker.get('compile_seconds')} s ({worker.get('compile_error', 'no error')}); "
          f"vs --no-compile in {plan['dtype']}: {changed} of {len(calls)} chunk calls changed, "
          f"largest frame-score difference {worst:.1e}")
    assert worker["compiled"] is True, worker.get("compile_error")
    assert changed <= 0.02 * len(calls) and worst <= 0.05


def test_a_gpu_run_leaves_no_cuda_context_in_the_caller(runs):
    """Every run of this session is made in-process by `cli.main`; the workers own the GPU."""
    out = runs.get("cuda")
    assert _plan(out)["workers"][0]["device"] == "cuda:0"
    assert not torch.cuda.is_initialized()
