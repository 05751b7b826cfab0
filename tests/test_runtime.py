"""The runtime: worker processes that settle the run themselves, what a resume reuses, and
the caller's process left as it was."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_UNITS, orf_rich_fasta, predict_args, predict_results

from virnucpro.cli import main

COMMON = SMALL_UNITS  # one CPU worker, one thread, units of 4 frames


def _units(out: Path) -> int:
    return len(list((out / ".virnucpro" / "units").glob("[0-9]*.npz")))


def _children(pid: int) -> list[int]:
    """The worker processes of a run."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [k for k in kids if b"virnucpro.runtime.serve" in _cmdline(k)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _start(models, inp, out, *extra: str, env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "virnucpro", *predict_args(models, [inp], out, *extra)]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended too early: {proc.stderr.read()}"


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _saved_plan(out: Path) -> dict | None:
    path = out / ".virnucpro" / "state.json"
    return json.loads(path.read_text()).get("plan") if path.exists() else None


# ------------------------------------------------------------------ the recorded plan
def test_resume_reuses_the_recorded_plan_not_a_fresh_one(tiny_models, tmp_path):
    """An interrupted run recorded budgets other than those a fresh run would settle (as a
    GPU with a little less free memory would): the resume takes the recorded ones, so it
    equals an uninterrupted run made with them, and is not refused."""
    inp = orf_rich_fasta(tmp_path / "in.fa", 24)
    small = tmp_path / "small"  # uninterrupted, with the budgets the state will record
    assert main(predict_args(tiny_models, [inp], small, *COMMON, "--dnabert-batch-size", "40",
                             "--esm-batch-size", "60")) == 0

    out = tmp_path / "out"
    proc = _start(tiny_models, inp, out, *COMMON)
    _wait_for(proc, lambda: _saved_plan(out) is not None)
    _kill(proc)
    state_path = out / ".virnucpro" / "state.json"
    state = json.loads(state_path.read_text())
    fresh = state["plan"]
    assert (fresh["dnabert_budget"], fresh["esm_budget"]) == (2048, 4096)
    assert state["params"]["dnabert_budget"] == state["params"]["esm_budget"] == "auto"
    state["plan"] = {**fresh, "dnabert_budget": 40, "esm_budget": 60}
    state_path.write_text(json.dumps(state))
    shutil.rmtree(out / ".virnucpro" / "units")  # units of the fresh plan would mix in

    assert main(predict_args(tiny_models, [inp], out, *COMMON)) == 0
    assert predict_results(out) == predict_results(small)
    run = json.loads((out / "run.json").read_text())
    assert (run["plan"]["dnabert_budget"], run["plan"]["esm_budget"]) == (40, 60)
    assert run["params"]["esm_budget"] == "auto"  # what was asked stays what was asked


def test_plan_is_recorded_in_run_json(shared_run):
    # The two-worker run test_predict compares with a one-worker run.
    out = shared_run("orf60", *COMMON, "--workers", "2").out
    run = json.loads((out / "run.json").read_text())
    plan = run["plan"]
    assert (plan["dtype"], plan["threads"]) == ("fp32", 1)
    assert [w["device"] for w in plan["workers"]] == ["cpu", "cpu"]
    assert all(w["proposed"] == {"dnabert_budget": 2048, "esm_budget": 4096}
               for w in plan["workers"])
    # Each CPU worker timed MKL against oneDNN and recorded which each model's linears use.
    for w in plan["workers"]:
        assert set(w["cpu_linears"]) == {"dnabert", "esm"}
        assert {c["kernel"] for c in w["cpu_linears"].values()} <= {"mkl", "onednn", "blas"}
    assert run["params"]["precision"] == "auto"


# ------------------------------------------------------------------ --save-embeddings
def _embedded_frames(out: Path) -> list[str]:
    ids: list[str] = []
    for path in sorted((out / "embeddings").glob("unit_*.npz")):
        with np.load(path) as z:
            assert z["features"].shape == (len(z["frame_ids"]), 64)
            ids.extend(z["frame_ids"].tolist())
    return ids


def _frame_ids(out: Path) -> list[str]:
    lines = (out / "prediction_results.txt").read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def test_save_embeddings_killed_and_resumed_keeps_every_frame(tiny_models, tmp_path, capsys):
    inp = orf_rich_fasta(tmp_path / "in.fa", 40)
    out = tmp_path / "out"
    proc = _start(tiny_models, inp, out, *COMMON, "--save-embeddings")
    _wait_for(proc, lambda: _units(out) >= 3)
    _kill(proc)
    assert main(predict_args(tiny_models, [inp], out, *COMMON, "--save-embeddings")) == 0
    run = json.loads((out / "run.json").read_text())
    assert 0 < run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]
    assert _embedded_frames(out) == _frame_ids(out)
    assert len(_frame_ids(out)) == run["counts"]["frames"]


