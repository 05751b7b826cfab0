"""One prepared GPU check of virnucpro (< 5 minutes on one CUDA GPU, nothing downloaded).

    benchmarks/gpu_check.sh                 # on a CUDA machine, from the repo root
    benchmarks/gpu_check.sh --cpu-tiny      # the same code, tiny models on the CPU, seconds

Random weights at real sizes: ESM-2 3B (built directly on the GPU) and DNABERT-S 117M.
Sections (each guarded: a failure is reported and the next section runs; each has a time
budget inside a global deadline):
  peak       bf16 matmul peak of this device (the MFU denominator)
  dnabert    bf16 vs fp32 agreement; tokens/s and MFU in bf16 on frames of 500 bp chunks,
             300 bp chunks and 150 bp reads at several token budgets; peak memory
  esm        the same for ESM-2 3B (agreement in fp32 vs bf16 on the 3B itself), plus the
             virus/others call of a random classifier on fp32 vs bf16 features
  e2e        `virnucpro predict` over ~20k frames with both models written to disk in the real
             formats; frames/s and the share of wall time the GPU was busy
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import virnucpro  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common as C
import torch

TARGETS = {"esm_mfu": 0.60, "dnabert_mfu": 0.40, "gpu_busy": 0.90, "cosine": 0.999}
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


def make_plan(args: argparse.Namespace) -> Plan:
    if args.cpu_tiny:
        return Plan(torch.device("cpu"), True, C.DNABERT_TINY, C.ESM2_TINY, C.ESM2_TINY,
                    (128, 256), (256, 2048), (512, 2048), 48, 16, args.e2e_frames or 120,
                    0.02, 0.2, {"peak": 5, "dnabert": 20, "esm": 20, "e2e": 60})
    return Plan(torch.device("cuda"), False, C.DNABERT_S, C.ESM2_3B, C.ESM2_650M,
                (8192, 16384), (3072, 16384, 65536), (16384, 65536), 4096, 256,
                args.e2e_frames or 20000, 1.5, 3.0,
                {"peak": 15, "dnabert": 50, "esm": 90, "e2e": 150})


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


# ------------------------------------------------------------------ workload
def workload_frames(n: int, length: int, chunk: int, seed: int) -> list[Any]:
    return C.frames_of(C.stop_free_records(n, length, seed=seed, prefix=f"w{length}_"), chunk)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def throughput_grid(plan: Plan, embed: Callable[[list[list[int]]], torch.Tensor],
                    ids_by_workload: dict[str, list[list[int]]], budgets: tuple[int, ...],
                    weights: int, shape: C.Shape, peak: float, deadline: float) -> list[dict]:
    """tokens/s, MFU and peak memory for every workload x budget, until the deadline."""
    rows = []
    for label, ids in ids_by_workload.items():
        for budget in budgets:
            if time.perf_counter() > deadline:
                rows.append({"workload": label, "budget": budget, "status": "out of time"})
                continue
            reset_peak(plan.device)
            t = C.embed_throughput(embed, ids, budget, plan.device, plan.min_seconds,
                                   plan.max_seconds, deadline)
            row = {"workload": label, "budget": budget,
                   **C.throughput_row(t, weights, shape, peak),
                   "peak_memory_gib": peak_gib(plan.device)}
            rows.append(row)
            print(f"  {label:13s} budget {budget:6d}: {row['tokens_per_s']:>11.0f} tokens/s "
                  f"{row['sequences_per_s']:>9.1f} seq/s  {C.fmt_flops(row['flops_per_s']):>14s}"
                  f"  MFU {C.fmt_pct(row['mfu']):>6s}  pad eff {row['padding_efficiency']:.2f}"
                  f"  mem {_gib(row['peak_memory_gib'])}", flush=True)
    return rows


def best_mfu(rows: list[dict]) -> float | None:
    values = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return max(values) if values else None


# ------------------------------------------------------------------ sections
def section_peak(plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    peak = C.matmul_peak(plan.device, torch.bfloat16, plan.peak_sizes, repeats=10,
                         max_seconds=plan.section_seconds["peak"])
    state["peak"] = peak["flops"]
    print(f"  bf16 torch.mm {peak['size']}^2: {C.fmt_flops(peak['flops'])}")
    return peak


def _agreement_frames(plan: Plan, seed: int) -> list[Any]:
    return workload_frames(plan.agree_frames, 500, 500, seed + 99)


def bf16_agreement(plan: Plan, embed: Callable[[Any, list[list[int]]], torch.Tensor],
                   model: Any, to_bf16: Callable[[Any], Any], ids: list[list[int]],
                   name: str) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, float]]:
    """Embed `ids` with the fp32 `model`, convert it to bf16 and embed again; print and return
    how far apart they are. Returns (bf16 model, fp32 embeddings, bf16 embeddings, agreement)."""
    fp32 = C.embed_throughput(lambda b: embed(model, b), ids, 16384, plan.device,
                              keep=True)["embeddings"]
    model = to_bf16(model)
    bf16 = C.embed_throughput(lambda b: embed(model, b), ids, 16384, plan.device,
                              keep=True)["embeddings"]
    agree = C.agreement(fp32, bf16)
    print(f"  bf16 vs fp32 on {len(ids)} frames ({name}): min cosine "
          f"{agree['min_cosine']:.6f}, centred min cosine {agree['centered_min_cosine']:.6f}, "
          f"max |diff| {agree['max_abs_diff']:.3g}")
    return model, fp32, bf16, agree


def section_dnabert(plan: Plan, state: dict[str, Any], clock: Clock, seed: int) -> dict:
    from virnucpro.models.dnabert import embed_dnabert, tokenize_dna

    deadline = clock.section_deadline(plan.section_seconds["dnabert"], reserve=60)
    tok = state["tokenizer"]
    model = C.build_dnabert(plan.dnabert, plan.device, torch.float32, seed)
    weights = C.encoder_linear_weights(model)
    agree_ids = tokenize_dna(tok, [f.nucleotide for f in state["agree_frames"]])
    model, fp32, bf16, agree = bf16_agreement(plan, embed_dnabert, model,
                                              lambda m: m.to(torch.bfloat16), agree_ids,
                                              plan.dnabert.name)
    state["dnabert_model"] = model
    state["dnabert_features"] = (fp32, bf16)
    ids = {label: tokenize_dna(tok, [f.nucleotide for f in frames])
           for label, frames in state["pools"].items()}
    rows = throughput_grid(plan, lambda b: embed_dnabert(model, b), ids, plan.dnabert_budgets,
                           weights, plan.dnabert, state["peak"], deadline)
    diag = forward_only(plan, model, ids[WORKLOADS[0][0]], max(plan.dnabert_budgets), weights,
                        state["peak"], deadline)
    return {"model": plan.dnabert.name, "agreement_bf16_fp32": agree, "throughput": rows,
            "forward_only": diag, "best_mfu": best_mfu(rows)}


def forward_only(plan: Plan, model: Any, ids: list[list[int]], budget: int, weights: int,
                 peak: float, deadline: float) -> dict[str, Any] | None:
    """DNABERT-S forward on ready device tensors (no host work, no pooling): separates the
    model's own efficiency from the cost of building batches on the host."""
    from virnucpro.runtime.batching import token_batches

    if time.perf_counter() > deadline - 2:
        return None
    batch = token_batches([len(t) for t in ids], budget)[0]
    rows = [ids[i] for i in batch]
    width = max(map(len, rows))
    x = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=plan.device)
    mask = (x != 0) if min(map(len, rows)) < width else None
    with torch.inference_mode():
        model(x, mask)
        C.sync(plan.device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < plan.min_seconds or n < 3:
            model(x, mask)
            n += 1
        C.sync(plan.device)
        secs = time.perf_counter() - t0
    lengths = [len(r) for r in rows] * n
    flops = C.forward_flops(lengths, weights, plan.dnabert.layers, plan.dnabert.hidden)
    out = {"budget": budget, "rows": len(rows), "tokens_per_s": round(sum(lengths) / secs),
           "mfu": flops / secs / peak}
    print(f"  forward only (one batch of {len(rows)} x {width}, no host work): "
          f"{out['tokens_per_s']} tokens/s, MFU {C.fmt_pct(out['mfu'])}")
    return out


def section_esm(plan: Plan, state: dict[str, Any], clock: Clock, seed: int) -> dict:
    from virnucpro.models.esm import embed_esm, tokenize_protein

    deadline = clock.section_deadline(plan.section_seconds["esm"], reserve=60)
    tok = state["esm_tokenizer"]
    model = C.build_esm(plan.esm, plan.device, torch.float32, seed)
    weights = C.encoder_linear_weights(model)
    agree_ids = tokenize_protein(tok, [f.protein for f in state["agree_frames"]])
    model, fp32, bf16, agree = bf16_agreement(plan, embed_esm, model,
                                              lambda m: C.esm_to(m, torch.bfloat16), agree_ids,
                                              plan.esm.name)
    state["esm_model"] = model
    calls = None
    if "dnabert_features" in state:
        dna32, dna16 = state["dnabert_features"]
        calls = C.call_agreement(torch.cat([dna32, fp32], dim=1),
                                 torch.cat([dna16, bf16], dim=1), seed)
        print(f"  random classifier (calibrated to call half virus) on [DNABERT-S | ESM-2] "
              f"features: same call in bf16 as in fp32 on {C.fmt_pct(calls['same_call'])} of "
              f"{calls['frames']} frames, max |score diff| {calls['max_abs_score_diff']:.3g}")
    ids = {label: tokenize_protein(tok, [f.protein for f in frames])
           for label, frames in state["pools"].items()}
    rows = throughput_grid(plan, lambda b: embed_esm(model, b), ids, plan.esm_budgets, weights,
                           plan.esm, state["peak"], deadline)
    state["esm_flops_per_s"] = max((r["flops_per_s"] for r in rows if "flops_per_s" in r),
                                   default=None)
    return {"model": plan.esm.name, "agreement_bf16_fp32": agree, "classifier_calls": calls,
            "throughput": rows, "best_mfu": best_mfu(rows)}


# ------------------------------------------------------------------ end to end
class UtilSampler:
    """Mean `nvidia-smi`-style GPU utilisation, sampled with pynvml every 0.2 s (if present)."""

    def __init__(self, index: int) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # pynvml missing or no driver: report n/a
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UtilSampler:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rate = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append((time.perf_counter(), int(rate.gpu)))

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        busy = [u for _, u in self.samples]
        first = next((i for i, u in enumerate(busy) if u > 0), None)
        active = busy[first:] if first is not None else []
        return {"samples": len(busy), "mean_util_whole_run": sum(busy) / len(busy) / 100,
                "mean_util_after_first_kernel": (sum(active) / len(active) / 100
                                                 if active else 0.0)}


def write_e2e_models(plan: Plan, state: dict[str, Any], work: Path, seed: int) -> dict:
    """Both models and a published-shape classifier in their real on-disk formats.

    ESM-2 3B (from the esm section, already on the device in bf16) is written in bf16
    (5.6 GB; the hub's fp32 file would be 11 GB); if that model is not there or time is
    short, ESM-2 650M is built and written instead.
    """
    t0 = time.perf_counter()
    esm = state.get("esm_model")
    shape = plan.esm
    if esm is None or state["clock"].left() < 150:
        state.pop("esm_model", None)
        esm, shape = None, plan.e2e_esm_fallback
        esm = C.build_esm(shape, plan.device, torch.bfloat16, seed)
    dna = state.get("dnabert_model")
    if dna is None:
        dna = C.build_dnabert(plan.dnabert, plan.device, torch.bfloat16, seed)
    dna_dir = C.write_dnabert_dir(dna, plan.dnabert, work / "dnabert-s", state["tokenizer_path"])
    esm_dir = C.write_esm_dir(esm, work / "esm2")
    for key in ("esm_model", "dnabert_model", "dnabert_features"):
        state.pop(key, None)
    del esm, dna
    cls = C.write_classifier(work / "classifier.pth", plan.dnabert.hidden + shape.hidden, seed)
    print(f"  wrote DNABERT-S (fp32 .bin) and {shape.name} (bf16 safetensors) in "
          f"{time.perf_counter() - t0:.1f} s")
    return {"dnabert": dna_dir, "esm": esm_dir, "classifier": cls, "esm_shape": shape}


def esm_linear_weights(shape: C.Shape) -> int:
    """q, k, v, o (4 d^2) and the two feed-forward matrices (2 d I) per layer."""
    return shape.layers * (4 * shape.hidden**2 + 2 * shape.hidden * shape.intermediate)


def e2e_frame_count(plan: Plan, state: dict[str, Any], shape: C.Shape, clock: Clock) -> int:
    """`plan.e2e_frames`, fewer if ESM-2 at the rate measured above would not finish in time
    (about 60 s go to starting Python, hashing and loading the models)."""
    rate = state.get("esm_flops_per_s")
    if plan.tiny or not rate:
        return plan.e2e_frames
    per_frame = C.forward_flops([169], esm_linear_weights(shape), shape.layers, shape.hidden)
    fits = int(0.6 * max(clock.left() - 60, 0) * rate / per_frame)
    if fits < plan.e2e_frames:
        print(f"  only {clock.left():.0f} s left: {fits} frames instead of {plan.e2e_frames}")
    return max(min(plan.e2e_frames, fits), 500)


def section_e2e(plan: Plan, state: dict[str, Any], clock: Clock, seed: int) -> dict:
    work = state["work"]
    models = write_e2e_models(plan, state, work, seed)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    n_frames = e2e_frame_count(plan, state, models["esm_shape"], clock)
    records = C.stop_free_records(n_frames, 500, seed=seed + 7, prefix="e2e_")
    fasta = C.write_fasta(records, work / "e2e.fa")
    frames = C.frames_of(records, 500)
    out = work / "e2e_out"
    argv = ["predict", str(fasta), "-o", str(out), "--dnabert", str(models["dnabert"]),
            "--esm", str(models["esm"]), "-p", str(models["classifier"]),
            "--device", plan.device.type, "--offline", "--no-progress", "-q"]
    print(f"  {len(frames)} frames: virnucpro {' '.join(argv[:2])} ... (in this process)",
          flush=True)
    rc, wall, util = run_cli(argv, plan.device)
    if rc != 0:
        raise RuntimeError(f"virnucpro predict exited {rc}")
    run = json.loads((out / "run.json").read_text())
    startup = run["timing"]["startup_seconds"]
    figures = e2e_figures(run, wall, startup, frames, models, util, state.get("peak"))
    peak = run["timing"]["peak_device_memory"]
    figures["peak_memory_gib"] = peak / 2**30 if peak is not None else None
    print(f"  peak GPU memory of the run: {_gib(figures['peak_memory_gib'])}")
    return figures


def run_cli(argv: list[str], device: torch.device) -> tuple[int, float, Any]:
    """`virnucpro.cli.main(argv)` called from this process (its worker is a process of its
    own; run.json says when its models were loaded). The shell script's `timeout` is the
    guard against a hang."""
    from virnucpro.cli import main as cli_main

    with UtilSampler(device.index or 0) as sampler:
        t0 = time.perf_counter()
        rc = cli_main(argv)
        wall = time.perf_counter() - t0
    return rc, wall, sampler.summary()


def e2e_figures(run: dict, wall: float, startup: float | None, frames: list[Any],
                models: dict, util: dict | None, peak: float | None) -> dict[str, Any]:
    """frames/s, GPU busy share (model stages of run.json over wall time, whole run and
    after start-up), the ESM stage's MFU, and nvml utilisation if available."""
    timing = run["timing"]
    stages = timing["stages"]
    secs = {k: v.get("seconds", 0.0) for k, v in stages.items()}
    busy = sum(secs.get(k, 0.0) for k in ("dnabert", "esm", "classifier"))
    n = timing["frames_scored_this_run"]
    # The ESM stage's MFU: useful FLOPs of these proteins over the stage's seconds.
    shape = models["esm_shape"]
    esm_flops = C.forward_flops([len(f.protein) + 2 for f in frames], esm_linear_weights(shape),
                                shape.layers, shape.hidden)
    out = {"esm_model": shape.name, "frames": n, "frames_in_input": len(frames),
           "cli_wall_seconds": round(wall, 2), "run_wall_seconds": timing["wall_seconds"],
           "startup_seconds": startup, "frames_per_s": n / wall,
           "frames_per_s_after_startup": n / (wall - startup) if startup else None,
           "stage_seconds": secs, "stages": stages, "workers": run.get("workers"),
           "gpu_busy_stage_share": busy / wall,
           # Capped: the stage clock starts (tokenising) just before the first forward.
           "gpu_busy_after_startup": min(1.0, busy / (wall - startup)) if startup else None,
           "esm_stage_mfu": (esm_flops / secs["esm"] / peak) if peak and secs.get("esm") else None,
           "nvml": util}
    w = (run.get("workers") or [{}])[0]
    print(f"  {shape.name}; {n} frames in {wall:.1f} s ({timing['wall_seconds']:.1f} s in "
          f"run.json): {out['frames_per_s']:.0f} frames/s; start-up (until the first model "
          f"forward) {_secs(startup)}, {_num(out['frames_per_s_after_startup'])} frames/s after")
    print(f"  budgets: DNABERT-S {w.get('dnabert_budget')} tokens, ESM-2 {w.get('esm_budget')} "
          f"tokens, {w.get('dtype')}")
    print(f"  stage seconds {secs}")
    print(f"  GPU busy (model stages of run.json / wall): "
          f"{C.fmt_pct(out['gpu_busy_stage_share'])} of the whole run, "
          f"{C.fmt_pct(out['gpu_busy_after_startup'])} after start-up; ESM stage MFU "
          f"{C.fmt_pct(out['esm_stage_mfu'])}")
    for name in ("dnabert", "esm"):
        st = stages.get(name, {})
        print(f"  {name} stage: {st.get('tokens_per_s')} tokens/s, {st.get('frames_per_s')} "
              "frames/s")
    if util:
        print(f"  nvml utilisation: {C.fmt_pct(util['mean_util_whole_run'])} over the whole "
              f"process, {C.fmt_pct(util['mean_util_after_first_kernel'])} from the first "
              f"busy sample ({util['samples']} samples)")
    else:
        print("  nvml utilisation: n/a (pynvml not installed or no NVIDIA driver)")
    return out


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x} GiB"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


