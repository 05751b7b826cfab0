"""The benchmarks run at tiny size and report every section, so they cannot rot unnoticed.

`bench_predict.py --quick` and `gpu_check.sh --cpu-tiny` run the same code as the real
measurements (random models written in the real formats, `virnucpro predict`) with tiny
models on the CPU; `bench_scaling.py --quick` runs the real engine with two stand-in
devices. Only the shape of what they report is checked here, never a timing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 660  # seconds: each benchmark starts worker processes, on possibly busy cores
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
    env["PYTHON"] = sys.executable  # gpu_check.sh's interpreter
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_bench_predict_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run([sys.executable, "benchmarks/bench_predict.py", "--quick", "--json", str(out)])
    for section in ("== hardware ==", "== matmul peak", "== models", "== the whole command",
                    "== baseline", "== same frames", "== agreement",
                    "== opt-in: --precision bf16", "== targets =="):
        assert section in proc.stdout, section
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["frames"] == 24
    assert data["e2e"]["frames"] == 24  # the command scored every frame of the workload
    # The baseline, a whole process of its own, scored the same frames.
    base = data["baseline"]["e2e"]
    assert base["frames"] == 24
    assert 0 < base["startup_seconds"] < base["wall_seconds"]
    assert set(base["phases"]) == {"interpreter_and_imports", "load", "read_and_translate",
                                   "dnabert", "esm", "classify_and_write"}
    assert 0 < data["e2e"]["startup_seconds"] < data["e2e"]["wall_seconds"]
    assert data["speedup_after_startup"] > 0 and data["speedup_models"] > 0
    assert data["peak"]["flops"] > 0
    # The MFU denominator is the best kernel the models may use; the models use the faster
    # of the two at their own shapes, as a worker picks them.
    kernels = data["peak"]["kernels"]
    assert "torch.mm" in kernels and data["peak"]["flops"] == max(kernels.values())
    linears = data["models"]["cpu_linears"]
    assert set(linears) == {"dnabert", "esm"}
    assert {c["kernel"] for c in linears.values()} <= ({"onednn", "mkl"} if "oneDNN" in kernels
                                                        else {"mkl", "blas"})
    assert data["hardware"]["cpu"] and data["hardware"]["torch_threads"] >= 1
    for model in ("dnabert", "esm"):
        row = data["models"][model]
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["mfu"] > 0 and row["mfu_median"] > 0
        assert data["baseline"][model]["tokens"] == row["tokens"]
        # Ours (batched, masked, HF ESM) and the original-style baseline (batch 1; fair-esm)
        # run the same weights: they must give the same embeddings.
        assert data["agreement"][model]["max_abs_diff"] < 1e-4
    assert 0 < data["e2e"]["forward_share"] <= 1
    assert data["bf16"]["e2e"]["frames"] == 24
    assert data["bf16"]["agreement"]["esm"]["min_cosine"] > 0.99
    assert data["bf16"]["calls"]["same_call"] >= 0.75
    assert set(data["targets"]) == {"dnabert_mfu", "esm_mfu", "forward_share", "speedup",
                                    "speedup_robust"}
    assert data["speedup"] > 0 and data["speedup_robust"] > 0


@pytest.mark.slow
@needs_bash
def test_gpu_check_cpu_tiny(tmp_path):
    """The dry run of gpu_check: only what the GPU machine has is importable (see
    benchmarks/dry_run.py), every section runs and every figure of the summary is filled."""
    out = tmp_path / "gpu.json"
    proc = _guarded(["bash", "benchmarks/gpu_check.sh", "--cpu-tiny", "--json", str(out)],
                    tmp_path)
    for section in ("== env ==", "== setup ==", "== peak ==", "== dnabert ==", "== esm ==",
                    "== compile ==", "== e2e ==", "== baseline ==", "== summary (targets) =="):
        assert section in proc.stdout, section
    assert "FAILED" not in proc.stdout and "SKIPPED" not in proc.stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "cpu-tiny"
    for name in ("setup", "peak", "dnabert", "esm", "compile", "e2e", "baseline"):
        assert data[name]["status"] == "ok", (name, data[name]["status"])
    for name in ("dnabert", "esm"):
        assert data[name]["agreement_bf16_fp32"]["min_cosine"] > 0.99
        rows = data[name]["throughput"]
        labels = {r["workload"] for r in rows}
        assert labels == {"500bp chunks", "300bp chunks", "150bp reads"}
        assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in rows)
    assert 0.9 <= data["esm"]["classifier_calls"]["same_call"] <= 1
    # ~120 random 500 bp records, each keeping about one frame; every frame was scored.
    assert 100 <= data["e2e"]["frames"] == data["e2e"]["frames_in_input"] <= 140
    assert 0 < data["e2e"]["gpu_busy_stage_share"] <= 1
    assert 0 < data["e2e"]["startup_seconds"] < data["e2e"]["cli_wall_seconds"]
    assert data["e2e"]["plan"] == {"dtype": "fp32", "dnabert_budget": 2048, "esm_budget": 4096,
                                   "compile": False}  # the smoke run's e2e does not compile
    assert data["e2e"]["cold"]["frames"] < data["e2e"]["frames"]
    # Both models were measured eager, then compiled as a worker compiles them, agreeing.
    compiled = data["compile"]
    assert compiled["report"]["compiled"] is True
    for name in ("dnabert", "esm"):
        assert compiled[f"{name}_eager"]["tokens_per_s"] > 0
        assert compiled[f"{name}_compiled"]["min_cosine_vs_eager"] > 0.999
    # The budget a worker would choose here (bf16 on a CPU: fixed) is measured and marked.
    dnabert = data["dnabert"]
    assert dnabert["default_budget"] == 3072
    assert {r["workload"] for r in dnabert["throughput"] if r["default"]} == labels
    assert set(dnabert["default_mfu"]) == labels
    # The original's loop ran over the same frames, with fair-esm (installed here).
    base = data["baseline"]
    assert base["esm_backend"] == "fair-esm"
    assert base["frames"] == data["e2e"]["frames_in_input"]
    assert base["stages"]["esm"]["sequences"] == base["frames"]
    assert 0 < base["stages"]["dnabert"]["sequences"] <= base["frames"]
    assert base["frames_per_s"] > 0 and base["ours_over_original"] > 0
    assert set(data["targets"]) == {
        "esm_mfu_compiled", "esm_stage_mfu", "dnabert_default_mfu", "frames_per_s_after_startup",
        "frames_per_s_warm_run", "gpu_busy_after_startup", "startup_without_compile_s", "cosine",
        "vs_original"}
    assert data["targets"]["vs_original"]["value"] == base["ours_over_original"]
    assert data["targets"]["esm_mfu_compiled"]["value"] == compiled["esm_compiled"]["mfu"]
    assert data["targets"]["startup_without_compile_s"]["met"] == (
        data["e2e"]["startup_seconds"] <= 5.0)
    assert {k for k, t in data["targets"].items() if t["value"] is None} == set()
    # MFU counts real tokens; the padding each stage computed over is reported beside them.
    assert set(data["e2e"]["padding_share"]) == {"dnabert", "esm"}
    assert all(0 <= v < 1 for v in data["e2e"]["padding_share"].values())
    assert data["e2e"]["stages"]["esm"]["padded_tokens"] >= data["e2e"]["stages"]["esm"]["tokens"]


def _guarded(cmd: list[str], tmp_path: Path, exclude: tuple[str, ...] = ()):
    dry_run = _bench_module("dry_run")
    proc = dry_run.run_guarded(cmd, tmp_path / "guard", timeout=TIMEOUT, exclude=exclude)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@needs_bash
def test_gpu_tests_dry_run_collects_and_skips(tmp_path):
    """The dry run of gpu_tests.sh: with only what the GPU machine has, every GPU test is
    collected (none fails to import) and skipped here."""
    proc = _guarded(["bash", "benchmarks/gpu_tests.sh", "--no-install"], tmp_path)
    n_tests = sum(len(re.findall(r"^def test_", p.read_text(), re.M))
                  for p in (REPO / "tests" / "gpu").glob("test_*.py"))
    assert f"{n_tests} skipped" in proc.stdout, proc.stdout
    assert "error" not in proc.stdout.lower()
    assert "(f), (h), (h2) not measured" in proc.stdout


@needs_bash
def test_a_module_the_wheels_lack_is_named_in_one_line(tmp_path):
    dry_run = _bench_module("dry_run")
    proc = dry_run.run_guarded(["bash", "benchmarks/gpu_tests.sh", "--no-install"],
                               tmp_path / "guard", timeout=TIMEOUT,
                               exclude=("rich-click", "pluggy"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gpu_tests.sh: " in proc.stderr, proc.stderr
    assert "cannot import rich_click (ModuleNotFoundError), pytest (ModuleNotFoundError)" \
        in proc.stderr  # pytest itself imports, but not without pluggy


def test_the_guard_admits_only_what_the_device_has(tmp_path):
    """Under the guard, the standard library, torch, transformers and the carried wheels
    import; what the device lacks (here: ray, ruff, snakemake) does not, in workers too."""
    dry_run = _bench_module("dry_run")
    assert "rich-click" in dry_run.carried() and "pytest" in dry_run.carried()
    code = ("import importlib.util as u, json, sys; print(json.dumps({m: u.find_spec(m) is not "
            "None for m in sys.argv[1:]}))")
    proc = dry_run.run_guarded(
        ["bash", "-c", f'"$PYTHON" -c "{code}" torch transformers rich_click dnaio json ray '
         'ruff snakemake multiqc'], tmp_path / "guard", timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert all(found[m] for m in ("torch", "transformers", "rich_click", "dnaio", "json"))
    assert not any(found[m] for m in ("ray", "ruff", "snakemake", "multiqc"))


def test_the_carried_wheels_need_nothing_the_list_lacks():
    """Every requirement of a carried distribution (markers for CPython 3.12 on Linux
    x86-64) is carried too, or comes with torch or transformers."""
    from packaging.requirements import Requirement

    dry_run = _bench_module("dry_run")
    have = set(dry_run.closure(list(dry_run.BASE))) | {dry_run._canonical(n)
                                                        for n in dry_run.carried()}
    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "extra": ""}
    lacking = []
    carried = dry_run.allowed()
    for name in map(dry_run._canonical, dry_run.carried()):
        dist = carried.get(name)  # None: not installed here (nvidia-ml-py: no requirements)
        for text in (dist.requires or ()) if dist else ():
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate(env)) \
                    and dry_run._canonical(req.name) not in have:
                lacking.append(f"{name} -> {req.name}")
    assert lacking == []


def _bench_module(name: str):
    """A benchmark script as a module (they import their neighbour `common`)."""
    import importlib

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_gpu_check_time_limits_agree():
    """gpu_check.sh's hard stop sits behind gpu_check.py's own deadline, and the whole check
    (with its start-up) stays under 6 minutes, gpu_tests.sh's pytest under 4."""
    gpu_check = _bench_module("gpu_check")
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    kill_after = int(re.search(r"timeout -k (\d+) ", script).group(1))
    hard_stop = int(re.search(r"^hard_stop=(\d+)", script, re.M).group(1))
    limit = gpu_check.TIME_LIMITS["gpu"]
    # 25 s before it: checking the modules and installing the carried wheels.
    assert limit + 15 <= hard_stop and hard_stop + kill_after + 25 <= 6 * 60
    assert f"({limit} s)" in script  # the comment above it says which deadline
    tests = (REPO / "benchmarks" / "gpu_tests.sh").read_text()
    pytest_limit = int(re.search(r"^limit=(\d+)", tests, re.M).group(1))
    assert pytest_limit + 10 + 20 <= 4 * 60  # its kill grace, then start-up and summary
    plan = gpu_check.make_plan(gpu_check.parse_args([]))
    assert sum(plan.section_seconds.values()) <= limit - 5  # setup takes a few seconds


