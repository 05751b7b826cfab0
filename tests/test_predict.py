"""End-to-end `virnucpro predict` with tiny models: reference parity, workers, resume, errors."""

from __future__ import annotations

import json
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
from conftest import ROOT, SHARD_SETTINGS, SMALL_UNITS, predict_args, predict_results

from virnucpro.cli import main
from virnucpro.outputs import (
    CHUNK_COLUMNS,
    HIGHEST_COLUMNS,
    PREDICTION_COLUMNS,
    SEQUENCE_COLUMNS,
    predict_paths,
)

EXAMPLE = ROOT / "src" / "virnucpro" / "data" / "example.fa"




def _table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ the reference
def _reference_scores(models, frames) -> np.ndarray:
    """One frame at a time, no batching and no mask: the straightforward computation."""
    from tokenizers import Tokenizer
    from transformers import EsmModel

    from virnucpro.models.classifier import load_classifier
    from virnucpro.models.dnabert import load_dnabert

    dnabert = load_dnabert(models.dnabert_dir)
    tok = Tokenizer.from_file(str(models.dnabert_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    esm = EsmModel.from_pretrained(models.esm_dir, add_pooling_layer=False).eval()
    vocab = (models.esm_dir / "vocab.txt").read_text().split()
    clf, _ = load_classifier(models.classifier_path)
    rows = []
    with torch.no_grad():
        for f in frames:
            ids = torch.tensor([tok.encode(f.nucleotide.upper()).ids])
            dna = dnabert(ids)[0].mean(0)
            prot_ids = [vocab.index("<cls>"), *(vocab.index(a) for a in f.protein),
                        vocab.index("<eos>")]
            hidden = esm(torch.tensor([prot_ids])).last_hidden_state[0]
            prot = hidden[1:len(f.protein) + 1].mean(0)
            logits = clf(torch.cat([dna, prot])[None].float())
            rows.append(torch.softmax(logits, dim=1)[0].numpy())
    return np.array(rows, dtype=np.float32)


def test_matches_reference_computation(tiny_models, tmp_path):
    from virnucpro.frames import iter_record_frames
    from virnucpro.reader import read_records

    out = tmp_path / "out"
    threshold = 0.3  # the tiny random classifier scores low; this gives both calls
    assert main(predict_args(tiny_models, [EXAMPLE], out, "--threshold", str(threshold))) == 0
    records = list(iter_record_frames(read_records([str(EXAMPLE)]), 500))
    frames = [f for rf in records for fs in rf.frames for f in fs]
    ref = _reference_scores(tiny_models, frames)

    rows = _table(out / "prediction_results.txt")
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert [r[0] for r in rows[1:]] == [f.id for f in frames]
    got = np.array([[float(r[2]), float(r[3])] for r in rows[1:]])
    assert np.abs(got - ref).max() <= 1e-5
    assert [r[1] for r in rows[1:]] == ["virus" if s[1] > s[0] else "others" for s in ref]

    # highestscore: one row per chunk with frames, sorted by id as strings.
    by_chunk: dict[str, list[np.ndarray]] = {}
    for f, s in zip(frames, ref, strict=True):
        by_chunk.setdefault(f.id[:-2], []).append(s)
    expect = [[cid, str(bool(max(s[1] for s in v) >= max(s[0] for s in v)))]
              for cid, v in sorted(by_chunk.items())]
    hs = _table(out / "prediction_results_highestscore.csv")
    assert tuple(hs[0]) == HIGHEST_COLUMNS and hs[1:] == expect

    # sequences.tsv: input order, mean of chunk scores, calls at the threshold.
    seqs = _table(out / "sequences.tsv")
    assert tuple(seqs[0]) == SEQUENCE_COLUMNS
    assert [r[0] for r in seqs[1:]] == [rf.record.id for rf in records]
    pos = 0
    viral = []
    for row, rf in zip(seqs[1:], records, strict=True):
        chunk_scores = []
        for fs in rf.frames:
            s = ref[pos:pos + len(fs)]
            pos += len(fs)
            if len(fs):
                chunk_scores.append((s[:, 1].max() + 1 - s[:, 0].max()) / 2)
        assert row[1] == str(len(rf.record.seq)) and row[2] == str(len(rf.chunks))
        assert row[3] == str(len(chunk_scores))
        assert row[4] == str(sum(map(len, rf.frames)))
        if not chunk_scores:
            assert row[5:] == ["", "no_call", "empty" if not rf.record.seq else
                               "no_stop_free_frame"]
            continue
        score = float(np.mean(chunk_scores))
        assert abs(float(row[5]) - score) <= 1e-5
        assert row[6] == ("virus" if score >= threshold else "not_virus") and row[7] == ""
        if row[6] == "virus":
            viral.append(rf.record)
    calls = {r[6] for r in seqs[1:]}
    assert {"virus", "not_virus", "no_call"} <= calls, "the example should exercise every call"

    chunks = _table(out / "chunks.tsv")
    assert tuple(chunks[0]) == CHUNK_COLUMNS
    assert [r[0] for r in chunks[1:]] == [c.id for rf in records for c in rf.chunks]
    assert [(int(r[2]), int(r[3])) for r in chunks[1:]] == [
        (c.start, c.end) for rf in records for c in rf.chunks]

    fasta = (out / "viral.fna").read_text()
    assert [line[1:] for line in fasta.splitlines() if line.startswith(">")] == [
        r.header for r in viral]
    assert fasta.replace("\n", "").count(viral[0].seq) == 1

    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["frames"] == len(frames)
    assert run["counts"]["sequences"] == len(records)
    assert run["params"]["chunk_size"] == 500 and run["params"]["threshold"] == threshold
    assert run["command_line"][:2] == ["virnucpro", "predict"]
    assert set(run["models"]) == {"dnabert", "esm", "classifier"}
    assert all(m["sha256"] for m in run["models"].values())
    assert {"dnabert", "esm", "classifier"} <= set(run["timing"]["stages"])
    assert not (out / ".virnucpro").exists()


def test_original_chunk_rule_is_reproduced_at_one_chunk(shared_run):
    """A one-chunk sequence is `virus` at 0.5 exactly when the original's Is_Virus is True."""
    out = shared_run(str(EXAMPLE)).out  # predict_args' defaults: threshold 0.5
    is_virus = dict(r for r in _table(out / "prediction_results_highestscore.csv")[1:])
    for row in _table(out / "sequences.tsv")[1:]:
        if row[2] == "1" and row[3] == "1":
            assert (row[6] == "virus") == (is_virus[row[0] + "_chunk_1"] == "True")


def test_two_workers_give_byte_identical_outputs(shared_run):
    """Dozens of units of 4 frames, on one worker and on two (both runs are shared: the
    resume tests compare with the first, test_runtime reads the plan of the second)."""
    one = shared_run("orf60", *SMALL_UNITS).out  # a CPU run has one worker by default
    two = shared_run("orf60", *SMALL_UNITS, "--workers", "2").out
    assert predict_results(one) == predict_results(two)
    workers = [len(json.loads((out / "run.json").read_text())["plan"]["workers"])
               for out in (one, two)]
    assert workers == [1, 2]


def test_rerun_of_a_finished_run_does_nothing_and_a_different_run_is_refused(
        tiny_models, shared_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(shared_run(str(EXAMPLE)).out, out)  # predict_args(tiny_models, [EXAMPLE])
    before = {p: p.stat().st_mtime_ns for p in predict_paths(out).values()}
    assert main(predict_args(tiny_models, [EXAMPLE], out)) == 0
    assert {p: p.stat().st_mtime_ns for p in predict_paths(out).values()} == before

    capsys.readouterr()
    assert main(predict_args(tiny_models, [EXAMPLE], out, "--unit-frames", "7")) == 1
    err = capsys.readouterr().err
    assert "holds a different run (unit_frames 2048 there, 7 now)" in err
    assert "--force" in err and str(out) in err and len(err.strip().splitlines()) == 1

    assert main(predict_args(tiny_models, [EXAMPLE], out, "--unit-frames", "7", "--force")) == 0
    assert json.loads((out / "run.json").read_text())["params"]["unit_frames"] == 7


def test_a_new_threshold_rewrites_the_verdicts_from_the_saved_scores(tiny_models, shared_run,
                                                                     tmp_path, monkeypatch):
    base = shared_run("orf30")  # at the defaults: threshold 0.5
    inp, fresh, out = base.input, tmp_path / "fresh", tmp_path / "out"
    assert main(predict_args(tiny_models, [inp], fresh, "--threshold", "0.45",
                             "--min-region-length", "0")) == 0
    shutil.copytree(base.out, out)
    assert predict_results(out)["sequences"] != predict_results(fresh)["sequences"]

    def no_workers(*_a):
        raise AssertionError("a worker was started to re-threshold")

    monkeypatch.setattr("virnucpro.runtime.engine.Pool", no_workers)
    assert main(predict_args(tiny_models, [inp], out, "--threshold", "0.45",
                             "--min-region-length", "0")) == 0
    assert predict_results(out) == predict_results(fresh)
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["threshold"] == 0.45 and run["rethresholded"]["from"] == 0.5
    assert run["fingerprint"] == json.loads((fresh / "run.json").read_text())["fingerprint"]
    assert not (out / ".virnucpro").exists()


def test_foreign_outputs_are_not_overwritten(tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sequences.tsv").write_text("mine\n")
    assert main(predict_args(tiny_models, [EXAMPLE], out)) == 1
    assert "sequences.tsv" in capsys.readouterr().err
    assert (out / "sequences.tsv").read_text() == "mine\n"


@pytest.mark.parametrize("content, message", [
    (">p1\nMKVLLAEFQW\n", "invalid character"),
    ("", "empty file"),
])
def test_bad_input_is_one_clear_line(tiny_models, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.fa"
    bad.write_text(content)
    assert main(predict_args(tiny_models, [bad], tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert message in err and "bad.fa" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_model_offline_fails_at_once(tmp_path, capsys):
    t0 = time.perf_counter()
    rc = main(["predict", str(EXAMPLE), "-o", str(tmp_path / "out"), "--offline",
               "--models-dir", str(tmp_path / "empty"), "-q"])
    assert rc == 1 and time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "virnucpro models download" in err and "Traceback" not in err


def test_save_embeddings(shared_run):
    # test_shards' single run with embeddings (12 ORF-rich records and two without a frame).
    out = shared_run("orf12+empty", *SHARD_SETTINGS, "--save-embeddings").out
    files = sorted((out / "embeddings").glob("*.npz"))
    assert files
    with np.load(files[0]) as z:
        n = len(z["frame_ids"])
        assert z["features"].shape == (n, 32 + 32) and z["features"].dtype == np.float32


def _state_units(out: Path) -> int:
    return len(list((out / ".virnucpro" / "units").glob("[0-9]*.npz")))


@pytest.mark.parametrize("kill_after_units", [0, 3])
def test_resume_after_sigkill_is_byte_identical(tiny_models, shared_run, tmp_path,
                                                kill_after_units):
    common = SMALL_UNITS  # dozens of units of 4 frames
    base = shared_run("orf60", *common)  # the uninterrupted run
    inp, ref = base.input, base.out

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucpro", *predict_args(tiny_models, [inp], out, *common)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / ".virnucpro" / "state.json").exists() and \
                _state_units(out) >= kill_after_units:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    done = _state_units(out)
    assert main(predict_args(tiny_models, [inp], out, *common)) == 0
    assert predict_results(out) == predict_results(ref)
    run = json.loads((out / "run.json").read_text())
    assert run["timing"]["frames_scored_this_run"] <= run["counts"]["frames"]
    if done:
        assert run["timing"]["frames_scored_this_run"] < run["counts"]["frames"]


def test_highest_score_sort_spills_and_merges_identically(tiny_models, shared_run, tmp_path,
                                                          monkeypatch):
    """Chunk rows are sorted on disk in runs, merged a few files at a time: same bytes."""
    import virnucpro.writer

    # Units of 4 frames (the run test_two_workers_give_byte_identical_outputs compares): the
    # writer adds a unit's rows at once, so a sort run holds one or a few units' rows.
    base = shared_run("orf60", *SMALL_UNITS)
    inp, whole = base.input, base.out
    monkeypatch.setattr(virnucpro.writer, "_SORT_RUN_CHARS", 60)  # a run every ~3 rows
    monkeypatch.setattr(virnucpro.writer, "_MERGE_FAN_IN", 2)
    assert main(predict_args(tiny_models, [inp], tmp_path / "spilled", *SMALL_UNITS)) == 0
    assert predict_results(tmp_path / "spilled") == predict_results(whole)
    rows = _table(tmp_path / "spilled" / "prediction_results_highestscore.csv")[1:]
    # At most 4 rows a unit and ~3 a run: more than 4 runs, so two merge levels at fan-in 2.
    assert len(rows) > 3 * 2 * 2, "enough rows for several spills and two merge levels"
    assert not list((tmp_path / "spilled").rglob("highest_*.tsv"))
