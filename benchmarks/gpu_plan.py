"""What one `gpu_check.py` run measures and when: the sizes of its models and workloads, each
section's time budget inside one global deadline, and the guard each section runs under."""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import common as C
import torch

# Seconds for everything; gpu_check.sh's hard stop is 15 s behind. With the wheels installed
# and the modules checked first, the whole check stays under 6 minutes, so that it and
# gpu_tests.sh (4 minutes) fit one 15-minute device loan with room to rerun one of them.
# cpu-tiny compiles on the CPU from a cold inductor cache (tests): minutes on a busy machine.
TIME_LIMITS = {"gpu": 310, "cpu-tiny": 330}
# (label, record length, chunk size): what each workload's frames come from.
WORKLOADS = (("500bp chunks", 500, 500), ("300bp chunks", 300, 300), ("150bp reads", 150, 300))


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets of one check: the real one on a GPU, or tiny on the CPU."""

    device: torch.device
    tiny: bool
    dnabert: C.Shape
    esm: C.Shape
    e2e_esm_fallback: C.Shape
    peak_sizes: tuple[int, ...]
    dnabert_budgets: tuple[int, ...]
    esm_budgets: tuple[int, ...]
    pool_frames: int  # frames per workload for throughput
    agree_frames: int
    e2e_frames: int
    min_seconds: float  # per throughput measurement
    max_seconds: float
    section_seconds: dict[str, float]
    baseline_frames: int | None  # the first e2e frames, for the original's loop (None: all)
    baseline_esm: str  # its ESM-2: "auto" | "fair-esm" | "transformers"


def make_plan(args: argparse.Namespace) -> Plan:
    """Sections run in this order: peak, e2e (the real ESM-2 3B, first, so that it always
    has the time; its first run is the one cold compile), baseline, dnabert, esm, compile
    (from the cache e2e filled)."""
    if args.cpu_tiny:
        return Plan(torch.device("cpu"), True, C.DNABERT_TINY, C.ESM2_TINY, C.ESM2_TINY,
                    (128, 256), (256, 2048), (512, 2048), 48, 16, args.e2e_frames or 120,
                    0.02, 0.2, {"peak": 5, "e2e": 60, "baseline": 30, "dnabert": 20,
                                "esm": 20, "compile": 180},
                    baseline_frames=args.baseline_frames, baseline_esm=args.baseline_esm)
    # The original's loop ran ESM-2 3B at ~33 frames/s on an H200: 1,500 frames take ~45 s.
    return Plan(torch.device("cuda"), False, C.DNABERT_S, C.ESM2_3B, C.ESM2_650M,
                (8192, 16384), (3072, 16384, 65536), (16384, 65536), 4096, 256,
                args.e2e_frames or 12000, 1.5, 3.0,
                {"peak": 10, "e2e": 150, "baseline": 45, "dnabert": 30, "esm": 40,
                 "compile": 25},
                baseline_frames=args.baseline_frames or 1500, baseline_esm=args.baseline_esm)


class Clock:
    """The global deadline and each section's share of it."""

    def __init__(self, limit: float) -> None:
        self.t0 = time.perf_counter()
        self.end = self.t0 + limit

    def left(self) -> float:
        return self.end - time.perf_counter()

    def section_deadline(self, seconds: float, reserve: float = 0.0) -> float:
        return min(time.perf_counter() + seconds, self.end - reserve)


def run_section(name: str, results: dict[str, Any], fn: Callable[[], dict[str, Any]],
                clock: Clock, min_left: float = 5.0) -> None:
    """Run one section; a failure or a spent deadline is recorded and printed, not raised."""
    print(f"\n== {name} ==", flush=True)
    if clock.left() < min_left:
        results[name] = {"status": "skipped: out of time"}
        print(f"  SKIPPED: {clock.left():.0f} s left of the time limit", flush=True)
        return
    t0 = time.perf_counter()
    try:
        out = fn()
        results[name] = {"status": "ok", **out}
    except Exception as exc:  # one section's failure must not stop the others
        results[name] = {"status": f"failed: {type(exc).__name__}: {exc}"}
        print(f"  FAILED: {type(exc).__name__}: {exc}")
        print("  " + "".join(traceback.format_exc(limit=-3)).replace("\n", "\n  "))
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