# ------------------------------------------------------------------ the original's loop
@pytest.fixture(scope="module")
def fair_esm_dir(tmp_path_factory):
    """A tiny fair-esm ESM2 (the reference), and the HF directory `convert_fair_esm` makes
    of it (what `virnucpro predict` and gpu_check's baseline load)."""
    pytest.importorskip("esm")
    common, synthetic = _bench_module("common"), _bench_module("synthetic")
    from virnucpro.models.esm import convert_fair_esm

    tmp = tmp_path_factory.mktemp("fair")
    model, alphabet = synthetic.fair_esm_checkpoint(common.ESM2_TINY, tmp / "esm2.pt", seed=3)
    return model, alphabet, convert_fair_esm(tmp / "esm2.pt", tmp / "hf")


def _frames():
    synthetic = _bench_module("synthetic")
    return (synthetic.frames_of(synthetic.stop_free_records(20, 500, seed=1), 500)
            + synthetic.frames_of(synthetic.stop_free_records(20, 300, seed=2), 300))


def test_original_batches_are_fair_esms():
    esm_data = pytest.importorskip("esm.data")
    baseline = _bench_module("baseline")
    rng = np.random.default_rng(0)
    proteins = ["M" * int(n) for n in rng.integers(1, 700, size=300)] + ["A" * 3000]
    expected = esm_data.FastaBatchedDataset(
        [str(i) for i in range(len(proteins))], proteins).get_batch_indices(
            2048, extra_toks_per_seq=1)
    assert baseline.original_batches(proteins) == expected


