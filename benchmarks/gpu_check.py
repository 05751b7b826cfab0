"""One prepared GPU check of virnucpro (< 6 minutes on one CUDA GPU, nothing downloaded).

    benchmarks/gpu_check.sh                 # on a CUDA machine, from the repo root
    benchmarks/gpu_check.sh --cpu-tiny      # the same code, tiny models on the CPU

Random weights at real sizes: ESM-2 3B and DNABERT-S 117M. Sections, in this order (each
guarded: a failure is reported and the next section runs; each has a time budget inside a
global deadline, `gpu_plan.py`):
  peak       bf16 matmul peak of this device (the MFU denominator)
  e2e        `virnucpro predict` (default flags: compiled layers on a GPU) on ESM-2 3B, first,
             so that it always has its time: a quarter of the frames with a cold inductor
             cache (the one cold compile of the check), then ~12k frames warm; frames/s,
             start-up with and without compiling, the share of wall time the GPU was busy,
             the padding share per stage. The models are recorded in a manifest, as
             downloaded ones are, so neither run hashes the 5.6 GB checkpoint
  baseline   the original VirNucPro's loop (fp32, DNABERT-S one sequence at a time, ESM-2 in
             2048-token batches) on the first ~1.5k of those frames with the same weights;
             frames/s, and ours / original loop
  dnabert    bf16 vs fp32 agreement; tokens/s and MFU in bf16 on frames of 500 bp chunks,
             300 bp chunks and 150 bp reads at several token budgets, among them the one a
             worker chooses on this device ("default"); peak memory
  esm        the same for ESM-2 3B (agreement in fp32 vs bf16 on the 3B itself), plus the
             virus/others call of a random classifier on fp32 vs bf16 features
  compile    both models eager, then with their layers compiled as a worker compiles them
             (from the cache e2e filled), at the budgets a worker takes here: tokens/s, MFU
(compile is in gpu_compile.py, e2e and baseline in gpu_check_e2e.py, the original's
loop in baseline.py, the plan and its time budgets in gpu_plan.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import virnucpro  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import common as C
import synthetic as S
import torch
from gpu_check_e2e import (
    esm_linear_weights,
    fmt_gib,
    fmt_ratio,
    section_baseline,
    section_e2e,
)
from gpu_plan import TIME_LIMITS, WORKLOADS, Clock, Plan, make_plan, run_section

# Issue 14's goals on one H200 with default flags: (value >= target), except "max" ones.
TARGETS = {"esm_mfu_compiled": 0.65, "esm_stage_mfu": 0.65, "dnabert_default_mfu": 0.35,
           "frames_per_s_after_startup": 500.0, "frames_per_s_warm_run": 450.0,
           "gpu_busy_after_startup": 0.95, "startup_without_compile_s": 5.0, "cosine": 0.9999,
           "vs_original": 14.0}
AT_MOST = {"startup_without_compile_s"}
# ------------------------------------------------------------------ workload
def workload_frames(n: int, length: int, chunk: int, seed: int) -> list[Any]:
    return S.frames_of(S.stop_free_records(n, length, seed=seed, prefix=f"w{length}_"), chunk)


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
                    weights: int, shape: C.Shape, peak: float, deadline: float,
                    default: int | None = None) -> list[dict]:
    """tokens/s, MFU and peak memory for every workload x budget, until the deadline; rows at
    the `default` budget are marked so."""
    rows = []
    for label, ids in ids_by_workload.items():
        for budget in budgets:
            if time.perf_counter() > deadline:
                rows.append({"workload": label, "budget": budget, "status": "out of time"})
                continue
            reset_peak(plan.device)
            t = C.embed_throughput(embed, ids, budget, plan.device, plan.min_seconds,
                                   plan.max_seconds, deadline)
            row = {"workload": label, "budget": budget, "default": budget == default,
                   **C.throughput_row(t, weights, shape, peak),
                   "peak_memory_gib": peak_gib(plan.device)}
            rows.append(row)
            print(f"  {label:13s} budget {budget:6d}: {row['tokens_per_s']:>11.0f} tokens/s "
                  f"{row['sequences_per_s']:>9.1f} seq/s  {C.fmt_flops(row['flops_per_s']):>14s}"
                  f"  MFU {C.fmt_pct(row['mfu']):>6s}  pad eff {row['padding_efficiency']:.2f}"
                  f"  mem {fmt_gib(row['peak_memory_gib'])}"
                  f"{'  (default)' if row['default'] else ''}", flush=True)
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

    deadline = clock.section_deadline(plan.section_seconds["dnabert"],
                                      reserve=plan.section_seconds["compile"])
    tok = state["tokenizer"]
    model = S.build_dnabert(plan.dnabert, plan.device, torch.float32, seed)
    weights = C.encoder_linear_weights(model)
    agree_ids = tokenize_dna(tok, [f.nucleotide for f in state["agree_frames"]])
    model, fp32, bf16, agree = bf16_agreement(plan, embed_dnabert, model,
                                              lambda m: m.to(torch.bfloat16), agree_ids,
                                              plan.dnabert.name)
    state["dnabert_model"] = model
    state["dnabert_features"] = (fp32, bf16)
    ids = {label: tokenize_dna(tok, [f.nucleotide for f in frames])
           for label, frames in state["pools"].items()}
    default = worker_dnabert_budget(plan, model)
    state["dnabert_default_budget"] = default
    budgets = tuple(sorted({*plan.dnabert_budgets, default}))
    rows = throughput_grid(plan, lambda b: embed_dnabert(model, b), ids, budgets, weights,
                           plan.dnabert, state["peak"], deadline, default)
    at_default = {r["workload"]: r.get("mfu") for r in rows if r.get("default")}
    print(f"  default budget on this device (a bf16 worker's proposal): {default} tokens; MFU "
          + ", ".join(f"{k} {C.fmt_pct(v)}" for k, v in at_default.items()))
    diag = forward_only(plan, model, ids[WORKLOADS[0][0]], max(plan.dnabert_budgets), weights,
                        state["peak"], deadline)
    return {"model": plan.dnabert.name, "agreement_bf16_fp32": agree, "throughput": rows,
            "forward_only": diag, "best_mfu": best_mfu(rows), "default_budget": default,
            "default_mfu": at_default}


def worker_dnabert_budget(plan: Plan, model: Any) -> int:
    """The DNABERT-S budget a bf16 worker proposes on this device (`propose_budgets`): on a GPU
    from its free memory less the ESM-2 weights the worker also holds; on a CPU, fixed."""
    from virnucpro.runtime.devices import (
        DNABERT_BUDGET_BF16,
        dnabert_token_budget_for,
        free_memory,
    )

    free = free_memory(plan.device)
    if free is None:
        return DNABERT_BUDGET_BF16
    esm_bytes = 2 * esm_linear_weights(plan.esm)  # bf16; embeddings and norms add < 1%
    cfg = model.config
    return dnabert_token_budget_for(free - esm_bytes, 2, DNABERT_BUDGET_BF16,
                                    hidden_size=cfg.hidden_size, heads=cfg.num_attention_heads,
                                    intermediate_size=cfg.intermediate_size)


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

    deadline = clock.section_deadline(plan.section_seconds["esm"],
                                      reserve=plan.section_seconds["compile"])
    tok = state["esm_tokenizer"]
    from virnucpro.models.esm import use_inference_layers

    model = use_inference_layers(S.build_esm(plan.esm, plan.device, torch.float32, seed))
    weights = C.encoder_linear_weights(model)
    agree_ids = tokenize_protein(tok, [f.protein for f in state["agree_frames"]])
    model, fp32, bf16, agree = bf16_agreement(plan, embed_esm, model,
                                              lambda m: S.esm_to(m, torch.bfloat16), agree_ids,
                                              plan.esm.name)
    state["esm_model"] = model
    calls = None
    if "dnabert_features" in state:
        dna32, dna16 = state["dnabert_features"]
        calls = S.call_agreement(torch.cat([dna32, fp32], dim=1),
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


# ------------------------------------------------------------------ main
def setup(plan: Plan, args: argparse.Namespace, work: Path,
          state: dict[str, Any]) -> dict[str, Any]:
    """Put tokenizers, the frame pools of the three workloads and the agreement frames
    into `state`; returns what to record."""
    from transformers import EsmTokenizer

    from virnucpro.models.dnabert import load_dnabert_tokenizer
    from virnucpro.models.esm import ESM_VOCAB

    tok_path, tok_label = S.dnabert_tokenizer_file(args.tokenizer, work)
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
    values = {"esm_mfu_compiled": get("compile", "esm_compiled", "mfu"),
              "esm_stage_mfu": get("e2e", "esm_stage_mfu"),
              "dnabert_default_mfu": get("compile", "dnabert_compiled", "mfu"),
              "frames_per_s_after_startup": get("e2e", "frames_per_s_after_startup"),
              # the warm run's whole wall: start-up and a compile from a warm cache included
              "frames_per_s_warm_run": get("e2e", "frames_per_s"),
              "gpu_busy_after_startup": get("e2e", "gpu_busy_after_startup"),
              "startup_without_compile_s": get("e2e", "startup_without_compile_seconds"),
              "cosine": min(cos) if None not in cos else None,
              # e2e frames/s after its start-up over the original loop's (both model loads
              # left out; ours still counts reading, translating, scoring and writing).
              "vs_original": get("baseline", "ours_over_original")}
    table = {}
    print("\n== summary (targets) ==")
    for name, target in TARGETS.items():
        v = values[name]
        sign = "<=" if name in AT_MOST else ">="
        met = None if v is None else (v <= target if name in AT_MOST else v >= target)
        table[name] = {"value": v, "target": target, "met": met}
        print(f"  {name:26s} {('n/a' if v is None else f'{v:.4f}'):>10s}  target {sign} {target}  "
              f"{'n/a' if met is None else ('met' if met else 'MISSED')}")
    print(f"  (vs_original: e2e frames/s after start-up / the original loop's, ESM-2 as "
          f"{get('baseline', 'esm_backend') or 'n/a'}; over our whole run "
          f"{fmt_ratio(get('baseline', 'ours_over_original_whole_run'))})")
    return table


def run_compile(plan: Plan, state: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """Both models eager, then compiled, at the budgets a bf16 worker would take here."""
    from gpu_compile import section_compile

    from virnucpro.runtime.devices import ESM_BUDGET_CPU, esm_token_budget_for, free_memory

    free = free_memory(plan.device)
    hidden = state["esm_model"].config.hidden_size
    esm = ESM_BUDGET_CPU if free is None else esm_token_budget_for(free, 2, 0, hidden)
    budgets = {"dnabert": state["dnabert_default_budget"], "esm": esm}
    deadline = clock.section_deadline(plan.section_seconds["compile"], reserve=2)
    return section_compile(plan, state, deadline, budgets)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-tiny", action="store_true", help="tiny models on the CPU (tests)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for everything [420; cpu-tiny: 200]")
    p.add_argument("--e2e-frames", type=int, default=None, help="[20000; cpu-tiny: 120]")
    p.add_argument("--baseline-frames", type=int, default=None,
                   help="e2e frames for the original's loop [2000; cpu-tiny: all]")
    p.add_argument("--baseline-esm", choices=("auto", "fair-esm", "transformers"),
                   default="auto", help="the original loop's ESM-2: fair-esm's ESM2, or "
                   "transformers' EsmModel with eager attention [auto: fair-esm if installed]")
    p.add_argument("--tokenizer", type=Path, default=None, help="DNABERT-S tokenizer.json")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.time_limit or TIME_LIMITS["cpu-tiny" if args.cpu_tiny else "gpu"])
    if not args.cpu_tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu-tiny for the CPU smoke run)",
              file=sys.stderr)
        return 2
    plan = make_plan(args)
    results: dict[str, Any] = {"mode": "cpu-tiny" if plan.tiny else "gpu"}
    print(f"== env ==\n  {json.dumps(C.hardware_info(plan.device))}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        # On a GPU, one fresh inductor cache for the whole check: e2e's first run compiles
        # from cold, its second run and the compile section reuse it (the workers inherit
        # the variable). The CPU smoke run's e2e does not compile, and its compile section
        # keeps inductor's default cache, as test_compile.py does: a test suite run then
        # compiles the tiny layers once, not on every run.
        if not plan.tiny:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        state: dict[str, Any] = {"peak": None, "clock": clock}
        run_section("setup", results, lambda: setup(plan, args, Path(tmp), state), clock)
        run_section("peak", results, lambda: section_peak(plan, state), clock)
        if state.get("pools"):
            run_section("e2e", results, lambda: section_e2e(plan, state, clock, args.seed),
                        clock, min_left=30 if not plan.tiny else 5)
            run_section("baseline", results, lambda: section_baseline(plan, state, clock),
                        clock, min_left=30 if not plan.tiny else 5)
        if state.get("pools") and state.get("peak"):
            run_section("dnabert", results,
                        lambda: section_dnabert(plan, state, clock, args.seed), clock)
            run_section("esm", results, lambda: section_esm(plan, state, clock, args.seed),
                        clock)
        if state.get("esm_model") is not None and state.get("dnabert_model") is not None:
            run_section("compile", results, lambda: run_compile(plan, state, clock), clock)
    results["targets"] = summary(results)
    results["seconds"] = round(time.perf_counter() - clock.t0, 1)
    print(f"\ngpu_check: done in {results['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(C.to_json(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
