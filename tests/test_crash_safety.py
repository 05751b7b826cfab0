"""Nothing silently wrong: a run killed while it switches a finished directory's files leaves
it all old or all new (commit.py), damaged saved units are named and rescored or refused
(their sha256), and no input is ever an output, --force or not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARD_SETTINGS, predict_args, predict_results

from virnucpro import commit
from virnucpro.cli import main
from virnucpro.outputs import MQC_FILES, STATE_DIR, predict_paths

FAST = SHARD_SETTINGS  # one thread, units of 24 frames, threshold 0.3: test_shards' runs


class Killed(BaseException):
    """Stands for kill -9 at one step of a switch: no handler of ours catches it."""


def _kill_at(k: int):
    """An `after_step` hook that stops the run just after step k (0-based)."""
    seen = []

    def hook(step: str) -> None:
        seen.append(step)
        if len(seen) == k + 1:
            raise Killed(step)
    return hook


def _kill_on(name: str):
    def hook(step: str) -> None:
        if step == name:
            raise Killed(step)
    return hook


@pytest.fixture
def hook(monkeypatch):
    def install(fn) -> None:
        monkeypatch.setattr(commit, "after_step", fn)
    return install


def _files(out: Path) -> dict[str, bytes]:
    """Every file a switch replaces, but run.json (its timings differ)."""
    found = {f"{k}": v for k, v in predict_results(out).items()}
    for name in MQC_FILES.values():
        found[name] = (out / name).read_bytes()
    return found


def _threshold(out: Path) -> float:
    return json.loads(predict_paths(out)["run"].read_text())["params"]["threshold"]


def _which(out: Path, runs: dict[str, Path]) -> str:
    """'old' or 'new': the one run whose every file `out` holds; fails on a mixed directory
    or on what a switch left behind."""
    got = _files(out)
    for name, ref in runs.items():
        if got == _files(ref) and _threshold(out) == _threshold(ref):
            assert not (out / commit.JOURNAL).exists() and not (out / commit.STAGING).exists()
            return name
    mixed = {name: sorted(k for k in got if got[k] != _files(ref)[k])
             for name, ref in runs.items()}
    raise AssertionError(f"{out} is mixed: files differing from each run {mixed}, "
                         f"run.json at {_threshold(out)}")


@pytest.fixture(scope="module")
def base(shared_run, tmp_path_factory):
    """A finished single run, its two shards, and the input: test_shards' own runs (24
    ORF-rich records, then two without a frame), which the tests here only read."""
    single = shared_run("orf24+empty", *FAST)
    shards = [shared_run("orf24+empty", *FAST, "--shard", f"{i}/2").out for i in (1, 2)]
    return {"root": tmp_path_factory.mktemp("crash"), "input": single.input,
            "single": single.out, "shards": shards}


@pytest.fixture(scope="module")
def rethresholded(base, tiny_models):
    """The single run re-thresholded, uninterrupted, at a threshold that changes calls and
    MultiQC's numbers; and the names of every step of its switch."""
    scores = sorted(float(r.split("\t")[5]) for r in
                    predict_paths(base["single"])["sequences"].read_text().splitlines()[1:]
                    if r.split("\t")[5])
    new_threshold = str(round(scores[len(scores) // 2], 6))
    new = base["root"] / "new" / "out"
    shutil.copytree(base["single"], new)
    steps: list[str] = []
    commit.after_step = steps.append
    try:
        assert main(predict_args(tiny_models, [base["input"]], new, *FAST,
                                 "--threshold", new_threshold)) == 0
    finally:
        commit.after_step = None
    old_files, new_files = _files(base["single"]), _files(new)
    assert old_files["sequences"] != new_files["sequences"]
    assert old_files[MQC_FILES["calls"]] != new_files[MQC_FILES["calls"]]
    return {"dir": new, "threshold": new_threshold, "steps": steps}


def test_a_switch_stages_everything_then_renames_run_json_last(rethresholded):
    steps = rethresholded["steps"]
    journal = steps.index("journal")
    assert all(s.startswith("staged ") for s in steps[:journal])
    assert {s.split()[1] for s in steps[:journal]} >= {*MQC_FILES.values(), "sequences.tsv",
                                                       "viral.fna", "run.json"}
    renames = steps[journal + 1:-2]
    assert all(s.startswith("renamed ") for s in renames) and renames[-1] == "renamed run.json"
    assert steps[-2:] == ["journal removed", "cleaned"]


def test_rethreshold_killed_at_every_step_leaves_one_run(base, rethresholded, tiny_models,
                                                         tmp_path, hook):
    """Killed after each step k: recover() gives all old (before the journal) or all new
    (after); a rerun at the old threshold never calls a mixed directory finished, and a
    rerun at the new one leaves no stale MultiQC file."""
    old, new = base["single"], rethresholded["dir"]
    runs = {"old": old, "new": new}
    steps = rethresholded["steps"]
    for k, step in enumerate(steps):
        killed = tmp_path / f"k{k}" / "out"
        shutil.copytree(old, killed)
        hook(_kill_at(k))
        with pytest.raises(Killed):
            main(predict_args(tiny_models, [base["input"]], killed, *FAST,
                              "--threshold", rethresholded["threshold"]))
        hook(None)
        again = tmp_path / f"k{k}b" / "out"
        shutil.copytree(killed, again)
        recovered = tmp_path / f"k{k}c" / "out"
        shutil.copytree(killed, recovered)

        commit.recover(recovered)
        expect = "new" if k >= steps.index("journal") else "old"
        assert _which(recovered, runs) == expect, step

        assert main(predict_args(tiny_models, [base["input"]], killed, *FAST)) == 0
        assert _which(killed, runs) == "old", step
        assert main(predict_args(tiny_models, [base["input"]], again, *FAST,
                                 "--threshold", rethresholded["threshold"])) == 0
        assert _which(again, runs) == "new", step
        for d in (killed, again):
            assert not (d / STATE_DIR).exists(), step


def test_a_real_kill_mid_switch_is_finished_by_the_next_run(base, rethresholded, tiny_models,
                                                           tmp_path):
    """os._exit in the middle of the renames: the directory really is mixed, until the next
    run (at the old threshold) finishes the switch and then applies its own."""
    out = tmp_path / "out"
    shutil.copytree(base["single"], out)
    code = ("import os, sys; from virnucpro import commit; from virnucpro.cli import main\n"
            "def stop(step):\n"
            "    if step == 'renamed sequences.tsv': os._exit(9)\n"
            "commit.after_step = stop\n"
            "sys.exit(main(sys.argv[1:]))\n")
    argv = predict_args(tiny_models, [base["input"]], out, *FAST,
                        "--threshold", rethresholded["threshold"])
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(commit.__file__).parents[1])})
    assert proc.returncode == 9, proc.stderr
    new = rethresholded["dir"]
    assert _files(out)["sequences"] == _files(new)["sequences"]
    assert _threshold(out) == _threshold(base["single"])  # mixed: run.json is still old
    assert main(predict_args(tiny_models, [base["input"]], out, *FAST)) == 0
    assert _which(out, {"old": base["single"], "new": new}) == "old"