@pytest.mark.parametrize("backend", ["fair-esm", "transformers", "auto without fair-esm"])
def test_original_esm_from_the_hf_directory(fair_esm_dir, backend, monkeypatch):
    """Read back from the HF directory, either backend gives what fair-esm's own model of
    the original checkpoint gives, in the original's batches."""
    baseline = _bench_module("baseline")
    import torch

    model, alphabet, hf_dir = fair_esm_dir
    if backend.startswith("auto"):
        monkeypatch.setitem(sys.modules, "esm", None)  # `import esm` fails
    esm = baseline.original_esm(hf_dir, torch.device("cpu"), backend.split()[0])
    assert esm.backend == ("fair-esm" if backend == "fair-esm"
                           else "transformers (eager attention)")
    frames = _frames()
    got = baseline.baseline_esm(esm, frames)
    ref = baseline.baseline_esm(baseline.fair_esm(model, alphabet), frames)
    assert got["sequences"] == ref["sequences"] == len(frames)
    assert got["batches"] == len(baseline.original_batches([f.protein for f in frames])) > 1
    assert got["linear_weights"] == ref["linear_weights"]
    torch.testing.assert_close(got["embeddings"], ref["embeddings"], rtol=0, atol=1e-5)
    cut = baseline.baseline_esm(esm, frames, deadline=0.0)  # passed: one batch, then stop
    first = baseline.original_batches([f.protein for f in frames])[0]
    assert (cut["batches"], cut["sequences"]) == (1, len(first))


