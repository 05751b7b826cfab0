"""Compiled layers on a GPU: after the start-up warm-up, a whole scoring phase over
realistic units compiles nothing again (issue 20, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_scoring_after_the_warm_up_never_recompiles(tiny_models, tmp_path):
    child = Path(__file__).with_name("recompile_child.py")
    proc = subprocess.run(
        [sys.executable, str(child), str(tiny_models.dnabert_dir), str(tiny_models.esm_dir),
         str(tiny_models.classifier_path), str(tmp_path / "in.fa")],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]  # a recompile raises in the child
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["report"]["compiled"] is True and got["units"] > 10
    assert {n % 8 == 0 for n in got["lengths"]} == {True, False}  # both alignments met
    print(f"(h2) compile {got['report']['compile_seconds']} s, {got['units']} units scored "
          "without a recompile")