@pytest.fixture(scope="module")
def unfinished(base, tiny_models):
    """A run killed at the first step of its final switch: every unit is saved, no output
    is in place."""
    out = base["root"] / "unfinished" / "out"
    commit.after_step = _kill_at(0)
    try:
        with pytest.raises(Killed):
            main(predict_args(tiny_models, [base["input"]], out, *FAST))
    finally:
        commit.after_step = None
    return out


def test_predict_killed_in_its_final_switch_resumes_or_is_finished(base, unfinished,
                                                                  tiny_models, tmp_path, hook):
    out = tmp_path / "out"
    shutil.copytree(unfinished, out)
    argv = predict_args(tiny_models, [base["input"]], out, *FAST)
    # Killed before the journal: the old state (an unfinished run) stands.
    assert not predict_paths(out)["run"].exists() and (out / STATE_DIR / "state.json").exists()
    hook(_kill_on("renamed viral.fna"))
    with pytest.raises(Killed):  # after the journal, mid-renames
        main(argv)
    assert (out / commit.JOURNAL).exists()
    hook(None)
    assert main(argv) == 0
    assert predict_results(out) == predict_results(base["single"])
    assert _files(out) == _files(base["single"])
    assert not any((out / p).exists() for p in (STATE_DIR, commit.JOURNAL, commit.STAGING))


def test_merge_killed_at_every_step_leaves_nothing_or_everything(base, tiny_models, tmp_path,
                                                                hook, capsys):
    single = base["single"]
    merge = ["merge", *map(str, base["shards"])]
    clean = tmp_path / "clean" / "out"
    steps: list[str] = []
    hook(steps.append)
    assert main([*merge, "-o", str(clean), "-q"]) == 0
    assert predict_results(clean) == predict_results(single)
    for k, step in enumerate(steps):
        out = tmp_path / f"k{k}" / "out"
        hook(_kill_at(k))
        with pytest.raises(Killed):
            main([*merge, "-o", str(out), "-q"])
        hook(None)
        capsys.readouterr()
        assert main([*merge, "-o", str(out), "-q"]) == 1  # refuses to overwrite, but first
        assert "--force" in capsys.readouterr().err  # it has finished or undone the switch
        if k >= steps.index("journal"):
            assert _files(out) == _files(clean), step
            assert not (out / STATE_DIR).exists()
        else:
            assert not any(p.exists() for p in predict_paths(out).values()), step
        assert not (out / commit.JOURNAL).exists() and not (out / commit.STAGING).exists()
        assert main([*merge, "-o", str(out), "-q", "--force"]) == 0
        assert _files(out) == _files(clean), step


# ------------------------------------------------------------------ checked saved units
def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # "edited": still a valid unit file, with one score changed
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["scores"] = arrays["scores"].copy()
        arrays["scores"][0] = arrays["scores"][0][::-1]
        with path.open("wb") as fh:
            np.savez(fh, **arrays)


