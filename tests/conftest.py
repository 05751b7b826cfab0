"""Shared fixtures. `shared/` sits beside the project root; tests that need it skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "SPEC.md").is_file():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random DNABERT-S, ESM-2 and classifier in their real on-disk formats."""
    from virnucpro.testing import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def orf_rich_fasta(path: Path, n: int, seed: int = 0, lengths: tuple[int, ...] = (
        120, 300, 499, 500, 501, 750, 1200, 1600)) -> Path:
    """Write `n` records built from stop-free codons, so most chunks keep a frame."""
    import random

    rng = random.Random(seed)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
             if a + b + c not in ("TAA", "TAG", "TGA")]
    with path.open("w") as fh:
        for i in range(n):
            length = lengths[i % len(lengths)]
            seq = "".join(rng.choice(sense) for _ in range(length // 3 + 1))[:length]
            fh.write(f">seq{i} synthetic record {i}\n{seq}\n")
    return path
