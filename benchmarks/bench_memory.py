"""Peak memory of `virnucpro predict` is bounded by the work unit, not by the input.

Runs predict (tiny random models, CPU, -m 500) on three inputs, each at 1x and at 30x, every
run in a fresh process, and compares peak RSS. Workers are child processes, so the CLI process
(the parent: reading records into units, writing) and its worker (chunking, translation, the
models, rendering) are measured apart, each by its VmHWM (see CHILD); their sum is the figure
of merit. Target: 30x the input raises each by at most 10%.

- short: N reads and contigs of 150-1,500 bp, half of them stop-free in frame 1, and 30 x N
  others. `--unit-frames 256`, so that the 1x input already spans several work units and the
  comparison measures growth with the input, not the window of units in flight filling up.
- mbp: four real-like assembly contigs of 0.1-3 Mbp (made as `long`'s), each longer than a
  work unit, so each is split over several units; the same contigs 30 times over.
- long: four contigs of 0.1-1 Mbp (random sequence, so stops as often as in random DNA, with
  ORFs of 0.9-4.5 kb on either strand between random gaps of 0.2-1.5 kb: about two chunks in
  three keep one frame), and the same contigs 30 times over under new ids. Predict's default
  `--unit-frames 2048`, as a user runs it: a unit holds whole records, so its size follows the
  records (1x is one unit of ~1,950 frames; at 30x units pack records across repeats, up to
  ~3,300 frames).

    python benchmarks/bench_memory.py [--inputs short,long] [--records 2000] [--factor 30]
        [--unit-frames 256] [--long-unit-frames N]

Measured on the 2-core box, peak RSS in MiB, parent / worker / sum, 1x -> 30x:

    before (whole units tokenized at once)
      short  301.1 / 492.4 / 793.5 -> 323.5 / 501.5 / 825.0   +7.4% / +1.9% / +4.0%
      long   305.2 / 534.5 / 839.6 -> 360.3 / 585.3 / 945.6  +18.1% / +9.5% / +12.6%
    after (dnabert.tokenize_dna encodes 256 sequences at a time)
      short  301.0 / 491.0 / 792.0 -> 321.7 / 502.9 / 824.6   +6.9% / +2.4% / +4.1%
      long   305.2 / 492.8 / 798.0 -> 360.4 / 511.4 / 871.8  +18.1% / +3.8% / +9.2%

The worker's peak followed its largest unit: the tokenizer's `Encoding`s cost ~25 KB a
frame (1,948 frames at 1x, 3,244 at 30x). The parent's growth on the long input is the window
of units in flight (at most 4, ~3.5 KB a frame: records, chunks, frames, the pickled unit)
filling up, as 1x is a single unit: at 10x the parent already peaks at 355.5 MiB. Of the
parent's ~300 MiB, 280 are `import torch` (predict -> engine -> worker).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Peaks are read as VmHWM from /proc, not from getrusage: a child's ru_maxrss starts at the
# RSS of the process that spawned it (Linux carries it over fork and exec), so the CLI process
# would report this benchmark's own RSS, and the worker the CLI process's. The worker's is read
# just before it is told to stop, when every unit has been scored.
CHILD = """
import sys
from virnucpro.cli import main
from virnucpro.runtime import engine

def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

worker = [0]
close = engine.Pool.close
def measured_close(self, ok):
    worker[0] = max([worker[0], *(hwm(p.pid) for p in self.procs if p.poll() is None)])
    close(self, ok)
