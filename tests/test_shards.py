"""`predict --shard I/N` and `merge`: N shards merged are byte for byte one run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARD_SETTINGS, SMALL_UNITS, predict_args, predict_results, with_empty_records

from virnucpro.cli import main
from virnucpro.outputs import predict_paths
from virnucpro.shards import Balancer, parse_shard, shard_paths

COMMON = SHARD_SETTINGS  # one thread, units of 24 frames, threshold 0.3


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:]


@pytest.fixture(scope="module")
def runs(shared_run):
    """One single run and, for every N in 1..4, its N shards, over the same input (shared
    runs: test_ray and test_workflow compare with the single run, test_ray merges shard 2/2
    with its own 1/2). The tests only read them."""
    base = shared_run("orf24+empty", *COMMON)  # with_empty_records(path, 24)
    shards = {n: [shared_run("orf24+empty", *COMMON, "--shard", f"{i}/{n}").out
                  for i in range(1, n + 1)] for n in range(1, 5)}
    return {"input": base.input, "single": base.out, "shards": shards}


# ------------------------------------------------------------------ the split
def test_parse_shard():
    assert parse_shard("3/8") == (3, 8) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "1/0", "a/2", "2", "1/2/3", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _reference_split(costs: list[int], n: int) -> list[int]:
    """In order, each unit to the shard with the least total so far, the first on ties."""
    loads = [0] * n
    owners = []
    for c in costs:
        k = min(range(n), key=lambda j: (loads[j], j))
        loads[k] += c
        owners.append(k + 1)
    return owners


def test_balancer_is_greedy_least_loaded_and_balanced():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 9)
        costs = [rng.choice([0, rng.randint(1, 5000)]) for _ in range(rng.randint(0, 60))]
        balancer = Balancer(n)
        owners = [balancer.assign(c) for c in costs]
        assert owners == _reference_split(costs, n)
        loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == k)
                 for k in range(1, n + 1)]
        # Greedy in order keeps every shard within one unit of every other.
        assert max(loads) - min(loads) <= max(costs, default=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shards_cover_every_unit_once_and_merge_to_the_single_run(runs, tmp_path, n):
    shards, single = runs["shards"][n], runs["single"]
    infos = [json.loads((s / "shard.json").read_text()) for s in shards]
    assert [(i["shard"], i["shards"]) for i in infos] == [(k, n) for k in range(1, n + 1)]
    units = sorted(u for i in infos for u in i["units"])
    assert units == list(range(len(units))) and len(units) >= 8
    assert len({i["run_fingerprint"] for i in infos}) == 1

    # Each shard's own files hold its records only; together, every record once.
    seq_rows = [row for s in shards for row in _rows(s / "sequences.tsv")]
    assert sorted(seq_rows) == sorted(_rows(single / "sequences.tsv"))
    frame_rows = [row for s in shards for row in _rows(s / "prediction_results.txt")]
    assert sorted(frame_rows) == sorted(_rows(single / "prediction_results.txt"))
    if n > 1:
        assert all(_rows(s / "sequences.tsv") for s in shards), "a shard got no record"
    # No frame is scored twice: a shard runs no model on the others' units.
    scored = [json.loads((s / "run.json").read_text())["timing"]["frames_scored_this_run"]
              for s in shards]
    assert sum(scored) == json.loads((single / "run.json").read_text())["counts"]["frames"]

    merged = tmp_path / "merged"
    assert main(["merge", *map(str, reversed(shards)), "-o", str(merged), "-q"]) == 0
    assert predict_results(merged) == predict_results(single)
    run, ref = (json.loads((d / "run.json").read_text()) for d in (merged, single))
    assert run["fingerprint"] == ref["fingerprint"] == infos[0]["run_fingerprint"]
    assert run["counts"] == ref["counts"] and run["params"] == ref["params"]
    assert [s["shard"] for s in run["timing"]["shards"]] == [f"{k}/{n}" for k in range(1, n + 1)]
    assert not (merged / ".virnucpro").exists()


def test_a_shard_on_two_worker_processes_writes_the_same(runs, tiny_models, tmp_path):
    """Results arrive out of order from processes, and a shard's unit indexes have gaps."""
    out = tmp_path / "s1"
    assert main(predict_args(tiny_models, [runs["input"]], out, *COMMON, "--shard", "1/2",
                      "--workers", "2")) == 0
    assert predict_results(out) == predict_results(runs["shards"][2][0])


def test_merged_directory_is_a_finished_single_run(runs, tiny_models, tmp_path):
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, runs["shards"][2]), "-o", str(merged), "-q"]) == 0
    before = {p: p.stat().st_mtime_ns for p in predict_paths(merged).values()}
    assert main(predict_args(tiny_models, [runs["input"]], merged, *COMMON)) == 0
    assert {p: p.stat().st_mtime_ns for p in predict_paths(merged).values()} == before


def test_embeddings_merge_like_a_single_run(tiny_models, shared_run, tmp_path):
    extra = (*COMMON, "--save-embeddings")
    # with_empty_records(path, 12); test_predict reads this run too
    base = shared_run("orf12+empty", *extra)
    inp, single = base.input, base.out
    shards = [tmp_path / "s1", tmp_path / "s2"]
    for i, out in enumerate(shards, 1):
        assert main(predict_args(tiny_models, [inp], out, *extra, "--shard", f"{i}/2")) == 0
        assert not (out / "embeddings").exists()  # a shard keeps its features in units/
        scored = 0
        for unit in (out / "units").glob("*.npz"):
            with np.load(unit) as z:
                if len(z["scores"]):  # units without frames are saved too, featureless
                    assert z["features"].shape == (len(z["frame_ids"]), 64)
                    scored += 1
        assert scored
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "-o", str(merged), "-q"]) == 0
    assert predict_results(merged) == predict_results(single)
    names = sorted(p.name for p in (single / "embeddings").glob("*.npz"))
    assert names and sorted(p.name for p in (merged / "embeddings").glob("*.npz")) == names
    for name in names:
        with np.load(single / "embeddings" / name) as a, \
                np.load(merged / "embeddings" / name) as b:
            assert a["frame_ids"].tolist() == b["frame_ids"].tolist()
            assert np.array_equal(a["features"], b["features"])


