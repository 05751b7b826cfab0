"""Failures on a CUDA GPU: the whole run killed, one worker killed, and out-of-memory under a
real CUDA memory cap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import predict_results

from virnucpro.cli import main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _units(out: Path) -> int:
    return len(list((out / ".virnucpro" / "units").glob("[0-9]*.npz")))


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ["Z", "0"]


def _workers(pid: int) -> list[int]:
    """The worker processes of a run, found by parent id (not every kernel has
    /proc/PID/task/PID/children), without multiprocessing's resource tracker."""
    kids = []
    for path in Path("/proc").glob("[0-9]*"):
        child = int(path.name)
        if _stat(child)[1] == str(pid):
            try:
                if b"spawn_main" in (path / "cmdline").read_bytes():
                    kids.append(child)
            except OSError:
                continue
    return sorted(kids)


def _alive(pids: list[int]) -> bool:
    return any(_stat(p)[0] != "Z" for p in pids)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "virnucpro", *args],
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"


def _resumed(out: Path) -> None:
    """The finished run took over the saved units of the killed one."""
    run = json.loads((out / "run.json").read_text())
    assert 0 < run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]


def test_a_killed_run_resumes_and_equals_an_uninterrupted_one(runs, tmp_path):
    ref, out = runs.get("cuda"), tmp_path / "out"
    proc = _start(runs.args(out, "cuda"))
    _wait_for(proc, lambda: _units(out) >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(runs.args(out, "cuda")) == 0  # the same command: resumed, not refused
    _resumed(out)
    assert predict_results(out) == predict_results(ref)


def test_a_killed_worker_stops_the_run_with_one_line_and_a_rerun_resumes(runs, tmp_path):
    ref, out = runs.get("cuda"), tmp_path / "out"
    args = runs.args(out, "cuda", "--workers", "2")
    proc = _start(args)
    _wait_for(proc, lambda: _units(out) >= 2)
    workers = _workers(proc.pid)
    assert len(workers) == 2, workers
    t0 = time.monotonic()
    os.kill(workers[0], signal.SIGKILL)
    proc.wait(timeout=60)
    stopped_after = time.monotonic() - t0
    err = proc.stderr.read().strip()
    assert proc.returncode == 1 and stopped_after < 10, (stopped_after, err)
    assert err.splitlines()[-1].startswith(
        "virnucpro: error: the worker on cuda:0 was killed by signal 9"), err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10  # the other worker is stopped too
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers)
    assert main(args) == 0
    _resumed(out)
    assert predict_results(out) == predict_results(ref)


def test_oom_backoff_under_a_cuda_memory_cap(tiny_models, tmp_path):
    """tests/test_worker.py's allocating double on the GPU, under
    torch.cuda.set_per_process_memory_fraction, in a process of its own (oom_child.py):
    the batches that do not fit complete in halves, with the uncapped scores."""
    child = Path(__file__).with_name("oom_child.py")
    proc = subprocess.run(
        [sys.executable, str(child), str(tiny_models.dnabert_dir), str(tiny_models.esm_dir),
         str(tiny_models.classifier_path), str(tmp_path / "in.fa")],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    rows_that_fit = 3  # the cap leaves room for 3.5 rows
    for calls in got["calls"].values():
        assert calls[0] > rows_that_fit and calls[1] == calls[0] // 2, calls
    np.testing.assert_allclose(got["capped"], got["uncapped"], rtol=0, atol=1e-5)
    assert got["oom_logs"] == 1
    assert got["meter_peak"] <= rows_that_fit * got["row_bytes"]
    assert got["peak_reserved"] <= got["cap"] and got["meter_live"] == 0
