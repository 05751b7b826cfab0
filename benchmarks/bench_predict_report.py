"""The printed report of `bench_predict.py`: hardware, peak, the whole command against the
baseline, the model-level figures, opt-in bf16 and the targets, from its result dict."""

from __future__ import annotations

from typing import Any

import common as C

NOISE_CORES = 0.15  # other processes' average CPU use above which a phase is flagged


def report(r: dict[str, Any]) -> None:
    hw, peak = r["hardware"], r["peak"]
    print("== hardware ==")
    print(f"  cpu: {hw['cpu']}; cores: {hw['cpu_cores']} (usable {hw['cpu_cores_usable']}); "
          f"torch {hw['torch']}, {hw['torch_threads']} threads; python {hw['python']}")
    print(f"  load average before the run {_load(hw['load_average'])} (other work on these "
          f"cores), at the end {_load(r['load_average_end'])} (includes this run's threads)")
    print(f"  DNABERT-S tokenizer: {r['tokenizer']}")
    print("== matmul peak (fp32, square; best of several) ==")
    for name, flops in peak["kernels"].items():
        print(f"  {name}: {C.fmt_flops(flops)}")
    print(f"  peak = {peak['kernel']} at {peak['size']}x{peak['size']}: "
          f"{C.fmt_flops(peak['flops'])} (the MFU denominator)")
    print(f"  sustained (median of back-to-back {peak['kernel']} over several seconds): "
          f"{C.fmt_flops(peak['sustained_flops'])}")
    print("  our CPU linears (timed at load, as a worker does): " + "; ".join(
        f"{name} {_linears(choice)}" for name, choice in r["models"]["cpu_linears"].items()))
    report_models(r)
    report_e2e(r)
    print("== agreement, ours vs baseline (same weights, fp32) ==")
    for key in ("dnabert", "esm"):
        a = r["agreement"][key]
        print(f"  {key}: min cosine {a['min_cosine']:.7f}, centred min cosine "
              f"{a['centered_min_cosine']:.7f}, max |diff| {a['max_abs_diff']:.2e}")
    if "bf16" in r:
        report_bf16(r)
    print("== other load on these cores during each phase (cores; should be ~0) ==")
    print("  " + "; ".join(f"{k}: other processes {v['other_cores']:.2f}, hypervisor steal "
                           f"{v['steal_cores']:.2f}" for k, v in r["other_load"].items()))
    noisy = [k for k, v in r["other_load"].items()
             if v["other_cores"] + v["steal_cores"] > NOISE_CORES]
    if noisy:
        print(f"  WARNING: other work competed for the CPU during {', '.join(noisy)}: those "
              "figures (and any ratio built on them) are NOT reliable; rerun on a quiet machine")
    print("== targets ==")
    for name, value in r["targets"].items():
        print(f"  {name:16s} {value['value']:.3f}  target >= {value['target']}  "
              f"{'met' if value['met'] else 'MISSED'}")