# ------------------------------------------------------------------ refusals
def _refused(capsys, argv: list[str], *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_incomplete_or_mixed_shards_are_refused(runs, tiny_models, tmp_path, capsys):
    s2, s3, out = runs["shards"][2], runs["shards"][3], str(tmp_path / "m")
    _refused(capsys, ["merge", str(s3[0]), str(s3[2]), "-o", out], "missing shard 2/3")
    _refused(capsys, ["merge", str(s3[0]), str(s3[1]), str(s3[1]), str(s3[2]), "-o", out],
             "shard 2/3 is given twice", str(s3[1]))
    _refused(capsys, ["merge", str(s2[0]), str(s3[1]), "-o", out], "shard 1/2", "shard 2/3")
    _refused(capsys, ["merge", str(s2[0]), str(runs["single"]), "-o", out],
             "not a shard output", str(runs["single"]))

    other = tmp_path / "other"  # same input, another threshold: another run
    assert main(predict_args(tiny_models, [runs["input"]], other, *COMMON, "--threshold", "0.5",
                      "--shard", "2/2")) == 0
    _refused(capsys, ["merge", str(s2[0]), str(other), "-o", out],
             "shards of different runs", "threshold 0.3 vs 0.5")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(s2[1], unfinished)
    (unfinished / "run.json").unlink()
    _refused(capsys, ["merge", str(s2[0]), str(unfinished), "-o", out], "unfinished")

    holed = tmp_path / "holed"
    shutil.copytree(s2[1], holed)
    victim = sorted((holed / "units").glob("*.npz"))[0]
    victim.unlink()
    _refused(capsys, ["merge", str(s2[0]), str(holed), "-o", out], victim.name, "incomplete")
    assert not any((tmp_path / "m").glob("*.tsv"))


def test_changed_input_is_refused(tiny_models, tmp_path, capsys):
    """A merge checks the input each shard read, so one shard (1/1) is enough to show it."""
    inp = with_empty_records(tmp_path / "in.fa", 6)
    shards = [tmp_path / "s1"]
    assert main(predict_args(tiny_models, [inp], shards[0], *COMMON, "--shard", "1/1")) == 0
    inp.write_text(inp.read_text().replace("seq0 ", "seqX "))
    _refused(capsys, ["merge", *map(str, shards), "-o", str(tmp_path / "m")],
             str(inp), "missing or has changed")
    inp.unlink()
    _refused(capsys, ["merge", *map(str, shards), "-o", str(tmp_path / "m")],
             "missing or has changed")


def test_merge_output_rules(runs, tmp_path, capsys):
    s2 = list(map(str, runs["shards"][2]))
    _refused(capsys, ["merge", *s2, "-o", s2[0]], "is one of the shard directories")
    out = tmp_path / "m"
    out.mkdir()
    (out / "sequences.tsv").write_text("mine\n")
    _refused(capsys, ["merge", *s2, "-o", str(out)], "already holds sequences.tsv", "--force")
    assert (out / "sequences.tsv").read_text() == "mine\n"
    assert main(["merge", *s2, "-o", str(out), "--force", "-q"]) == 0
    assert predict_results(out) == predict_results(runs["single"])


def test_shard_option_rules(tiny_models, tmp_path, capsys):
    for bad in ("0/2", "3/2", "x"):
        assert main(predict_args(tiny_models, ["in.fa"], tmp_path / "o", "--shard", bad)) == 2
        assert "--shard" in capsys.readouterr().err
    _refused(capsys, predict_args(tiny_models, ["-"], tmp_path / "o", "--shard", "1/2"),
             "--shard cannot read stdin")


def test_force_turns_a_shard_directory_into_a_single_run(runs, tiny_models, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(runs["shards"][2][0], out)
    assert main(predict_args(tiny_models, [runs["input"]], out, *COMMON, "--force")) == 0
    assert not any(p.exists() for p in shard_paths(out).values())
    assert predict_results(out) == predict_results(runs["single"])


def test_killed_shard_resumes_and_merges_byte_identical(tiny_models, shared_run, tmp_path):
    common = SMALL_UNITS  # dozens of units of 4 frames
    base = shared_run("orf60", *common)  # the single run
    inp, single, s1, s2 = base.input, base.out, tmp_path / "s1", tmp_path / "s2"
    assert main(predict_args(tiny_models, [inp], s2, *common, "--shard", "2/2")) == 0

    cmd = [sys.executable, "-m", "virnucpro",
           *predict_args(tiny_models, [inp], s1, *common, "--shard", "1/2")]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((s1 / "units").glob("[0-9]*.npz"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the shard ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (s1 / "run.json").exists() and not (s1 / "shard.json").exists()

    assert main(predict_args(tiny_models, [inp], s1, *common, "--shard", "1/2")) == 0
    run = json.loads((s1 / "run.json").read_text())
    assert run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]
    merged = tmp_path / "merged"
    assert main(["merge", str(s1), str(s2), "-o", str(merged), "-q"]) == 0
    assert predict_results(merged) == predict_results(single)
