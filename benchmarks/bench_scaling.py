"""How the orchestration scales with the number of devices, with stand-in devices that sleep.

    python benchmarks/bench_scaling.py                  # 220,000 reads, N = 1, 8, 16, 32, 64
    python benchmarks/bench_scaling.py --profile 16     # and where the parent's time goes
    python benchmarks/bench_scaling.py --quick          # 3,000 reads, N = 1, 2 (used by tests)

This is a benchmark of the parent (the pump), not a correctness test. It runs the real engine
(`runtime.engine.run_units` with a real `Job`: the feeder thread reading a FASTA file into
record units, the pipes, N worker processes, results consumed in unit order into the real
`writer.PredictWriter`, every unit saved for resume) with N stand-in devices
(`stand_in.StandIn`): each sleeps as long as an H200 would compute, with ESM-2 3B at the 65%
MFU goal (113,000 tokens/s) and DNABERT-S at 495,000 tokens/s, and returns rows of the real
layout. The per-frame CPU work of real workers runs on their own cores in a deployment; the
stand-ins parse their unit's text and write its saved file as a worker does, but skip
translation and rendering, so that 64 of them fit on this machine and the figures measure
the parent.

The input is 150 bp reads (stop-free in their first frame) cut as `-m 300` does; the
stand-ins keep as many frames per chunk, and as many tokens per frame, as the real translation
gives on a sample of the same reads. Figures are over the scoring phase: from the moment every
worker has settled (start-up, i.e. N process starts, is reported apart) to the last unit
handed to the writer. Efficiency at N = frames/s at N / (N x frames/s at 1, or at the smallest
N run, per device); "devices busy" = the stand-ins' sleep over N x that time; "parent CPU
us/frame" = the parent's CPU time (all its threads) over the frames, the figure that does not
depend on other work on the machine; "parent ceiling" = the frames/s that CPU time allows on
one free core.
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
import synthetic as S
from stand_in import DNABERT_TOKENS_PER_S, ESM_TOKENS_PER_S, frames_for

CHUNK_SIZE = 300  # -m 300: a read of up to 300 bp is one chunk
READ_LENGTHS = (150, 150)
BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reads", type=int, default=None, help="reads [220,000; quick: 3,000]")
    p.add_argument("--workers", default=None,
                   help="comma-separated device counts [1,8,16,32,64; quick: 1,2]")
    p.add_argument("--unit-frames", type=int, default=None,
                   help="frames per work unit [2048, predict's default; quick: 256]")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="also profile the parent at N devices (an extra run)")
    p.add_argument("--long-record", type=float, default=None, metavar="MBP",
                   help="instead of reads, one contig of MBP megabases (phage-like genes), "
                        "split over units")
    p.add_argument("--ray", type=int, default=None, metavar="NODES",
                   help="run the stand-ins as Ray actors on a ray.cluster_utils.Cluster of "
                        "NODES nodes, each offering max(--workers) / NODES (fake) GPUs")
    p.add_argument("--quick", action="store_true", help="a few seconds (for tests)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.reads = args.reads or (3_000 if args.quick else 220_000)
    args.workers = [int(x) for x in (args.workers or ("1,2" if args.quick else "1,8,16,32,64"))
                    .split(",")]
    args.unit_frames = args.unit_frames or (256 if args.quick else 2048)
    return args


# ------------------------------------------------------------------ one run
def run_once(fasta: Path, n: int, args: argparse.Namespace, work: Path,
             profile: bool = False) -> dict[str, Any]:
    """The real engine with n stand-in devices, into the real writer; times and counts."""
    from stand_in import spec_field

    from virnucpro import outputs
    from virnucpro.reader import ReadStats
    from virnucpro.runtime.engine import Job, run_units
    from virnucpro.runtime.protocol import Render, Request, WorkerSpec
    from virnucpro.runtime.units import UNITS_DIR, UnitStream
    from virnucpro.writer import PredictWriter

    out = work / f"out-{n}{'-profile' if profile else ''}"
    home = out / outputs.STATE_DIR
    (home / UNITS_DIR).mkdir(parents=True)
    w = args.rates
    render = Render(CHUNK_SIZE, 0.5)
    specs = tuple(WorkerSpec(spec_field(w["frames_per_chunk"], w["esm_tokens_per_frame"],
                                        w["dnabert_tokens_per_frame"]),
                             "stand-in", "stand-in", f"cuda:{i}", threads=1, render=render)
                  for i in range(n))
    job = Job(specs, Request(device="cuda", workers=n), home, backend="stand_in:StandIn",
              pythonpath=str(BENCH_DIR))
    read = ReadStats()
    units = UnitStream((str(fasta),), CHUNK_SIZE, args.unit_frames).units(read)
    writer = PredictWriter(out, home / "tmp", render)
    clock = _Clock(profile)

    def consume(record: Any, result: Any) -> None:
        t0 = time.perf_counter()
        writer.add(result.rendered, record)
        clock.last, clock.last_cpu = time.perf_counter(), time.thread_time()
        clock.writer += clock.last - t0
        clock.units += 1

    t0 = time.perf_counter()
    if args.ray:  # the same stand-ins as Ray actors; this process is the Ray driver
        from virnucpro.runtime.ray_engine import run_units_ray

        stats = run_units_ray(job, clock.feeder(units), consume,
                              on_settled=lambda plan: clock.start())
    else:
        stats = run_units(job, clock.feeder(units), consume,
                          on_settled=lambda plan: clock.start())
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
    what = (f"one {w['long_record_mbp']} Mbp contig" if w["long_record_mbp"] else
            f"{w['reads']:,} reads of {w['read_lengths'][0]}-{w['read_lengths'][1]} bp")
    print(f"  {what}, -m {CHUNK_SIZE}; {w['frames']:,} frames in {w['units']} units of ~"
          f"{w['unit_frames']} frames; ESM-2 {w['esm_tokens_per_frame']:.1f} tokens/frame, "
          f"DNABERT-S {w['dnabert_tokens_per_frame']:.1f} (approximated)")
    print(f"  stand-in device: ESM-2 3B {ESM_TOKENS_PER_S:,.0f} tokens/s (65% MFU) + DNABERT-S "
          f"{DNABERT_TOKENS_PER_S:,.0f} tokens/s -> {w['device_frames_per_s']:.0f} frames/s "
          "per device")
    print(f"  this machine: {r['cpu']}, {r['cores']} cores; load average before "
          f"{_floats(r['load_before'])}, after {_floats(r['load_after'])}")
    print(f"== scaling, {r['engine']} engine (scoring phase; start-up apart) ==")
    rows = [[s["workers"], s["frames"], f"{s['seconds']:.2f}", f"{s['frames_per_s']:.0f}",
             C.fmt_pct(s["efficiency"]), C.fmt_pct(s["device_busy"]),
             f"{s['parent_cores']:.2f}",
             _cpu_split(s, r["engine"] == "local"),
             f"{s['parent_ceiling']:.0f}", f"{s['startup_seconds']:.1f}"]
            for s in r["runs"]]
    C.print_table(rows, ["N", "frames", "seconds", "frames/s", "efficiency", "devices busy",
                         "parent cores", "parent CPU us/frame", "parent ceiling",
                         "start-up s"])
    print("  parent CPU us/frame: in all (main thread: results, saved units, writer / feeder "
          "thread: reading records into units / other threads: the pipes, pickling);"
          "\n  parent ceiling: frames/s the parent could sustain on one free core (one GIL) at "
          "that CPU cost;\n  parent cores: CPU the parent got per second (other work on these "
          "cores takes the rest)")
    for name, text in r.get("profile", {}).items():
        print(f"== profile at N = {r['profile_workers']}: {name} (by own time) ==")
        print(text)


def _cpu_split(s: dict[str, Any], by_thread: bool) -> str:
    """Parent CPU us/frame in all and, for the local engine, main / feeder / other threads
    (the Ray driver draws units in its main thread, so there the total alone means much)."""
    total = f"{1e6 * s['cpu_seconds']['parent'] / s['frames']:.1f}"
    if not by_thread:
        return total
    return total + " (" + "/".join(f"{1e6 * s['cpu_seconds'][k] / s['frames']:.1f}" for k in
                                   ("main_thread", "feeder_thread", "other_threads")) + ")"


def _floats(values: Any) -> str:
    return "n/a" if values is None else ", ".join(f"{x:.2f}" for x in values)


def workload(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The reads as FASTA, and the frames and tokens the stand-ins will give them (from the
    real translation of a sample)."""
    from virnucpro.frames import iter_record_frames

    if args.long_record:
        records = S.contig_like_records(int(args.long_record * 1e6), n_contigs=1,
                                        seed=args.seed)
        records[0] = S.Record("contig", "contig", records[0].seq, "bench")
        head = S.Record("head", "head", records[0].seq[:2_000_000], "bench")
        sample = list(iter_record_frames([head], CHUNK_SIZE))
    else:
        records = S.stop_free_reads(args.reads, *READ_LENGTHS, seed=args.seed)
        sample = list(iter_record_frames(records[:5000], CHUNK_SIZE))
    frames = [f for rf in sample for fs in rf.frames for f in fs]
    chunks = sum(len(rf.chunks) for rf in sample)
    esm = sum(len(f.protein) + 2 for f in frames) / len(frames)
    dna = sum(len(f.nucleotide) // 5 + 2 for f in frames) / len(frames)
    per_frame = esm / ESM_TOKENS_PER_S + dna / DNABERT_TOKENS_PER_S
    fasta = S.write_fasta(records, work / "reads.fa")
    args.rates = {"frames_per_chunk": len(frames) / chunks, "esm_tokens_per_frame": esm,
                  "dnabert_tokens_per_frame": dna}
    fpc = len(frames) / chunks
    total = sum(frames_for(f"{r.id}_chunk_{c + 1}", fpc) for r in records
                for c in range(-(-len(r.seq) // CHUNK_SIZE)))
    return fasta, {"reads": len(records), "read_lengths": READ_LENGTHS,
                   "long_record_mbp": args.long_record, "frames": total,
                   "unit_frames": args.unit_frames, "esm_tokens_per_frame": esm,
                   "dnabert_tokens_per_frame": dna, "device_frames_per_s": 1 / per_frame}


def start_ray(nodes: int, devices: int) -> Any:
    """A Ray cluster of `nodes` nodes on this machine, each offering its share of `devices`
    (fake) GPUs and as many CPUs, with the stand-ins importable; this process joins it."""
    import ray
    from ray.cluster_utils import Cluster

    per = -(-devices // nodes)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per, "num_gpus": per})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per, num_gpus=per)
    src = str(BENCH_DIR.parent / "src")
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(BENCH_DIR), src])}})
    return cluster


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r: dict[str, Any] = {"quick": args.quick, "cpu": C.cpu_model(), "cores": os.cpu_count(),
                         "load_before": os.getloadavg()}
    cluster = start_ray(args.ray, max(args.workers)) if args.ray else None
    r["engine"] = f"ray, {args.ray} nodes" if args.ray else "local"
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
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
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
