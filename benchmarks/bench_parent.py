"""The parent's cost over a whole `virnucpro predict` run: CPU time per frame and peak RSS.

    python benchmarks/bench_parent.py                 # 200,000 reads of 150-300 bp, -m 300
    python benchmarks/bench_parent.py --reads 20000   # quicker

Runs the real command (tiny random models, CPU, one worker) in a fresh process that reports
its own CPU time (user + system, every thread of the CLI process; the worker is another
process and is not counted), its peak RSS (VmHWM) and whether it imported torch. Start-up,
the input check (which reads and hashes every input) and the final switch of the outputs are
all included. The workers' speed does not enter the figure: with tiny models on a CPU they are
the slow side, so the parent waits, and waiting costs no CPU. Goal (issue 19): <= 8 us of
parent CPU per frame, so that one core feeds 125,000 frames/s, and a peak RSS <= 150 MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import virnucpro  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import synthetic as S

CHILD = """
import resource, sys
from virnucpro.cli import main
rc = main(sys.argv[1:])
u = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("PARENT", u.ru_utime + u.ru_stime, hwm, "torch" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    from virnucpro.testing import make_tiny_models

    with tempfile.TemporaryDirectory(prefix="bench_parent_") as tmp:
        root = Path(tmp)
        models = make_tiny_models(root / "models")
        inp = S.write_fasta(S.stop_free_reads(args.reads, 150, 300), root / "reads.fa")
        out = root / "out"
        cmd = [sys.executable, "-c", CHILD, "predict", str(inp), "-o", str(out), "-m", "300",
               "--dnabert", str(models.dnabert_dir), "--esm", str(models.esm_dir),
               "-p", str(models.classifier_path), "--offline", "--device", "cpu",
               "--no-progress", "-q"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"predict failed: {proc.stderr.strip()}")
        cpu, hwm, torch = proc.stderr.split("PARENT")[1].split()[:3]
        run = json.loads((out / "run.json").read_text())
    frames = run["counts"]["frames"]
    r = {"reads": args.reads, "frames": frames, "wall_s": round(wall, 1),
         "parent_cpu_s": round(float(cpu), 2), "parent_us_per_frame": 1e6 * float(cpu) / frames,
         "parent_peak_rss_mib": int(hwm) / 1024, "parent_imported_torch": torch == "True",
         "startup_s": run["timing"]["startup_seconds"]}
    print(f"{r['reads']:,} reads, {frames:,} frames, {r['wall_s']} s wall: parent CPU "
          f"{r['parent_cpu_s']} s = {r['parent_us_per_frame']:.1f} us/frame (goal <= 8), peak "
          f"RSS {r['parent_peak_rss_mib']:.0f} MiB (goal <= 150), torch imported: "
          f"{r['parent_imported_torch']}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