def report_e2e(r: dict[str, Any]) -> None:
    e, base = r["e2e"], r["baseline"]
    print("== the whole command (python -m virnucpro predict --device cpu, default budgets; "
          "process start to exit) ==")
    print(f"  frames {e['frames']}, wall {e['wall_seconds']:.2f} s, "
          f"{e['frames_per_s']:.3f} frames/s ({e['frames_per_s_after_startup']:.3f} after "
          f"start-up of {e['startup_seconds']:.2f} s: interpreter and imports, then "
          f"{e['run_json_startup_seconds']:.2f} s to spawn the worker and load its models)")
    print(f"  model stage share (run.json: dnabert+esm+classifier seconds / wall): "
          f"{C.fmt_pct(e['forward_share'])} (after start-up "
          f"{C.fmt_pct(e['forward_share_after_startup'])}); of run.json's own wall_seconds "
          f"{C.fmt_pct(e['stage_share'])}; stages {e['stage_seconds']}")
    b = base["e2e"]
    print("== baseline (original style: DNABERT-S batch 1 unmasked; fair-esm ESM2, "
          "<= 2048-token batches; fp32), end to end in a fresh process ==")
    print(f"  frames {b['frames']}, wall {b['wall_seconds']:.2f} s, {b['frames_per_s']:.3f} "
          f"frames/s ({b['frames_per_s_after_startup']:.3f} after start-up of "
          f"{b['startup_seconds']:.2f} s: interpreter and imports, loading the models)")
    print("  phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in b["phases"].items()))
    print(f"  model time only: {base['seconds']:.2f} s -> {base['frames_per_s']:.3f} frames/s; "
          f"at median batch rates: {base['robust_seconds']:.2f} s")
    print("== same frames: ours vs the baseline ==")
    print(f"  end to end (both whole processes): {r['speedup']:.2f}x")
    print(f"  after start-up on both sides: {r['speedup_after_startup']:.2f}x")
    print(f"  model time only (as run): {r['speedup_models']:.2f}x; both models at their "
          f"median batch rates: {r['speedup_robust']:.2f}x")


def report_models(r: dict[str, Any]) -> None:
    ours, base = r["models"], r["baseline"]
    print(f"== models ({r['frames']} frames of {r['workload']}; fp32; ours: token-budget "
          "batches; MFU as run, and at the median batch's rate) ==")
    rows = []
    for key, label in (("dnabert", r["dna_shape"]), ("esm", r["esm_shape"])):
        for who, row in ((f"ours, budget {ours[key]['budget']}", ours[key]),
                         ("baseline", base[key])):
            rows.append([f"{label} ({who})", row["tokens"], row["mean_tokens"],
                         f"{row['seconds']:.2f}", f"{row['tokens_per_s']:.0f}",
                         C.fmt_flops(row["flops_per_s"]), C.fmt_pct(row["mfu"]),
                         C.fmt_pct(row["mfu_median"]), row["n_pieces"]])
    C.print_table(rows, ["model", "tokens", "tok/seq", "seconds", "tokens/s", "FLOP/s",
                         "MFU", "MFU median", "batches"])
    print("  FLOPs = 2*W*T (W = encoder linear weights) + 4*L*T^2*d per sequence; padding "
          "not counted")


def report_bf16(r: dict[str, Any]) -> None:
    b = r["bf16"]
    print("== opt-in: --precision bf16 on this CPU (not the default; fp32 is) ==")
    print(f"  bf16 matmul peak ({b['peak']['kernel']}): {C.fmt_flops(b['peak']['flops'])} "
          f"({b['peak']['flops'] / r['peak']['flops']:.1f}x the fp32 peak)")
    for key, label in (("dnabert", r["dna_shape"]), ("esm", r["esm_shape"])):
        row, a = b["models"][key], b["agreement"][key]
        print(f"  {label}: {row['tokens_per_s']:.0f} tokens/s, MFU {C.fmt_pct(row['mfu'])} of "
              f"the bf16 peak; vs fp32: min cosine {a['min_cosine']:.5f}, centred "
              f"{a['centered_min_cosine']:.5f}")
    e, c = b["e2e"], b["calls"]
    print(f"  end to end: {e['frames_per_s']:.3f} frames/s -> {b['speedup']:.2f}x the baseline "
          "(as run)")
    print(f"  random classifier calibrated to call half virus: same call as fp32 on "
          f"{C.fmt_pct(c['same_call'])} of {c['frames']} frames, max |score diff| "
          f"{c['max_abs_score_diff']:.3g}")


def _linears(choice: dict[str, Any]) -> str:
    if "blas_ms" not in choice:
        return choice["kernel"]
    rows, k, n = choice["timed_shape"]
    return (f"{choice['kernel']} ({rows}x{k}->{n}: MKL {choice['blas_ms']:.2f} ms, oneDNN "
            f"{choice['onednn_ms']:.2f} ms)")


def _load(value: Any) -> str:
    return "n/a" if value is None else ", ".join(f"{x:.2f}" for x in value)
