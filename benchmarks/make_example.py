"""Regenerate the bundled example `src/virnucpro/data/example.fa` (deterministic).

    python benchmarks/make_example.py > src/virnucpro/data/example.fa

Synthetic records of 100-1600 bp: some random (their chunks usually have no stop-free frame),
some built from stop-free codons on either strand (their frames are kept), one in lower case,
one with N runs and other IUPAC codes.
"""

from __future__ import annotations

import random

from virnucpro.frames import GENETIC_CODE

_SENSE = sorted(codon for codon, amino in GENETIC_CODE.items() if amino != "*")
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def orf(rng: random.Random, length: int, *, reverse: bool = False) -> str:
    """`length` bases whose first frame (or, if `reverse`, the reverse strand's) has no stop."""
    seq = "ATG" + "".join(rng.choice(_SENSE) for _ in range(length // 3))
    seq = (seq + "ACGT")[:length]
    return seq.translate(_COMPLEMENT)[::-1] if reverse else seq


def noise(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


def with_ambiguity(rng: random.Random, seq: str) -> str:
    """A run of N's and a few single IUPAC codes: their codons are dropped when translating."""
    seq = seq[:200] + "N" * 25 + seq[225:]
    for pos in rng.sample(range(300, len(seq)), 4):
        seq = seq[:pos] + rng.choice("RYKMSW") + seq[pos + 1:]
    return seq


def records(rng: random.Random) -> list[tuple[str, str]]:
    return [
        ("orf_fwd_300 synthetic ORF, forward strand", orf(rng, 300)),
        ("random_100 random sequence", noise(rng, 100)),
        ("orf_rev_450 synthetic ORF, reverse strand", orf(rng, 450, reverse=True)),
        ("random_250", noise(rng, 250)),
        ("orf_fwd_500 exactly one 500 bp chunk", orf(rng, 500)),
        ("orf_fwd_501 two overlapping chunks", orf(rng, 501)),
        ("random_777", noise(rng, 777)),
        ("orf_lower_620 lower-case input", orf(rng, 620).lower()),
        ("orf_with_n_900 N run and IUPAC codes", with_ambiguity(rng, orf(rng, 900))),
        ("random_1001", noise(rng, 1001)),
        ("orf_rev_1200 three chunks", orf(rng, 1200, reverse=True)),
        ("mixed_1350 ORF then random", orf(rng, 700) + noise(rng, 650)),
        ("orf_fwd_1600 four chunks", orf(rng, 1600)),
        ("random_1500", noise(rng, 1500)),
        ("orf_fwd_120 short", orf(rng, 120)),
    ]


def main() -> None:
    rng = random.Random(2025)
    for header, seq in records(rng):
        print(f">{header}")
        for i in range(0, len(seq), 70):
            print(seq[i: i + 70])


if __name__ == "__main__":
    main()
