"""Shared by the GPU tests: one generated input, and predict runs on it that are made once
per session and reused by every test that needs them (each costs a worker's start-up)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import orf_rich_fasta, predict_args

# Small units, so a run of the input below lasts long enough on a GPU to be killed mid-way.
COMMON = ("--unit-frames", "2")
RUNS = {  # name -> what that run asks for
    # One thread: tiny models gain nothing from more, and lose much where cores are busy.
    "cpu-fp32": ("--device", "cpu", "--precision", "fp32", "--threads", "1"),
    "cuda-fp32": ("--device", "cuda", "--precision", "fp32"),
    "cuda": ("--device", "cuda"),  # the default precision, layers compiled (the default)
    "cuda-eager": ("--device", "cuda", "--no-compile"),
    "cuda-2-workers": ("--device", "cuda", "--workers", "2"),
}


class Runs:
    """The outputs of the RUNS over one input, each made on first use (in-process: the
    workers are processes of their own, so the test process never initialises CUDA)."""

    def __init__(self, models, inp: Path, root: Path) -> None:
        self.models, self.inp, self.root = models, inp, root
        self._made: set[str] = set()

    def args(self, out: Path, name: str, *extra: str) -> list[str]:
        """`virnucpro` arguments of run `name` writing to `out`."""
        return predict_args(self.models, [self.inp], out, *COMMON, *RUNS[name], *extra)

    def get(self, name: str) -> Path:
        from virnucpro.cli import main

        out = self.root / name
        if name not in self._made:
            assert main(self.args(out, name)) == 0, f"the {name} run failed"
            self._made.add(name)
        return out


@pytest.fixture(scope="session")
def runs(tiny_models, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("gpu-runs")
    return Runs(tiny_models, orf_rich_fasta(root / "in.fa", 400), root)
