"""The parent is a pump: records go to the workers raw, rows come back rendered; long records
are split over units; the parent never imports torch, leaves nothing behind when killed, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_UNITS, orf_rich_fasta, predict_args, predict_results

from virnucpro.cli import main
from virnucpro.frames import chunk_bounds, iter_record_frames, n_chunks, piece_frames
from virnucpro.reader import Record
from virnucpro.regions import RegionParams
from virnucpro.render import Tails, add_tail, render_unit
from virnucpro.runtime.units import record_units, unit_chunks

SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
         if a + b + c not in ("TAA", "TAG", "TGA")]


def _long_record(length: int, islands: int, seed: int = 0) -> str:
    """Random DNA (almost no stop-free frame) with stop-free ORF islands of 1.5 kb: a long
    contig whose frames stay few, so the tiny models score it in seconds."""
    rng = random.Random(seed)
    seq = bytearray(rng.choice(b"ACGT") for _ in range(length))
    for k in range(islands):
        at = (k + 1) * length // (islands + 1)
        orf = "".join(rng.choice(SENSE) for _ in range(500)).encode()
        seq[at:at + len(orf)] = orf
    return seq.decode()


def _fasta(path: Path, long_length: int, islands: int = 30) -> Path:
    short = [f">s{i}\n{''.join(random.Random(i).choice(SENSE) for _ in range(100 + 40 * i))}\n"
             for i in range(6)]
    contig = _long_record(long_length, islands)
    path.write_text(short[0] + short[1] + f">big a long contig\n{contig}\n" + "".join(short[2:]))
    return path


# ------------------------------------------------------------------ units and rendering
def test_long_records_are_cut_at_chunk_boundaries_into_units_of_bounded_size():
    records = [Record("a", "a", "ACGT" * 100, ""), Record("long", "long x", "A" * 100_300, ""),
               Record("b", "b", "C" * 600, ""), Record("e", "e", "", "")]
    units = list(record_units(records, 500, 60))
    most = unit_chunks(60)
    assert most == 10
    assert all(u.n_chunks <= most for u, _ in units)
    assert [u.index for u, _ in units] == list(range(len(units)))
    parts = [(p, rec) for u, rec in units for p in u.pieces if p.id == "long"]
    n = n_chunks(100_300, 500)
    assert [(p.first, p.stop) for p, _ in parts] == [(k, min(k + most, n))
                                                     for k in range(0, n, most)]
    for p, rec in parts:  # each part holds exactly the bases of its chunks
        bounds = chunk_bounds(100_300, 500, p.first, p.stop)
        start, end = bounds[0][0], bounds[-1][1]
        assert (p.offset, len(p.seq)) == (start, end - start) and rec.id == "long"
    # The last part opens the next unit: the records after it join it.
    last = next(u for u, _ in units if u.pieces[0].id == "long" and u.pieces[0].stop == n)
    assert [p.id for p in last.pieces] == ["long", "b", "e"]


def test_a_split_record_renders_the_bytes_of_the_whole_one():
    """Parts rendered on their own and the tail rendered from their chunk scores give the
    same rows as the whole record, for the same frame scores."""
    rng = np.random.default_rng(0)
    seq = _long_record(60_000, 12)
    rec = Record("big", "big long", seq, "")
    whole = [u for u, _ in record_units([rec], 500, 10_000)]
    split = list(record_units([rec], 500, 60))
    assert len(whole) == 1 and len(split) > 5
    rf_whole = piece_frames(whole[0].pieces, 500)
    n = sum(len(f) for rf in rf_whole for f in rf.frames)
    s2 = rng.random(n, dtype=np.float32)
    scores = np.stack([1 - s2, s2], axis=1)
    args = (0.3, RegionParams(1000, 1e-3), 500)
    expected = render_unit(rf_whole, whole[0].pieces, scores, *args)
    tails, pos, texts = Tails(*args), 0, dict.fromkeys(expected.texts, "")
    for unit, record in split:
        rfs = piece_frames(unit.pieces, 500)
        k = sum(len(f) for rf in rfs for f in rf.frames)
        got = render_unit(rfs, unit.pieces, scores[pos:pos + k], *args)
        pos += k
        for part in got.parts:
            tail = tails.add(part, record)
            if tail is not None:
                add_tail(got, tail)
        for role, text in got.texts.items():
            texts[role] += text
    assert texts == expected.texts
    assert expected.texts["regions"], "the islands make regions"
    # Chunking a part equals chunking the whole record.
    assert [c.id for rf in rf_whole for c in rf.chunks] == [
        c.id for u, _ in split for rf in piece_frames(u.pieces, 500) for c in rf.chunks]
    assert [c.seq for rf in iter_record_frames([rec], 500) for c in rf.chunks] == [
        c.seq for u, _ in split for rf in piece_frames(u.pieces, 500) for c in rf.chunks]


def _started(args: list[str], out: Path, units: int, **popen: object) -> subprocess.Popen:
    """`virnucpro ARGS` in a subprocess, returned once `units` units of its run are saved in
    `out` (and it is still running)."""
    proc = subprocess.Popen([sys.executable, "-m", "virnucpro", *args], **popen)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / ".virnucpro" / "units").glob("[0-9]*.npz"))) >= units:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"
    return proc


# ------------------------------------------------------------------ a multi-Mbp record
def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def big(tiny_models, tmp_path_factory):
    """A 2.5 Mbp contig between short records, scored unsplit and split over units."""
    tmp = tmp_path_factory.mktemp("big")
    inp = _fasta(tmp / "in.fa", 2_500_000)
    common = ("--device", "cpu", "--threads", "1")
    whole, split = tmp / "whole", tmp / "split"
    assert main(predict_args(tiny_models, [inp], whole, *common, "--unit-frames",
                             "40000")) == 0
    assert main(predict_args(tiny_models, [inp], split, *common, "--unit-frames", "600")) == 0
    return {"input": inp, "whole": whole, "split": split, "common": common}


def test_a_split_multi_mbp_record_gets_the_unsplit_calls(big):
    whole, split = big["whole"], big["split"]
    assert json.loads((split / "run.json").read_text())["counts"]["chunks"] == \
        json.loads((whole / "run.json").read_text())["counts"]["chunks"] > 5000
    for name, scores in (("sequences.tsv", (5,)), ("chunks.tsv", (5,)),
                         ("prediction_results.txt", (2, 3))):
        a, b = _rows(whole / name), _rows(split / name)
        # Every column but the scores is equal: ids, coordinates, counts and calls.
        assert [[x for i, x in enumerate(r) if i not in scores] for r in a] == \
            [[x for i, x in enumerate(r) if i not in scores] for r in b], name
        got = [(float(x[i]) if x[i] else None, float(y[i]) if y[i] else None)
               for x, y in zip(a, b, strict=True) for i in scores]
        assert all((p is None and q is None) or abs(p - q) <= 1e-6 for p, q in got), name
    big_row = next(r for r in _rows(split / "sequences.tsv") if r[0] == "big")
    assert big_row[1] == "2500000" and int(big_row[4]) > 0
    assert (split / "regions.tsv").read_text() == (whole / "regions.tsv").read_text()


def test_a_split_record_is_byte_identical_over_workers_resume_and_shards(tiny_models, big,
                                                                           tmp_path):
    inp, common = big["input"], (*big["common"], "--unit-frames", "600")
    two = tmp_path / "two"
    assert main(predict_args(tiny_models, [inp], two, *common, "--workers", "2")) == 0
    assert predict_results(two) == predict_results(big["split"])

    shards = [tmp_path / "s1", tmp_path / "s2"]
    for i, out in enumerate(shards, 1):
        assert main(predict_args(tiny_models, [inp], out, *common, "--shard", f"{i}/2")) == 0
    # The 2.5 Mbp record's parts land in both shards: neither writes its sequence row (it
    # lacks the other parts' chunk scores); the merge does.
    with_parts = [s for s in shards if any(r[1] == "big" for r in _rows(s / "chunks.tsv"))]
    assert len(with_parts) >= 2
    assert not any(r[0] == "big" for s in shards for r in _rows(s / "sequences.tsv"))
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "-o", str(merged), "-q"]) == 0
    assert predict_results(merged) == predict_results(big["split"])

    killed = tmp_path / "killed"
    proc = _started(predict_args(tiny_models, [inp], killed, *common), killed, 3,
                    stderr=subprocess.DEVNULL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(predict_args(tiny_models, [inp], killed, *common)) == 0
    run = json.loads((killed / "run.json").read_text())
    assert run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]
    assert predict_results(killed) == predict_results(big["split"])


# ------------------------------------------------------------------ the parent process
def _script(tiny_models, inp: Path, out: Path, guard: bool) -> str:
    call = (f"rc = main({predict_args(tiny_models, [inp], out, '--device', 'cpu')!r})\n"
            "assert rc == 0, rc\n"
            "assert 'torch' not in sys.modules, 'the parent imported torch'\n")
    body = textwrap.indent(call, "    ") if guard else call
    return ("import sys\n"
            f"open({str(out) + '.ran'!r}, 'a').write('x')  # runs once per process that runs "
            "this file\n"
            "from virnucpro.cli import main\n"
            + ("if __name__ == '__main__':\n" if guard else "") + body)


@pytest.mark.parametrize("how", ["stdin", "script without guard", "-c"])
def test_predict_from_a_program_never_reimports_it_nor_imports_torch(tiny_models, tmp_path,
                                                                     how):
    inp = orf_rich_fasta(tmp_path / "in.fa", 6)
    out = tmp_path / "out"
    code = _script(tiny_models, inp, out, guard=False)
    if how == "stdin":
        run = subprocess.run([sys.executable, "-"], input=code, text=True, capture_output=True,
                             timeout=300)
    elif how == "-c":
        run = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True,
                             timeout=300)
    else:
        script = tmp_path / "script.py"
        script.write_text(code)
        run = subprocess.run([sys.executable, str(script)], text=True, capture_output=True,
                             timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.ran").read_text() == "x", "the caller's code ran in a worker"
    assert (out / "run.json").is_file()


def _family(pid: int) -> list[int]:
    """`pid` and its child processes (Linux)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [pid, *kids]


