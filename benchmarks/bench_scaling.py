"""How the orchestration scales with the number of devices, with stand-in devices that sleep.

    python benchmarks/bench_scaling.py                  # 200,000 reads, N = 1, 2, 4, 8, 16
    python benchmarks/bench_scaling.py --profile 8      # and where the parent's time goes
    python benchmarks/bench_scaling.py --quick          # 3,000 reads, N = 1, 2 (used by tests)

This is a benchmark of the orchestration, not a correctness test. It runs the real engine
(`runtime.engine.run_units` with a real `Job`: the feeder thread reading and translating a
FASTA file, the queues, N spawned worker processes, results consumed in unit order into the
real `outputs.PredictWriter`, every unit saved for resume) with N stand-in devices. Each
stand-in worker (`stand_in_worker`) speaks the `worker.worker_main` protocol and replaces
only the model forward passes with a sleep as long as an H200 would compute: ESM-2 3B at
88,100 tokens/s (measured with regional compile) and DNABERT-S at 495,000 tokens/s. Tokens
are approximated, not tokenised: ESM-2 len(protein) + 2 (BOS and EOS, as the real worker
counts them) and DNABERT-S len(nucleotide) / 5 + 2 (the BPE averages about 5 bp a token).
Scores are real-shaped ([n, 2] float32 softmax), seeded by the unit index.

The input is short reads (150-300 bp, uniform; the first frame stop-free, so every read keeps
one frame and some keep more by chance), cut into 300 bp chunks as `-m 300` does; making
them is not timed. Figures are over the scoring phase: from the moment every worker has
settled (start-up, i.e. N process spawns and their imports, is reported apart) to the last
unit handed to the writer. Efficiency at N = frames/s at N / (N x frames/s at 1, or at the
smallest N run, per device); "devices busy" = the stand-ins' sleep over N x that time (a
parent that kept up would reach it, less the first units' wait and the last round's tail);
"parent ceiling" = frames/s the parent's CPU time per frame would allow on one free core (its
threads share one GIL), the figure that does not depend on other work on the machine.
With `--profile N`, the parent's main thread (results, saved units, writer) and its feeder
thread (reading, chunking, translation, sending units) are profiled separately at that N.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import virnucpro  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common as C
import numpy as np
import synthetic as S

ESM_TOKENS_PER_S = 88_100.0  # ESM-2 3B on one H200, bf16, regional compile
DNABERT_TOKENS_PER_S = 495_000.0  # DNABERT-S on one H200, bf16
CHUNK_SIZE = 300  # -m 300: a read of up to 300 bp is one chunk
READ_LENGTHS = (150, 300)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reads", type=int, default=None, help="reads [200,000; quick: 3,000]")
    p.add_argument("--workers", default=None,
                   help="comma-separated device counts [1,2,4,8,16; quick: 1,2]")
    p.add_argument("--unit-frames", type=int, default=None,
                   help="frames per work unit [2048, predict's default; quick: 256]")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="also profile the parent at N devices (an extra run)")
    p.add_argument("--quick", action="store_true", help="a few seconds (for tests)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.reads = args.reads or (3_000 if args.quick else 200_000)
    args.workers = [int(x) for x in (args.workers or ("1,2" if args.quick else "1,2,4,8,16"))
                    .split(",")]
    args.unit_frames = args.unit_frames or (256 if args.quick else 2048)
    return args


# ------------------------------------------------------------------ the stand-in device
def stand_in_worker(index: int, spec: Any, control: Any, tasks: Any, results: Any) -> None:
    """`worker.worker_main`'s protocol, with every model forward pass replaced by a sleep."""
    from virnucpro.runtime.worker import expect

    try:
        results.put(("probe", index, {"device": spec.device, "name": "stand-in H200 (sleeps)",
                                      "compute_capability": "9.0"}))
        expect(control, "load")
        results.put(("loaded", index, None))
        expect(control, "measure")
        results.put(("proposal", index, {"dnabert_budget": 65_536, "esm_budget": 65_536}))
        expect(control, "go")
        while (unit := tasks.get()) is not None:
            results.put(("result", index, stand_in_result(unit, spec.device)))
    except Exception as exc:  # reported as a real worker reports it
        results.put(("error", index, f"the stand-in on {spec.device} failed: {exc!r}"))