def test_resume_names_and_rescores_damaged_units(base, unfinished, tiny_models, tmp_path,
                                                 capsys):
    out = tmp_path / "out"
    shutil.copytree(unfinished, out)
    argv = predict_args(tiny_models, [base["input"]], out, *FAST)
    units = sorted((out / STATE_DIR / "units").glob("[0-9]*.npz"))
    assert len(units) >= 3 and all(Path(f"{u}.sha256").is_file() for u in units)
    damaged = dict(zip(("empty", "truncated", "edited"), units[:3], strict=True))
    frames = 0
    for how, path in damaged.items():
        with np.load(path) as z:
            frames += len(z["scores"])
        _damage(path, how)
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    for path in damaged.values():
        assert sum(str(path) in line for line in err.splitlines()) == 1, err
    assert "Traceback" not in err and "EOFError" not in err
    assert predict_results(out) == predict_results(base["single"])
    run = json.loads(predict_paths(out)["run"].read_text())
    assert run["timing"]["frames_scored_this_run"] == frames


@pytest.mark.parametrize("how", ["empty", "truncated", "edited", "no digest"])
def test_merge_refuses_a_damaged_unit_naming_the_shard_to_rerun(base, tmp_path, capsys, how):
    shards = [tmp_path / f"s{i}" for i in (1, 2)]
    for src, dst in zip(base["shards"], shards, strict=True):
        shutil.copytree(src, dst)
    unit = sorted((shards[1] / "units").glob("[0-9]*.npz"))[0]
    if how == "no digest":
        Path(f"{unit}.sha256").unlink()
    else:
        _damage(unit, how)
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(unit) in err and "shard 2/2 needs a rerun" in err
    assert "Traceback" not in err and "BadZipFile" not in err
    assert not predict_paths(out)["run"].exists()


# ------------------------------------------------------------------ inputs are never outputs
def _refused(capsys, argv: list[str], victim: Path, content: bytes) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is also the run's output" in err, err
    assert victim.read_bytes() == content


@pytest.mark.parametrize("kind", ["same name", "hard link", "symlink", "state folder"])
def test_an_input_that_is_an_output_is_refused_with_or_without_force(base, tiny_models,
                                                                     tmp_path, capsys, kind):
    content = base["input"].read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    victim = out / "viral.fna"
    victim.write_bytes(content)
    given = victim
    if kind == "hard link":
        given = tmp_path / "in.fna"
        os.link(victim, given)
    elif kind == "symlink":
        given = tmp_path / "in.fna"
        given.symlink_to(victim)
    elif kind == "state folder":
        victim.unlink()
        (out / STATE_DIR).mkdir()
        victim = given = out / STATE_DIR / "in.fna"
        victim.write_bytes(content)
    for force in ((), ("--force",)):
        _refused(capsys, predict_args(tiny_models, [given], out, *FAST, *force), victim,
                 content)
    assert not predict_paths(out)["run"].exists()


def test_merge_refuses_an_input_inside_its_output(base, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    victim = out / "viral.fna"
    os.link(base["input"], victim)  # the very file the shards recorded as their input
    content = victim.read_bytes()
    for force in ((), ("--force",)):
        _refused(capsys, ["merge", *map(str, base["shards"]), "-o", str(out), "-q", *force],
                 victim, content)


def test_a_unit_counts_as_saved_only_with_a_matching_digest(tmp_path, caplog):
    from virnucpro.runtime.batching import WorkUnit
    from virnucpro.runtime.units import (
        UnitDamaged,
        finished_units,
        load_unit,
        save_unit,
        unit_path,
    )
    from virnucpro.runtime.worker import UnitResult

    (tmp_path / "units").mkdir()
    unit = WorkUnit(7, ("a_chunk_1F1",), ("ACGTACG",), ("TY",))
    scores = np.array([[0.25, 0.75]], np.float32)
    save_unit(tmp_path, unit, UnitResult(7, scores, None))
    path = unit_path(tmp_path, 7)
    digest = Path(f"{path}.sha256")
    assert digest.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  000007.npz\n"
    assert finished_units(tmp_path) == {7}

    kept = digest.read_bytes()
    digest.unlink()  # killed between the unit and its digest: not done, nothing to report
    assert finished_units(tmp_path) == set() and not caplog.records
    digest.write_bytes(kept)
    _damage(path, "edited")
    assert finished_units(tmp_path) == set()
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: damaged: its sha256 differs from the one recorded when it was saved "
        f"({path.stat().st_size} bytes); this unit is scored again"]
    with pytest.raises(UnitDamaged, match=str(path)):
        load_unit(tmp_path, unit)
    save_unit(tmp_path, unit, UnitResult(7, scores, None))  # rescored: whole again
    assert finished_units(tmp_path) == {7}
    assert load_unit(tmp_path, unit).scores.tolist() == scores.tolist()