def _shm_maps(pid: int) -> list[str]:
    try:
        return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "/dev/shm/" in line]
    except OSError:  # the process has gone
        return []


def test_sigterm_stops_with_143_and_one_line_and_the_run_resumes(tiny_models, shared_run,
                                                                  tmp_path):
    common = SMALL_UNITS  # dozens of units of 4 frames
    base = shared_run("orf60", *common)  # the uninterrupted run
    inp, clean, out = base.input, base.out, tmp_path / "out"
    proc = _started(predict_args(tiny_models, [inp], out, *common), out, 2,
                    stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "resume" in lines[0], err
    assert "Traceback" not in err and "leaked semaphore" not in err
    assert main(predict_args(tiny_models, [inp], out, *common)) == 0
    assert predict_results(out) == predict_results(clean)


def test_a_killed_run_uses_no_shared_memory_and_its_workers_exit(tiny_models, tmp_path):
    """Parent and workers talk over pipes: none of them maps anything in /dev/shm (named
    semaphores are such files, and a kill -9 left nine behind per run), and the workers of
    a killed parent exit on their own."""
    if not Path("/proc/self/maps").is_file():
        pytest.skip("needs Linux /proc")
    inp = orf_rich_fasta(tmp_path / "in.fa", 40)
    out = tmp_path / "out"
    proc = _started(predict_args(tiny_models, [inp], out, "--device", "cpu", "--workers", "2",
                                 "--unit-frames", "24"), out, 1, stderr=subprocess.DEVNULL)
    family = _family(proc.pid)
    assert len(family) == 3, "the parent and its two workers"
    assert not [m for pid in family for m in _shm_maps(pid)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in family[1:]):
        time.sleep(0.1)
    alive = [p for p in family[1:] if Path(f"/proc/{p}/status").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    assert not alive, "workers outlived their killed parent"


def test_device_mistakes_fail_in_one_line_without_torch(tiny_models, tmp_path):
    inp = orf_rich_fasta(tmp_path / "in.fa", 2)
    args = predict_args(tiny_models, [inp], tmp_path / "out", "--device", "cuda")
    code = ("import sys\nfrom virnucpro.cli import main\n"
            f"rc = main({args!r})\n"
            "print(rc, 'torch' in sys.modules)\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.stdout.split() == ["1", "False"], run.stderr
    assert "GPU" in run.stderr or "CUDA" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


# ------------------------------------------------------------------ start-up
def test_a_local_checkpoint_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    import hashlib

    import virnucpro.models.manifest as manifest

    weights = tmp_path / "model" / "pytorch_model.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"weights" * 1000)
    hashed: list[Path] = []
    real = manifest.hash_file
    monkeypatch.setattr(manifest, "hash_file", lambda p, progress=False: (
        hashed.append(p), real(p, progress))[1])
    cache = tmp_path / "models"
    want = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest.cached_hash(weights, cache) == want
    assert manifest.cached_hash(weights, cache) == want
    assert len(hashed) == 1, "an unchanged checkpoint is not hashed again"
    assert manifest.cached_hash(weights, cache, rehash=True) == want and len(hashed) == 2
    weights.write_bytes(b"other" * 1000)  # new content, size and mtime
    assert manifest.cached_hash(weights, cache) == hashlib.sha256(b"other" * 1000).hexdigest()
    assert len(hashed) == 3
    (cache / manifest.HASH_CACHE).write_text("{not json")  # a damaged cache is rebuilt
    assert manifest.cached_hash(weights, cache) == hashlib.sha256(b"other" * 1000).hexdigest()


@pytest.fixture(scope="module")
def relative_run(tiny_models, tmp_path_factory):
    """One in-process run (the two tests below read it), every path given relative to its
    directory, and watched: which input files it opened (`reader._open_raw`), any input it
    hashed in a read of its own (`plan.sha256_file`), and its caller's open file
    descriptors before and after."""
    import virnucpro.reader
    import virnucpro.runtime.plan

    tmp = tmp_path_factory.mktemp("relative")
    orf_rich_fasta(tmp / "in.fa", 8)
    opened: list[str] = []
    hashed: list[object] = []
    real_open, real_hash = virnucpro.reader._open_raw, virnucpro.runtime.plan.sha256_file
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # every path below is given relative to here
        mp.setattr(virnucpro.reader, "_open_raw",
                   lambda path: (opened.append(os.path.abspath(path)), real_open(path))[1])
        mp.setattr(virnucpro.runtime.plan, "sha256_file",
                   lambda *a, **k: (hashed.append(a), real_hash(*a, **k))[1])
        models = type(tiny_models)(*(Path(os.path.relpath(p, tmp)) for p in (
            tiny_models.dnabert_dir, tiny_models.esm_dir, tiny_models.classifier_path)))
        fds = len(os.listdir("/proc/self/fd"))
        rc = main(predict_args(models, ["in.fa"], Path("out"), "--device", "cpu"))
        fds_after = len(os.listdir("/proc/self/fd"))
    assert rc == 0
    return {"dir": tmp, "opened": opened, "hashed": hashed, "fds": (fds, fds_after),
            "run": json.loads((tmp / "out" / "run.json").read_text())}


def test_each_input_is_read_twice_at_most(relative_run):
    """The input check hashes the bytes it reads; the run reads them once more."""
    inp = relative_run["dir"] / "in.fa"
    assert relative_run["opened"] == [str(inp), str(inp)]
    assert relative_run["hashed"] == [], "an input was hashed in a read of its own"
    run = relative_run["run"]
    assert run["inputs"][0]["sha256"] == __import__("hashlib").sha256(
        inp.read_bytes()).hexdigest()


def test_run_json_keeps_one_copy_of_the_workers_and_absolute_paths(relative_run):
    fds, fds_after = relative_run["fds"]
    assert fds_after <= fds, "a run left pipes open in its caller"
    run = relative_run["run"]
    assert "devices" not in run and "workers" not in run
    assert [w["device"] for w in run["plan"]["workers"]] == ["cpu"]
    paths = [run["config"]["output_dir"], run["config"]["runtime"]["dnabert"],
             run["config"]["runtime"]["esm"], run["config"]["classifier"],
             run["inputs"][0]["path"], *(m["path"] for m in run["models"].values())]
    assert all(Path(p).is_absolute() and Path(p).exists() for p in paths), paths
    assert Path(run["config"]["output_dir"]) == relative_run["dir"] / "out"