def stand_in_result(unit: Any, device: str) -> Any:
    """Sleep as long as the models would take on this unit; a result of the real shape."""
    from virnucpro.runtime.worker import UnitResult

    dna_tokens = sum(len(s) // 5 + 2 for s in unit.nucleotides)
    esm_tokens = sum(len(p) + 2 for p in unit.proteins)
    seconds = {"dnabert": dna_tokens / DNABERT_TOKENS_PER_S, "esm": esm_tokens / ESM_TOKENS_PER_S,
               "classifier": 0.0}
    time.sleep(seconds["dnabert"] + seconds["esm"])
    logits = np.random.default_rng(unit.index).standard_normal((unit.n_frames, 2))
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # [n, 2] softmax
    return UnitResult(unit.index, scores.astype(np.float32), None, seconds,
                      {"dnabert": dna_tokens, "esm": esm_tokens}, device, None)


# ------------------------------------------------------------------ one run
def run_once(fasta: Path, n: int, args: argparse.Namespace, work: Path,
             profile: bool = False) -> dict[str, Any]:
    """The real engine with n stand-in devices, into the real writer; times and counts."""
    from virnucpro import outputs
    from virnucpro.reader import ReadStats
    from virnucpro.runtime.engine import Job, Request, run_units
    from virnucpro.runtime.units import UNITS_DIR, UnitStream
    from virnucpro.runtime.worker import WorkerSpec

    out = work / f"out-{n}{'-profile' if profile else ''}"
    home = out / outputs.STATE_DIR
    (home / UNITS_DIR).mkdir(parents=True)
    specs = tuple(WorkerSpec("stand-in", "stand-in", "stand-in", f"cuda:{i}", threads=1)
                  for i in range(n))
    job = Job(specs, Request(device="cuda"), home, worker=stand_in_worker)
    read = ReadStats()
    units = UnitStream((str(fasta),), CHUNK_SIZE, args.unit_frames).units(read)
    writer = outputs.PredictWriter(out, home / "tmp", 0.5)
    clock = _Clock(profile)

    def consume(records: Any, result: Any) -> None:
        t0 = time.perf_counter()
        writer.add(records, result.scores, result.embeddings)
        clock.last, clock.last_cpu = time.perf_counter(), time.thread_time()
        clock.writer += clock.last - t0
        clock.units += 1

    t0 = time.perf_counter()
    stats = run_units(job, clock.feeder(units), consume, on_settled=lambda plan: clock.start())
    t_finish = time.perf_counter()
    writer.finish({"benchmark": "bench_scaling"})
    return clock.row(n, stats, t0, time.perf_counter() - t_finish)


class _Clock:
    """The scoring phase's times, the parent's CPU time, and the optional profiles."""

    def __init__(self, profile: bool) -> None:
        self.writer = 0.0
        self.units = 0
        self.last = self.settled = 0.0
        self.cpu0 = self.main_cpu = self.feeder_cpu = self.last_cpu = 0.0
        self.profiles = (cProfile.Profile(), cProfile.Profile()) if profile else None

    def start(self) -> None:
        self.settled = self.last = time.perf_counter()
        self.cpu0, self.main_cpu = _cpu(), time.thread_time()
        if self.profiles:
            self.profiles[0].enable()  # the main thread: results, saving, writer

    def feeder(self, units: Iterator[Any]) -> Iterator[Any]:
        """`units`, profiling the feeder thread that draws them (everything it does)."""
        if self.profiles:
            self.profiles[1].enable()
        cpu0 = time.thread_time()
        try:
            yield from units
        finally:
            self.feeder_cpu = time.thread_time() - cpu0
            if self.profiles:
                self.profiles[1].disable()

    def row(self, n: int, stats: Any, t0: float, finish: float) -> dict[str, Any]:
        if self.profiles:
            self.profiles[0].disable()
        cpu, window = _cpu() - self.cpu0, self.last - self.settled
        main_cpu = self.last_cpu - self.main_cpu
        busy = stats.seconds.get("dnabert", 0.0) + stats.seconds.get("esm", 0.0)
        row = {"workers": n, "frames": stats.frames_scored, "units": self.units,
               "seconds": window, "frames_per_s": stats.frames_scored / window,
               "startup_seconds": self.settled - t0, "device_busy": busy / (n * window),
               "model_seconds": busy, "parent_cores": cpu / window,
               "parent_ceiling": stats.frames_scored / cpu,
               "cpu_seconds": {"parent": cpu, "main_thread": main_cpu,
                               "feeder_thread": self.feeder_cpu,
                               "other_threads": cpu - main_cpu - self.feeder_cpu},
               "feeder_read_seconds": stats.read_seconds, "writer_seconds": self.writer,
               "finish_seconds": finish, "per_device": dict(stats.frames_per_device),
               "tokens": dict(stats.tokens)}
        return row | ({"profiles": self.profiles} if self.profiles else {})


def _cpu() -> float:
    """CPU seconds of this process, every thread (the workers are other processes)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def profile_text(profile: cProfile.Profile, top: int = 14) -> str:
    s = io.StringIO()
    pstats.Stats(profile, stream=s).strip_dirs().sort_stats("tottime").print_stats(top)
    lines = s.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start:start + top + 1])


# ------------------------------------------------------------------ report
def report(r: dict[str, Any]) -> None:
    print("== input ==")
    w = r["workload"]
    print(f"  {w['reads']:,} reads of {w['read_lengths'][0]}-{w['read_lengths'][1]} bp, "
          f"-m {CHUNK_SIZE}; {w['frames']:,} frames in {w['units']} units of ~"
          f"{w['unit_frames']} frames; ESM-2 {w['esm_tokens_per_frame']:.1f} tokens/frame, "
          f"DNABERT-S {w['dnabert_tokens_per_frame']:.1f} (approximated)")
    print(f"  stand-in device: ESM-2 3B {ESM_TOKENS_PER_S:,.0f} tokens/s + DNABERT-S "
          f"{DNABERT_TOKENS_PER_S:,.0f} tokens/s -> {w['device_frames_per_s']:.0f} frames/s "
          "per device")
    print(f"  this machine: {r['cpu']}, {r['cores']} cores; load average before "
          f"{_floats(r['load_before'])}, after {_floats(r['load_after'])}")
    print("== scaling (scoring phase; start-up apart) ==")
    rows = [[s["workers"], s["frames"], f"{s['seconds']:.2f}", f"{s['frames_per_s']:.0f}",
             C.fmt_pct(s["efficiency"]), C.fmt_pct(s["device_busy"]),
             f"{s['parent_cores']:.2f}",
             "/".join(f"{1e6 * s['cpu_seconds'][k] / s['frames']:.0f}" for k in
                      ("main_thread", "feeder_thread", "other_threads")),
             f"{s['parent_ceiling']:.0f}", f"{s['startup_seconds']:.1f}"]
            for s in r["runs"]]
    C.print_table(rows, ["N", "frames", "seconds", "frames/s", "efficiency", "devices busy",
                         "parent cores", "parent CPU us/frame", "parent ceiling",
                         "start-up s"])
    print("  parent CPU us/frame: main thread (results, saved units, writer) / feeder thread "
          "(reading, chunking, translation) / other threads (the queues: pickling into pipes);"
          "\n  parent ceiling: frames/s the parent could sustain on one free core (one GIL) at "
          "that CPU cost;\n  parent cores: CPU the parent got per second (other work on these "
          "cores takes the rest)")
    for name, text in r.get("profile", {}).items():
        print(f"== profile at N = {r['profile_workers']}: {name} (by own time) ==")
        print(text)


def _floats(values: Any) -> str:
    return "n/a" if values is None else ", ".join(f"{x:.2f}" for x in values)


def workload(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The reads as FASTA, and what the stand-ins will see in them."""
    from virnucpro.frames import iter_record_frames

    records = S.stop_free_reads(args.reads, *READ_LENGTHS, seed=args.seed)
    frames = [f for rf in iter_record_frames(records, CHUNK_SIZE) for fs in rf.frames
              for f in fs]
    esm = sum(len(f.protein) + 2 for f in frames) / len(frames)
    dna = sum(len(f.nucleotide) // 5 + 2 for f in frames) / len(frames)
    per_frame = esm / ESM_TOKENS_PER_S + dna / DNABERT_TOKENS_PER_S
    fasta = S.write_fasta(records, work / "reads.fa")
    return fasta, {"reads": args.reads, "read_lengths": READ_LENGTHS, "frames": len(frames),
                   "unit_frames": args.unit_frames, "esm_tokens_per_frame": esm,
                   "dnabert_tokens_per_frame": dna, "device_frames_per_s": 1 / per_frame}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r: dict[str, Any] = {"quick": args.quick, "cpu": C.cpu_model(), "cores": os.cpu_count(),
                         "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        work = Path(tmp)
        fasta, r["workload"] = workload(args, work)
        print(f"[bench_scaling] {r['workload']['frames']} frames in {fasta}", file=sys.stderr)
        r["runs"] = []
        for n in args.workers:
            r["runs"].append(run_once(fasta, n, args, work))
            print(f"[bench_scaling] N={n}: {r['runs'][-1]['frames_per_s']:.0f} frames/s",
                  file=sys.stderr)
        if args.profile:
            run = run_once(fasta, args.profile, args, work, profile=True)
            r["profile_workers"] = args.profile
            main_thread, feeder_thread = run.pop("profiles")
            r["profile"] = {"main thread (results, saved units, writer)":
                            profile_text(main_thread),
                            "feeder thread (read, chunk, translate, send)":
                            profile_text(feeder_thread)}
            r["profile_run"] = run
    one = r["runs"][0]["frames_per_s"] / r["runs"][0]["workers"]
    for s in r["runs"]:
        s["efficiency"] = s["frames_per_s"] / (s["workers"] * one)
    r["workload"]["units"] = r["runs"][0]["units"]
    r["load_after"] = os.getloadavg()
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
