"""Make the README's example figures: `python docs/make_figures.py [NAME.png ...]` (CPU, a
few minutes); with names, only those figures are written.

Runs the real commands end to end on synthetic data with tiny random backbones (so nothing
is downloaded): `train` a 300 bp classifier on GC-rich "viral" and AT-rich "host" sequences,
`predict` on held-out contigs (some of them host contigs with a viral insert, like a
prophage), then `evaluate` and `plot`. For regions.png, `predict` and `plot` again on longer
host contigs with inserts at known places. The figures show what the commands draw, not how
well the published models do. Output: docs/figures/{score_tracks,score_histogram,roc,pr,
regions}.png.
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
    viral_gc, host_gc = VIRAL_GC, HOST_GC
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


# regions.png: (name, [(bases, gc), ...]) built part by part, so the inserts' places are known.
VIRAL_GC, HOST_GC = 0.62, 0.38
REGION_CONTIGS = [
    ("host_with_insert", [(14_000, HOST_GC), (6_000, VIRAL_GC), (10_000, HOST_GC)]),
    ("host_with_two_inserts", [(8_000, HOST_GC), (3_000, VIRAL_GC), (9_000, HOST_GC),
                               (2_500, VIRAL_GC), (7_500, HOST_GC)]),
    ("viral_contig", [(6_000, VIRAL_GC)]),
]


def make_region_contigs(path: Path) -> Path:
    """REGION_CONTIGS as FASTA (a generator of its own, so the other figures' data stay as
    they were)."""
    rng = random.Random(15)
    return write_fasta(path, [(name, "".join(coding(rng, n, gc) for n, gc in parts))
                              for name, parts in REGION_CONTIGS])


def run(args: list[str]) -> None:
    from virnucpro.cli import main

    print("$ virnucpro", " ".join(args), flush=True)
    if main(args) != 0:
        sys.exit(f"virnucpro {args[0]} failed")


def main(names: list[str]) -> None:
    from virnucpro.testing import make_tiny_models

    made = {"score_tracks.png": "pred/score_tracks.png",  # figure: where the run writes it
            "score_histogram.png": "pred/score_histogram.png", "roc.png": "pred/roc.png",
            "pr.png": "pred/pr.png", "regions.png": "regions_fig/score_tracks.png"}
    unknown = sorted(set(names) - set(made))
    if unknown:
        sys.exit(f"no figure {unknown[0]!r}; choose from {', '.join(made)}")

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
        contigs = make_region_contigs(d / "region_contigs.fa")
        run(["predict", str(contigs), "-o", str(d / "regions"), "-p", str(d / "model"),
             "--chunk-size", "300", *backbones])
        run(["plot", str(d / "regions"), "-o", str(d / "regions_fig"),
             *(arg for name, _ in REGION_CONTIGS for arg in ("--seq-id", name))])
        print((d / "regions" / "regions.tsv").read_text(), end="")
        FIGURES.mkdir(parents=True, exist_ok=True)
        for name in names or made:
            shutil.copyfile(d / made[name], FIGURES / name)
            print("wrote", FIGURES / name)


if __name__ == "__main__":
    main(sys.argv[1:])
