"""Peak memory of `virnucpro predict` is bounded by the work unit, not by the input.

Runs predict (tiny random models, CPU) on an input of N records and on one of 30 x N, each
in a fresh process, and compares their peak RSS. Target: the larger input raises peak RSS by
at most 20%. What a run holds at once is bounded by the work units in flight (a few units of
--unit-frames frames), so the smaller input must already span several units for the
comparison to measure growth with input size rather than the window filling up.

    python benchmarks/bench_memory.py [--records 2000] [--factor 30] [--unit-frames 256]
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

CHILD = """
import resource, sys
from virnucpro.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
         if a + b + c not in ("TAA", "TAG", "TGA")]


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


def run(inp: Path, models: object, out: Path, unit_frames: int) -> dict[str, float]:
    args = ["predict", str(inp), "-o", str(out), "--unit-frames", str(unit_frames),
            "--dnabert", str(models.dnabert_dir),
            "--esm", str(models.esm_dir), "-p", str(models.classifier_path), "--offline",
            "--device", "cpu", "--no-progress", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"predict failed: {proc.stderr.strip()}")
    rss = int(proc.stderr.split("MAXRSS_KB")[1].split()[0])
    frames = json.loads((out / "run.json").read_text())["counts"]["frames"]
    return {"peak_rss_mib": rss / 1024, "wall_s": wall, "frames": frames}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--factor", type=int, default=30)
    ap.add_argument("--unit-frames", type=int, default=256)
    args = ap.parse_args()
    from virnucpro.testing import make_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = make_tiny_models(root / "models")
        results = {}
        for label, n in (("small", args.records), ("large", args.records * args.factor)):
            inp = root / f"{label}.fa"
            bases = write_input(inp, n)
            r = run(inp, models, root / f"out-{label}", args.unit_frames)
            results[label] = {"records": n, "bases": bases, **r}
            print(f"{label:>5}: {n:>7} records, {bases / 1e6:7.2f} Mbp, {r['frames']:>7} frames, "
                  f"peak RSS {r['peak_rss_mib']:7.1f} MiB, {r['wall_s']:6.1f} s")
    units = results["small"]["frames"] / args.unit_frames
    print(f"--unit-frames {args.unit_frames}: the small input spans {units:.1f} units")
    growth = results["large"]["peak_rss_mib"] / results["small"]["peak_rss_mib"] - 1
    verdict = "met" if growth <= 0.20 else "MISSED"
    print(f"peak RSS growth for {args.factor}x the input: {growth:+.1%} "
          f"(target <= +20%: {verdict})")


if __name__ == "__main__":
    main()
