"""Every failure is one clear line, and no run is wasted: full and read-only disks, a busy
output directory, late bad records, strict values, damaged models, RNA, plain logs."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import SHARD_SETTINGS, SMALL_UNITS, orf_rich_fasta, predict_args, predict_results

from virnucpro.cli import main
from virnucpro.files import write_json

FAST = ("--device", "cpu", "--threads", "1")


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (needs root and mount, as CI has); unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_is_one_line_and_the_rerun_resumes(tiny_models, tmp_path, small_disk,
                                                     capsys):
    inp = orf_rich_fasta(tmp_path / "in.fa", 80)
    ref = tmp_path / "ref"
    assert main(predict_args(tiny_models, [inp], ref, *FAST, "--unit-frames", "48")) == 0
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (400 * 1024 - 96 * 1024))  # leaves ~96 KiB: not enough
    out = small_disk / "out"
    capsys.readouterr()
    assert main(predict_args(tiny_models, [inp], out, *FAST, "--unit-frames", "48")) == 1
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "free some space" in line, line
    assert str(small_disk) in line
    filler.unlink()
    assert main(predict_args(tiny_models, [inp], out, *FAST, "--unit-frames", "48")) == 0
    assert predict_results(out) == predict_results(ref)


def test_read_only_output_directory_is_one_line(tiny_models, tmp_path, small_disk, capsys):
    (small_disk / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    inp = orf_rich_fasta(tmp_path / "in.fa", 4)
    capsys.readouterr()
    assert main(predict_args(tiny_models, [inp], small_disk / "out", *FAST)) == 1
    line = _one_line(capsys.readouterr().err)
    assert "read-only" in line.lower() and str(small_disk / "out") in line, line


def test_a_second_run_into_a_busy_directory_refuses_at_once(tiny_models, shared_run, tmp_path,
                                                            capsys):
    base = shared_run("orf60", *SMALL_UNITS)  # the same run, uninterrupted
    inp, ref, out = base.input, base.out, tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "virnucpro",
                              *predict_args(tiny_models, [inp], out, *SMALL_UNITS)])
    deadline = time.monotonic() + 60
    while not (out / ".virnucpro.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(predict_args(tiny_models, [inp], out, *SMALL_UNITS)) == 1
    assert time.monotonic() - t0 < 5
    line = _one_line(capsys.readouterr().err)
    assert "another virnucpro run is writing there" in line and str(out) in line
    assert first.wait(timeout=300) == 0
    assert predict_results(out) == predict_results(ref)
    assert not (out / ".virnucpro.lock").exists()


def test_threshold_must_be_a_finite_number_and_json_is_strict(tiny_models, tmp_path, capsys):
    inp = orf_rich_fasta(tmp_path / "in.fa", 2)
    for bad in ("nan", "inf", "1.5"):
        assert main(predict_args(tiny_models, [inp], tmp_path / "out", "--threshold", bad)) != 0
        err = capsys.readouterr().err
        assert "threshold" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"threshold": math.nan})
    assert not (tmp_path / "x.json").exists()


def test_a_damaged_model_file_is_one_line_and_models_info_fails(tiny_models, tmp_path, capsys):
    esm = tmp_path / "esm"
    shutil.copytree(tiny_models.esm_dir, esm)
    weights = esm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    inp = orf_rich_fasta(tmp_path / "in.fa", 2)
    args = predict_args(tiny_models, [inp], tmp_path / "out")
    args[args.index("--esm") + 1] = str(esm)
    capsys.readouterr()
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(weights) in line and "truncated" in line, line
    assert main(["models", "info", "--esm", str(esm), "--dnabert", str(tiny_models.dnabert_dir),
                 "-p", str(tiny_models.classifier_path)]) == 1
    assert "damaged or truncated" in capsys.readouterr().out


def test_rna_is_read_as_dna(tiny_models, shared_run, tmp_path):
    settings = SHARD_SETTINGS
    base = shared_run("orf24+empty", *settings)  # the DNA: test_shards' single run
    rna = tmp_path / "rna.fa"
    rna.write_text("".join(line if line.startswith(">") else line.replace("T", "U")
                           for line in base.input.read_text().splitlines(keepends=True)))
    assert main(predict_args(tiny_models, [rna], tmp_path / "r", *settings)) == 0
    assert predict_results(tmp_path / "r") == predict_results(base.out)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["counts"]["rna_records"] == 24  # the two records without a T have no U


def test_a_late_bad_record_fails_before_any_model_loads(tiny_models, tmp_path, capsys):
    inp = orf_rich_fasta(tmp_path / "in.fa", 200)
    with inp.open("a") as fh:
        fh.write(">late\nACGTJACGT\n")
    out = tmp_path / "out"
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(predict_args(tiny_models, [inp], out)) == 1
    assert time.monotonic() - t0 < 5  # no worker was started
    line = _one_line(capsys.readouterr().err)
    assert f"{inp}: record 201 ('late'): invalid character 'J'" in line
    assert not out.exists()  # the run created it and left nothing in it: removed


def test_plain_logs_and_small_defects(tiny_models, tmp_path, capsys, monkeypatch):
    """Not on a terminal, each message is one line; '1 sequence'; headers kept with their
    leading blanks; a finished stdin run is named as such."""
    inp = tmp_path / "one.fa"
    seq = orf_rich_fasta(tmp_path / "x.fa", 1).read_text().splitlines()[1]
    inp.write_text(f">  padded header with a long description {'x' * 80}\n{seq}\n")
    out = tmp_path / "out"
    args = predict_args(tiny_models, [inp], out, *FAST, "--threshold", "0")
    args.remove("-q")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if "outputs in" in line]
    assert len(summary) == 1 and "done: 1 sequence (" in summary[0]
    assert all(line == line.rstrip() for line in err.splitlines())
    assert (out / "viral.fna").read_text().startswith(">  padded header")

    stdin_out = tmp_path / "stdin"
    for expected in (0, 1):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(inp.read_bytes())))
        assert main(predict_args(tiny_models, ["-"], stdin_out, *FAST)) == expected
    line = _one_line(capsys.readouterr().err)
    assert "holds a finished run that read stdin" in line and "--force" in line


def test_merge_and_a_shard_write_regions_and_multiqc(shared_run):
    out = shared_run("orf24+empty", *SHARD_SETTINGS).out  # test_shards' single run: 26 records
    header = (out / "regions.tsv").read_text().splitlines()[0]
    assert header == "seq_id\tregion_id\tstart\tend\tlength\tn_chunks\tscore\tkind"
    calls = json.loads((out / "virnucpro_calls_mqc.json").read_text())
    assert sum(calls["data"]["out"].values()) == 26


def test_help_a_newcomer_can_scan(capsys):
    """Grouped option panels with examples for predict and train; command summaries whole."""
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    commands = top.split("Commands", 1)[1]
    assert "..." not in commands and "\u2026" not in commands  # no summary is cut off
    for summary_end in ("to OUTPUT_DIR.", "history.tsv.", "(score_histogram.png).",
                        "runs no model."):  # the last words of long summaries are there
        assert summary_end in commands, summary_end
    for command, panels in (("predict", ("Inputs and outputs", "Calls", "Models",
                                         "Devices and batching", "Run control")),
                            ("train", ("Inputs and outputs", "Training recipe", "Models",
                                       "Devices and batching", "Run control"))):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert all(p in text for p in panels), command
        assert "Example" in text and f"virnucpro {command}" in text


def test_verbose_shows_as_a_flag_in_help(capsys):
    """-v/--verbose counts (-vv), but --help shows it as a flag, not as an INTEGER RANGE."""
    from virnucpro.cli_run import predict

    assert next(p for p in predict.params if p.name == "verbose").count
    for command in ("predict", "train"):
        assert main([command, "--help"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "--verbose" in ln)
        assert re.search(r"--verbose\s+-v\s+More log messages\.", line), line