def test_save_embeddings_on_a_run_made_without_them_is_refused(tiny_models, shared_run,
                                                               tmp_path, capsys):
    base = shared_run("orf60", *COMMON)  # a finished run without embeddings
    inp, out = base.input, tmp_path / "out"
    shutil.copytree(base.out, out)
    capsys.readouterr()
    assert main(predict_args(tiny_models, [inp], out, *COMMON, "--save-embeddings")) == 1
    err = capsys.readouterr().err.strip()
    assert "holds a different run (save_embeddings False there, True now)" in err
    assert len(err.splitlines()) == 1 and not (out / "embeddings").exists()


# ------------------------------------------------------------------ the caller's process
def test_an_in_process_run_leaves_the_process_as_it_was(tiny_models, tmp_path, monkeypatch):
    """Workers are processes: the caller's threads, torch flags, allocator and logging are
    what they were (malloc settings cannot be read back, so they must not be made here)."""
    import virnucpro.runtime.cpu as cpu

    def not_here(*_a, **_k):
        raise AssertionError("a process-wide setting was changed in the caller's process")

    for name in ("keep_freed_buffers", "apply_process_settings", "use_onednn_linears",
                 "choose_cpu_linears"):
        monkeypatch.setattr(cpu, name, not_here)
    root = logging.getLogger()
    before = (torch.get_num_threads(), torch.get_num_interop_threads(),
              torch.backends.mkldnn.enabled, torch.is_grad_enabled(), root.level,
              list(root.handlers), torch.cuda.is_initialized())
    inp = orf_rich_fasta(tmp_path / "in.fa", 6)
    assert main(predict_args(tiny_models, [inp], tmp_path / "out", "--device", "cpu",
                             "--threads", "1")) == 0
    after = (torch.get_num_threads(), torch.get_num_interop_threads(),
             torch.backends.mkldnn.enabled, torch.is_grad_enabled(), root.level,
             list(root.handlers), torch.cuda.is_initialized())
    assert after == before


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_threads_follow_the_cpus_the_process_may_use(tiny_models, tmp_path):
    inp = orf_rich_fasta(tmp_path / "in.fa", 4)
    out = tmp_path / "out"
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "virnucpro",
           *predict_args(tiny_models, [inp], out, "--device", "cpu", threads=None)]
    subprocess.run(cmd, check=True, timeout=300)
    assert json.loads((out / "run.json").read_text())["plan"]["threads"] == 1


# ------------------------------------------------------------------ failures
def test_a_killed_worker_stops_the_run_with_one_line_and_a_rerun_resumes(tiny_models,
                                                                        shared_run, tmp_path):
    base = shared_run("orf60", *COMMON)  # the uninterrupted run
    inp, ref, out = base.input, base.out, tmp_path / "out"
    proc = _start(tiny_models, inp, out, *COMMON, "--workers", "2")
    _wait_for(proc, lambda: _units(out) >= 2)
    workers = _children(proc.pid)
    assert workers, "no worker process found"
    t0 = time.monotonic()
    os.kill(workers[0], signal.SIGKILL)
    proc.wait(timeout=60)
    stopped_after = time.monotonic() - t0
    err = proc.stderr.read().strip()
    assert proc.returncode == 1 and stopped_after < 10
    lines = err.splitlines()
    assert lines[-1].startswith("virnucpro: error: the worker on cpu was killed by signal 9")
    assert "Traceback" not in err
    deadline = time.monotonic() + 10  # the other worker is stopped too
    while any(Path(f"/proc/{w}").exists() and _state(w) != "Z" for w in workers) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() and _state(w) != "Z" for w in workers)
    assert main(predict_args(tiny_models, [inp], out, *COMMON)) == 0
    assert predict_results(out) == predict_results(ref)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_workers_end_when_the_run_is_killed(tiny_models, tmp_path):
    inp = orf_rich_fasta(tmp_path / "in.fa", 40)
    out = tmp_path / "out"
    proc = _start(tiny_models, inp, out, *COMMON)
    _wait_for(proc, lambda: _units(out) >= 1)
    workers = _children(proc.pid)
    assert workers
    _kill(proc)
    deadline = time.monotonic() + 15
    while any(_state(w) != "Z" for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_state(w) == "Z" for w in workers), "a worker outlived the killed run"