engine.Pool.close = measured_close
rc = main(sys.argv[1:])
print("PEAK_KB", hwm("self"), worker[0], file=sys.stderr)
sys.exit(rc)
"""
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
         if a + b + c not in ("TAA", "TAG", "TGA")]
LONG_CONTIGS = (1_000_000, 100_000, 150_000, 250_000)  # bp; about 1,950 frames in all
# Real-like assembly contigs, 0.1-3 Mbp: each longer than a unit, so each is split over units.
MBP_CONTIGS = (3_000_000, 1_200_000, 400_000, 100_000)
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def write_input(path: Path, n: int, seed: int = 0) -> int:
    """Reads and contigs of mixed lengths; half are stop-free in frame 1 so frames are kept."""
    rng = random.Random(seed)
    bases = 0
    with path.open("w") as fh:
        for i in range(n):
            length = rng.choice((150, 300, 500, 800, 1500))
            if i % 2:
                seq = "".join(rng.choice(SENSE) for _ in range(length // 3 + 1))[:length]
            else:
                seq = "".join(rng.choice("ACGT") for _ in range(length))
            fh.write(f">r{i}\n{seq}\n")
            bases += length
    return bases


def contig(length: int, rng: random.Random) -> str:
    """Random DNA between ORFs of 300-1,500 sense codons, each on a random strand."""
    parts, n = [], 0
    while n < length:
        gap = "".join(rng.choices("ACGT", k=rng.randint(200, 1500)))
        orf = "".join(rng.choices(SENSE, k=rng.randint(300, 1500)))
        if rng.random() < 0.5:
            orf = orf.translate(_COMPLEMENT)[::-1]
        parts += [gap, orf]
        n += len(gap) + len(orf)
    return "".join(parts)[:length]


def write_long_input(path: Path, times: int, seed: int = 0,
                     lengths: tuple[int, ...] = LONG_CONTIGS) -> int:
    """Contigs of `lengths`, written `times` times over under new ids, 80 bases a line."""
    rng = random.Random(seed)
    seqs = [contig(length, rng) for length in lengths]
    with path.open("w") as fh:
        for k in range(times):
            for i, seq in enumerate(seqs):
                fh.write(f">contig{i}_{k}\n")
                fh.writelines(seq[j:j + 80] + "\n" for j in range(0, len(seq), 80))
    return times * sum(lengths)


def run(inp: Path, models: object, out: Path, unit_frames: int | None) -> dict[str, float]:
    args = ["predict", str(inp), "-o", str(out), "--dnabert", str(models.dnabert_dir),
            "--esm", str(models.esm_dir), "-p", str(models.classifier_path), "--offline",
            "--device", "cpu", "--no-progress", "-q"]
    if unit_frames is not None:
        args += ["--unit-frames", str(unit_frames)]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"predict failed: {proc.stderr.strip()}")
    parent, worker = (int(x) / 1024 for x in proc.stderr.split("PEAK_KB")[1].split()[:2])
    frames = json.loads((out / "run.json").read_text())["counts"]["frames"]
    return {"parent_mib": parent, "worker_mib": worker, "sum_mib": parent + worker,
            "wall_s": wall, "frames": frames}


def measure(name: str, root: Path, models: object, args: argparse.Namespace) -> None:
    """Both sizes of one input; prints a row each and the growth of each figure."""
    results = {}
    for times in (1, args.factor):
        inp = root / f"{name}-{times}.fa"
        if name == "short":
            n, bases = args.records * times, write_input(inp, args.records * times)
        else:
            lengths = LONG_CONTIGS if name == "long" else MBP_CONTIGS
            n, bases = len(lengths) * times, write_long_input(inp, times, lengths=lengths)
        unit_frames = args.unit_frames if name == "short" else args.long_unit_frames
        r = run(inp, models, root / f"out-{name}-{times}", unit_frames)
        results[times] = r
        print(f"{name:>5} {times:>2}x: {n:>6} records, {bases / 1e6:6.2f} Mbp, "
              f"{r['frames']:>6} frames, peak RSS parent {r['parent_mib']:6.1f} MiB, "
              f"worker {r['worker_mib']:6.1f} MiB, sum {r['sum_mib']:6.1f} MiB, "
              f"{r['wall_s']:6.1f} s", flush=True)
    growth = {k: results[args.factor][k] / results[1][k] - 1
              for k in ("parent_mib", "worker_mib", "sum_mib")}
    worst = max(growth.values())
    verdict = "met" if worst <= 0.10 else "MISSED"
    print(f"{name:>5}: peak RSS growth for {args.factor}x the input: parent "
          f"{growth['parent_mib']:+.1%}, worker {growth['worker_mib']:+.1%}, sum "
          f"{growth['sum_mib']:+.1%} (target: each <= +10%: {verdict})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default="short,long,mbp",
                    help="which inputs: short, long, mbp (0.1-3 Mbp contigs), comma-separated")
    ap.add_argument("--records", type=int, default=2000, help="short records at 1x")
    ap.add_argument("--factor", type=int, default=30)
    ap.add_argument("--unit-frames", type=int, default=256, help="for the short input")
    ap.add_argument("--long-unit-frames", type=int, default=None,
                    help="for the long input (default: predict's)")
    args = ap.parse_args()
    from virnucpro.testing import make_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = make_tiny_models(root / "models")
        for name in args.inputs.split(","):
            if name not in ("short", "long", "mbp"):
                sys.exit(f"--inputs: unknown input {name!r} (short, long, mbp)")
            measure(name, root, models, args)


if __name__ == "__main__":
    main()