def test_baseline_dnabert_is_ours_unbatched_and_stops_at_its_deadline(tmp_path):
    """One sequence at a time with no mask gives what our batched, masked embedding gives;
    a deadline already passed stops the loop after one sequence."""
    baseline = _bench_module("baseline")
    import torch

    from virnucpro.models.dnabert import (
        embed_dnabert,
        load_dnabert,
        load_dnabert_tokenizer,
        tokenize_dna,
    )
    from virnucpro.testing import make_tiny_dnabert

    model_dir = make_tiny_dnabert(tmp_path / "dnabert")
    model, tok = load_dnabert(model_dir), load_dnabert_tokenizer(model_dir)
    frames = _frames()
    got = baseline.baseline_dnabert(model, tok, frames)
    ours = embed_dnabert(model, tokenize_dna(tok, [f.nucleotide for f in frames]))
    assert got["sequences"] == len(frames) and len(got["pieces"]) == len(frames)
    torch.testing.assert_close(got["embeddings"], ours, rtol=0, atol=1e-5)
    cut = baseline.baseline_dnabert(model, tok, frames, deadline=0.0)
    assert cut["sequences"] == 1 and cut["tokens"] == got["lengths"][0]


@pytest.mark.parametrize("source", ["input", "contigs"])
def test_bench_predict_workload_from_fasta(tmp_path, source):
    """--input and --contigs: the frames both sides score are those of whole records of the
    given (or generated) FASTA, as our own chunking and translation make them."""
    bench = _bench_module("bench_predict")
    synthetic = _bench_module("synthetic")
    from virnucpro.reader import read_records

    example = REPO / "src" / "virnucpro" / "data" / "example.fa"
    argv = ["--input", str(example)] if source == "input" else ["--contigs", "20000"]
    args = bench.parse_args([*argv, "--frames", "12"])
    fasta, frames, label = bench.workload(args, 12, tmp_path)
    records = list(read_records([str(fasta)]))
    assert frames == synthetic.frames_of(records, 500)
    assert 0 < len(frames) <= 12
    # Whole records: the next record of the source would have gone past --frames.
    source_records = (list(read_records([str(example)])) if source == "input"
                      else synthetic.contig_like_records(20000))
    assert [r.seq for r in records] == [r.seq for r in source_records[:len(records)]]
    more = synthetic.frames_of(source_records[:len(records) + 1], 500)
    assert len(records) == len(source_records) or len(more) > 12
    assert "chunks of 500 bp" in label


@pytest.mark.slow
def test_bench_scaling_quick(tmp_path):
    """The orchestration benchmark runs the real engine end to end and prints its table:
    one row per device count, each scoring every frame of the input."""
    out = tmp_path / "scaling.json"
    proc = _run([sys.executable, "benchmarks/bench_scaling.py", "--quick", "--json", str(out)])
    assert "not a correctness test" in (REPO / "benchmarks" / "bench_scaling.py").read_text()
    for section in ("== input ==", "== scaling"):
        assert section in proc.stdout, section
    table = proc.stdout.split("== scaling", 1)[1].splitlines()[1:5]
    header, rule, *rows = [re.split(r"\s{2,}", line.strip()) for line in table]
    assert header == ["N", "frames", "seconds", "frames/s", "efficiency", "devices busy",
                      "parent cores", "parent CPU us/frame", "parent ceiling", "start-up s"]
    assert all(set(cell) == {"-"} for cell in rule) and len(rule) == len(header)
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(len(row) == len(header) for row in rows)
    assert rows[0][4] == "100.0%"  # efficiency is relative to N = 1
    data = json.loads(out.read_text())
    frames = data["workload"]["frames"]
    for run in data["runs"]:
        assert run["frames"] == frames  # every frame of the input, scored once
        assert sum(run["per_device"].values()) == frames
        assert run["units"] == data["workload"]["units"] > 1
        assert abs(run["tokens"]["esm"] - frames * data["workload"]["esm_tokens_per_frame"]) < 1
