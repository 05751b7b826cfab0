"""Mistakes on the command line fail at once, in one line, before torch is imported: a
missing input, and model arguments of the wrong kind (swapped --dnabert and --esm, an ESM-2
directory given to -p). Measured by what the process imported, not by wall time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virnucpro.errors import ModelError

# Runs the CLI in a fresh interpreter, then prints which heavy libraries it imported.
_WRAPPER = ("import sys; from virnucpro.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted({'torch', 'transformers'} & set(sys.modules))); sys.exit(rc)")


def _run(*args: object) -> tuple[int, str, str]:
    """(exit code, the one error line, the heavy modules imported) of `virnucpro ARGS`."""
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return p.returncode, lines[0], p.stdout.strip()


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fa"
    path.write_text(">s1\n" + "ATG" * 200 + "\n")
    return path


@pytest.mark.parametrize("command", ["predict", "train"])
def test_a_missing_input_fails_before_torch_is_imported(tmp_path, fasta, command):
    missing = tmp_path / "missing.fa"
    out = tmp_path / "out"
    args = ([command, missing, "-o", out] if command == "predict"
            else [command, "--viral", fasta, "--other", missing, "-o", out])
    rc, line, heavy = _run(*args, "--offline")
    assert rc == 1 and line == f"virnucpro: error: {missing}: no such file", line
    assert heavy == "[]", f"imported {heavy} before failing on a missing input"
    assert not out.exists()
    rc, line, heavy = _run("predict", tmp_path, "-o", out, "--offline")  # a directory
    assert rc == 1 and "is a directory" in line and str(tmp_path) in line and heavy == "[]"


def test_swapped_model_arguments_fail_before_torch_is_imported(tiny_models, tmp_path, fasta):
    dna, esm, clf = tiny_models.dnabert_dir, tiny_models.esm_dir, tiny_models.classifier_path
    out = tmp_path / "out"
    cases = [  # (--dnabert, --esm, -p, what the line must say)
        (esm, dna, clf, [f"{esm}: this is an ESM-2 model", "--dnabert expects a DNABERT-S",
                         "--dnabert and --esm swapped?"]),
        (dna, dna, clf, [f"{dna}: this is a DNABERT-S model", "--esm expects an ESM-2 model",
                         "--dnabert and --esm swapped?"]),
        (dna, esm, esm, [f"{esm}: this is an ESM-2 model", "-p/--model-path expects a "
                         "classifier", "pass it with --esm"]),
        (dna, clf, clf, [f"{clf}: this is a classifier model", "pass it with -p/--model-path"]),
        (dna, esm, tmp_path, [f"{tmp_path}: not a classifier directory (no classifier.json)"]),
    ]
    for d, e, p, expected in cases:
        rc, line, heavy = _run("predict", fasta, "-o", out, "--dnabert", d, "--esm", e, "-p", p,
                               "--offline")
        assert rc == 1 and all(x in line for x in expected), line
        assert heavy == "[]", f"imported {heavy} before checking the model kinds"
        assert not out.exists()
    rc, line, heavy = _run("train", "--viral", fasta, "--other", fasta, "-o", out,
                           "--dnabert", esm, "--esm", dna, "--offline")
    assert rc == 1 and "--dnabert and --esm swapped?" in line and heavy == "[]", line


def test_the_library_checks_model_kinds_too(tiny_models, tmp_path):
    """A program calling the store directly (or a hub id resolved to the wrong snapshot)
    gets the same one-line error; the right kinds pass."""
    from virnucpro.models.store import (
        check_model_kind,
        model_kind,
        resolve_classifier,
        resolve_model,
    )

    dna, esm, clf = tiny_models.dnabert_dir, tiny_models.esm_dir, tiny_models.classifier_path
    assert [model_kind(p) for p in (dna, esm, clf, tmp_path)] == [
        "dnabert", "esm", "classifier", None]
    check_model_kind(dna, "dnabert")
    check_model_kind(esm, "esm")
    check_model_kind(clf, "classifier")
    with pytest.raises(ModelError, match="swapped"):
        resolve_model(str(esm), "dnabert", offline=True, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="pass it with --esm"):
        resolve_classifier(esm, 500, models_dir=tmp_path, offline=True)
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="model_type 'gpt2'; --esm expects an ESM-2 model"):
        check_model_kind(other, "esm")