# ------------------------------------------------------------------ main
def setup(plan: Plan, args: argparse.Namespace, work: Path,
          state: dict[str, Any]) -> dict[str, Any]:
    """Put tokenizers, the frame pools of the three workloads and the agreement frames
    into `state`; returns what to record."""
    from transformers import EsmTokenizer

    from virnucpro.models.dnabert import load_dnabert_tokenizer
    from virnucpro.models.esm import ESM_VOCAB

    tok_path, tok_label = C.dnabert_tokenizer_file(args.tokenizer, work)
    tok_dir = work / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_bytes(tok_path.read_bytes())
    vocab = work / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n")
    pools = {label: workload_frames(plan.pool_frames, length, chunk, args.seed + i)
             for i, (label, length, chunk) in enumerate(WORKLOADS)}
    print(f"  DNABERT-S tokenizer: {tok_label}")
    print("  frame pools: " + ", ".join(
        f"{k}: {len(v)} frames, {sum(len(f.protein) for f in v) / len(v):.0f} aa mean"
        for k, v in pools.items()))
    state.update(tokenizer=load_dnabert_tokenizer(tok_dir), tokenizer_path=tok_path,
                 esm_tokenizer=EsmTokenizer(vocab_file=str(vocab)), pools=pools,
                 agree_frames=_agreement_frames(plan, args.seed), work=work)
    return {"dnabert_tokenizer": tok_label,
            "pool_frames": {k: len(v) for k, v in pools.items()}}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Each target: value, met or not (None when its section did not produce it)."""
    def get(section: str, *keys: str) -> Any:
        value: Any = results.get(section, {})
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value

    cos = [get("dnabert", "agreement_bf16_fp32", "min_cosine"),
           get("esm", "agreement_bf16_fp32", "min_cosine")]
    values = {"esm_mfu": get("esm", "best_mfu"), "dnabert_mfu": get("dnabert", "best_mfu"),
              "gpu_busy": get("e2e", "gpu_busy_stage_share"),
              "cosine": min(cos) if None not in cos else None}
    table = {}
    print("\n== summary (targets) ==")
    for name, target in TARGETS.items():
        v = values[name]
        met = None if v is None else v >= target
        table[name] = {"value": v, "target": target, "met": met}
        print(f"  {name:12s} {('n/a' if v is None else f'{v:.4f}'):>8s}  target >= {target}  "
              f"{'n/a' if met is None else ('met' if met else 'MISSED')}")
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-tiny", action="store_true", help="tiny models on the CPU (tests)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for everything [270; cpu-tiny: 100]")
    p.add_argument("--e2e-frames", type=int, default=None, help="[20000; cpu-tiny: 120]")
    p.add_argument("--tokenizer", type=Path, default=None, help="DNABERT-S tokenizer.json")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.time_limit or (100 if args.cpu_tiny else 270))
    if not args.cpu_tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu-tiny for the CPU smoke run)",
              file=sys.stderr)
        return 2
    plan = make_plan(args)
    results: dict[str, Any] = {"mode": "cpu-tiny" if plan.tiny else "gpu"}
    print(f"== env ==\n  {json.dumps(C.hardware_info(plan.device))}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        state: dict[str, Any] = {"peak": None, "clock": clock}
        run_section("setup", results, lambda: setup(plan, args, Path(tmp), state), clock)
        run_section("peak", results, lambda: section_peak(plan, state), clock)
        if state.get("pools") and state.get("peak"):
            run_section("dnabert", results,
                        lambda: section_dnabert(plan, state, clock, args.seed), clock)
            run_section("esm", results, lambda: section_esm(plan, state, clock, args.seed),
                        clock)
        if state.get("pools"):
            run_section("e2e", results, lambda: section_e2e(plan, state, clock, args.seed),
                        clock, min_left=30 if not plan.tiny else 5)
    results["targets"] = summary(results)
    results["seconds"] = round(time.perf_counter() - clock.t0, 1)
    print(f"\ngpu_check: done in {results['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(C.to_json(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
