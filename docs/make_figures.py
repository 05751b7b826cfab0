"""Make the README's example figures: `python docs/make_figures.py` (CPU, about a minute).

Runs the real commands end to end on synthetic data with tiny random backbones (so nothing
is downloaded): `train` a 300 bp classifier on GC-rich "viral" and AT-rich "host" sequences,
`predict` on held-out contigs (some of them host contigs with a viral insert, like a
prophage), then `evaluate` and `plot`. The figures show what the commands draw, not how well
the published models do. Output: docs/figures/{score_tracks,score_histogram,roc,pr}.png.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
         if a + b + c not in ("TAA", "TAG", "TGA")]


def coding(rng: random.Random, length: int, gc: float) -> str:
    """Stop-free codons drawn with a GC bias (weight gc^(G+C) * (1-gc)^(A+T))."""
    weights = [gc ** sum(x in "GC" for x in c) * (1 - gc) ** sum(x in "AT" for x in c)
               for c in SENSE]
    return "".join(rng.choices(SENSE, weights, k=length // 3 + 1))[:length]


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


def make_data(d: Path) -> dict[str, Path]:
    """Training sets, test contigs and their labels (inserts are left unlabelled)."""
    rng = random.Random(2025)
    viral_gc, host_gc = 0.62, 0.38
    lengths = (600, 900, 1200, 1500)
    train_v = [(f"tv{i}", coding(rng, lengths[i % 4], viral_gc)) for i in range(80)]
    train_h = [(f"th{i}", coding(rng, lengths[i % 4], host_gc)) for i in range(80)]
    test = [(f"virus_{i}", coding(rng, rng.randint(900, 3000), viral_gc)) for i in range(40)]
    test += [(f"host_{i}", coding(rng, rng.randint(900, 3000), host_gc)) for i in range(40)]
    for i in range(3):  # host contigs with a viral insert in the middle
        test.append((f"host_with_insert_{i}", coding(rng, 1500, host_gc)
                     + coding(rng, 1800, viral_gc) + coding(rng, 1500, host_gc)))
    labels = "seq_id\tlabel\n" + "".join(
        f"{name}\t{'virus' if name.startswith('virus') else 'other'}\n"
        for name, _ in test if "insert" not in name)
    (d / "labels.tsv").write_text(labels)
    return {"viral": write_fasta(d / "train_viral.fa", train_v),
            "host": write_fasta(d / "train_host.fa", train_h),
            "test": write_fasta(d / "test.fa", test), "labels": d / "labels.tsv"}


def run(args: list[str]) -> None:
    from virnucpro.cli import main

    print("$ virnucpro", " ".join(args), flush=True)
    if main(args) != 0:
        sys.exit(f"virnucpro {args[0]} failed")


def main() -> None:
    from virnucpro.testing import make_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        models = make_tiny_models(d / "models")
        data = make_data(d)
        backbones = ["--dnabert", str(models.dnabert_dir), "--esm", str(models.esm_dir),
                     "--offline", "--no-progress", "-q"]
        run(["train", "--viral", str(data["viral"]), "--other", str(data["host"]),
             "-o", str(d / "model"), "--chunk-size", "300", "--split-by", "sequence",
             "--lr", "0.01", "--max-epochs", "30", *backbones])
        run(["predict", str(data["test"]), "-o", str(d / "pred"), "-p", str(d / "model"),
             "--chunk-size", "300", *backbones])
        run(["evaluate", str(d / "pred"), "--truth", str(data["labels"])])
        run(["plot", str(d / "pred"), "--seq-id", "host_with_insert_0",
             "--seq-id", "virus_0", "--seq-id", "host_0"])
        FIGURES.mkdir(parents=True, exist_ok=True)
        for name in ("score_tracks.png", "score_histogram.png", "roc.png", "pr.png"):
            shutil.copyfile(d / "pred" / name, FIGURES / name)
            print("wrote", FIGURES / name)


if __name__ == "__main__":
    main()
