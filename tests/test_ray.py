"""`predict --engine ray`: a local Ray (2 CPUs) writes byte for byte what the local engine
writes. Needs the `ray` extra (`pip install -e '.[test,ray]'`, as `make test` installs)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import SHARD_SETTINGS, predict_args, predict_results

from virnucpro.cli import main
from virnucpro.outputs import predict_paths

pytestmark = [
    pytest.mark.slow,  # Ray starts in seconds, and each actor imports torch
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),  # Ray's own settings
]

# test_shards.py's settings: its single run over the same input is the local engine's run here.
COMMON = SHARD_SETTINGS


# Every process of a Ray this test process starts inherits its environment (the engine's own
# Ray too), orphans included: that tells them from the Ray of another test session that runs
# on the same machine at the same time.
OWNER = "VIRNUCPRO_TEST_RAY_OWNER"


@pytest.fixture(scope="module", autouse=True)
def _mark_our_ray():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(OWNER, str(os.getpid()))
        yield


def _ray_pids() -> set[int]:
    """Live processes of any Ray this test process started (its servers and its workers)."""
    pids = set()
    mark = f"{OWNER}={os.getpid()}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state != "Z" and ("ray::" in cmd or "site-packages/ray/" in cmd) and mark in env:
            pids.add(int(entry))
    return pids


def _assert_no_new_ray_processes(before: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (left := _ray_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture(scope="module")
def workdir(shared_run):
    """An input (24 ORF-rich records, then two without a frame) and the local engine's
    outputs for it, to compare with."""
    local = shared_run("orf24+empty", *COMMON)
    return {"input": local.input, "local": local.out}


def test_engine_starts_and_stops_its_own_local_ray(tiny_models, workdir, tmp_path):
    import ray

    assert not ray.is_initialized()
    before = _ray_pids()
    out = tmp_path / "out"
    assert main(predict_args(tiny_models, [workdir["input"]], out, *COMMON, "--engine", "ray")) == 0
    assert not ray.is_initialized()
    _assert_no_new_ray_processes(before)
    assert predict_results(out) == predict_results(workdir["local"])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["runtime"]["engine"] == "ray"
    assert run["fingerprint"] == json.loads((workdir["local"] / "run.json").read_text())[
        "fingerprint"]
    assert not (out / ".virnucpro").exists()


def test_actors_plan_on_their_nodes_of_a_cluster(tiny_models, workdir, tmp_path):
    """A head node that offers no CPU for work (the driver's) and two worker nodes: the
    actors go to the worker nodes, settle there, and write what the local engine writes."""
    import ray
    from ray.cluster_utils import Cluster

    before = _ray_pids()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = {cluster.add_node(num_cpus=1).node_id for _ in range(2)}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False,
                 logging_level=logging.WARNING)
        out = tmp_path / "out"
        assert main(predict_args(tiny_models, [workdir["input"]], out, *COMMON,
                                 "--engine", "ray")) == 0
        assert predict_results(out) == predict_results(workdir["local"])
        workers = json.loads((out / "run.json").read_text())["plan"]["workers"]
        assert len(workers) == 2 and {w["node"] for w in workers} == nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
    _assert_no_new_ray_processes(before)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the tests below; shut down, leaving no process, at the end."""
    import ray

    before = _ray_pids()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert _ray_pids() - before, "Ray started no process?"
        yield ray
    finally:
        ray.shutdown()
    _assert_no_new_ray_processes(before)


def test_two_cpu_actors_write_what_the_local_engine_writes(tiny_models, workdir, local_ray,
                                                           tmp_path):
    out = tmp_path / "out"
    assert main(predict_args(tiny_models, [workdir["input"]], out, *COMMON, "--engine", "ray",
                      "--workers", "2")) == 0
    assert local_ray.is_initialized()  # the caller's Ray is left running
    assert predict_results(out) == predict_results(workdir["local"])
    run = json.loads((out / "run.json").read_text())
    assert run["timing"]["frames_scored_this_run"] == run["counts"]["frames"]
    assert {"read", "translate", "dnabert", "esm", "classifier", "render"} <= set(
        run["timing"]["stages"])


def test_a_ray_shard_merges_with_a_local_shard(tiny_models, shared_run, workdir, local_ray,
                                              tmp_path):
    s1, merged = tmp_path / "s1", tmp_path / "merged"
    inp = workdir["input"]
    assert main(predict_args(tiny_models, [inp], s1, *COMMON, "--shard", "1/2",
                             "--engine", "ray")) == 0
    s2 = shared_run("orf24+empty", *COMMON, "--shard", "2/2").out  # local, test_shards' own
    assert main(["merge", str(s1), str(s2), "-o", str(merged), "-q"]) == 0
    assert predict_results(merged) == predict_results(workdir["local"])


def test_ray_resumes_an_unfinished_run(tiny_models, shared_run, workdir, local_ray, tmp_path):
    """A shard keeps its scored units in OUT/units; make it look killed after some of them
    (as a SIGKILL leaves it), then let the Ray engine finish it."""
    out = tmp_path / "out"
    inp = workdir["input"]
    # A finished shard 1/1 (test_shards' own), copied: it is changed below.
    shutil.copytree(shared_run("orf24+empty", *COMMON, "--shard", "1/1").out, out)
    fingerprint = json.loads((out / "run.json").read_text())["fingerprint"]
    for p in [*predict_paths(out).values(), out / "shard.json"]:
        p.unlink(missing_ok=True)
    units = sorted((out / "units").glob("*.npz"))
    for p in units[len(units) // 2:]:
        p.unlink()
    (out / ".virnucpro").mkdir()
    (out / ".virnucpro" / "state.json").write_text(json.dumps({"fingerprint": fingerprint}))

    assert main(predict_args(tiny_models, [inp], out, *COMMON, "--shard", "1/1", "--engine",
                      "ray")) == 0
    assert predict_results(out) == predict_results(workdir["local"])
    run = json.loads((out / "run.json").read_text())
    assert 0 < run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]


def test_errors_in_ray_tasks_are_one_line(tiny_models, local_ray, tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_text(">p1\nMKVLLAEFQW\n")
    capsys.readouterr()
    assert main(predict_args(tiny_models, [bad], tmp_path / "out", "--engine", "ray")) == 1
    err = capsys.readouterr().err
    assert "invalid character" in err and "bad.fa" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err



def test_the_driver_streams_the_input_so_stdin_works(tiny_models, workdir, local_ray,
                                                     tmp_path, monkeypatch):
    import io
    import sys

    data = Path(workdir["input"]).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    out = tmp_path / "out"
    assert main(predict_args(tiny_models, ["-"], out, *COMMON, "--engine", "ray")) == 0
    assert predict_results(out) == predict_results(workdir["local"])
