"""The end-to-end sections of `gpu_check.py`: ours, then the original's loop, on the same frames.

  e2e        `virnucpro predict` over ~20k frames with both models written to disk in the real
             formats; frames/s and the share of wall time the GPU was busy
  baseline   the original VirNucPro's loop (`baseline.py`: DNABERT-S one sequence at a time,
             ESM-2 in fair-esm's 2048-token batches, fp32) over the first of those frames,
             with the same weights read back from the e2e run's files in fp32; frames/s, and
             ours / original loop
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import baseline as B
import common as C
import synthetic as S
import torch
from gpu_plan import Clock, Plan


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
    """Both models and a published-shape classifier in their real on-disk formats, in a
    models directory whose manifest records them (hashed once, here: the runs then check
    size and mtime, as for downloaded models, instead of hashing 5.6 GB each).

    Built in bf16 with the check's seed, ESM-2 3B written in bf16 (5.6 GB; the hub's fp32
    file would be 11 GB). If too little time is left for this section and the baseline,
    ESM-2 650M is built and written instead, and both sections use it.
    """
    t0 = time.perf_counter()
    shape = plan.esm
    if state["clock"].left() < plan.section_seconds["e2e"] + plan.section_seconds["baseline"]:
        shape = plan.e2e_esm_fallback
    models_dir = work / "models"
    dna = S.build_dnabert(plan.dnabert, plan.device, torch.bfloat16, seed)
    esm = S.build_esm(shape, plan.device, torch.bfloat16, seed)
    dna_dir = S.write_dnabert_dir(dna, plan.dnabert, models_dir / "dnabert-s",
                                  state["tokenizer_path"])
    esm_dir = S.write_esm_dir(esm, models_dir / "esm2")
    del esm, dna
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cls = S.write_classifier(work / "classifier.pth", plan.dnabert.hidden + shape.hidden, seed)
    written = time.perf_counter() - t0
    hashed = record_models(models_dir, {"dnabert": dna_dir, "esm": esm_dir})
    print(f"  wrote DNABERT-S (fp32 .bin) and {shape.name} (bf16 safetensors) in "
          f"{written:.1f} s; hashed them once into the manifest in {hashed:.1f} s")
    return {"dnabert": dna_dir, "esm": esm_dir, "classifier": cls, "esm_shape": shape,
            "models_dir": models_dir, "hash_seconds": round(hashed, 1)}


def record_models(models_dir: Path, dirs: dict[str, Path]) -> float:
    """Record each model directory in `models_dir`'s manifest; returns the seconds taken."""
    from virnucpro.models.manifest import new_entry, save_entry

    t0 = time.perf_counter()
    for kind, path in dirs.items():
        files = [f for f in sorted(path.iterdir()) if f.is_file()]
        origin = {"kind": kind, "spec": str(path), "repo_id": None, "revision": None,
                  "source": "benchmarks/gpu_check.py (random weights)"}
        save_entry(models_dir, new_entry(models_dir, path, files, origin))
    return time.perf_counter() - t0


def esm_linear_weights(shape: C.Shape) -> int:
    """q, k, v, o (4 d^2) and the two feed-forward matrices (2 d I) per layer."""
    return shape.layers * (4 * shape.hidden**2 + 2 * shape.hidden * shape.intermediate)


def e2e_frame_count(plan: Plan, state: dict[str, Any], shape: C.Shape, clock: Clock) -> int:
    """`plan.e2e_frames`, fewer if ESM-2 would not score them in time: at 40% of the peak
    (e2e runs before the esm section measures its rate), in half of what is left of this
    section once ~75 s go to starting both runs, loading the models and the cold compile."""
    if plan.tiny or not state.get("peak"):
        return plan.e2e_frames
    per_frame = C.forward_flops([169], esm_linear_weights(shape), shape.layers, shape.hidden)
    left = state["e2e_deadline"] - time.perf_counter() - 75
    fits = int(0.5 * max(left, 0) * 0.4 * state["peak"] / per_frame)
    if fits < plan.e2e_frames:
        print(f"  only {clock.left():.0f} s left: {fits} frames instead of {plan.e2e_frames}")
    return max(min(plan.e2e_frames, fits), 500)


def section_e2e(plan: Plan, state: dict[str, Any], clock: Clock, seed: int) -> dict:
    """`virnucpro predict` with its default flags, twice, with a fresh inductor cache: first
    on a quarter of the frames (the compile cost of a first run on a machine), then on all of
    them with the cache warm (the figures of a run on a machine that has run before)."""
    work = state["work"]
    state["e2e_deadline"] = clock.section_deadline(plan.section_seconds["e2e"],
                                                   reserve=plan.section_seconds["baseline"])
    models = write_e2e_models(plan, state, work, seed)
    n_frames = e2e_frame_count(plan, state, models["esm_shape"], clock)
    records = S.stop_free_records(n_frames, 500, seed=seed + 7, prefix="e2e_")
    frames = S.frames_of(records, 500)
    state["e2e"] = {"frames": frames, "models": models}  # the baseline runs on them
    # On the CPU (the smoke run) compiling would only add minutes: the tests cover it.
    flags = ["--no-compile"] if plan.tiny else []
    runs = {}
    for label, recs in (("cold", records[:max(len(records) // 4, 1)]), ("warm", records)):
        fasta = S.write_fasta(recs, work / f"e2e_{label}.fa")
        out = work / f"e2e_{label}"
        argv = ["predict", str(fasta), "-o", str(out), "--dnabert", str(models["dnabert"]),
                "--esm", str(models["esm"]), "-p", str(models["classifier"]),
                "--models-dir", str(models["models_dir"]),
                "--device", plan.device.type, "--offline", "--no-progress", "-q", *flags]
        run_frames = frames if label == "warm" else S.frames_of(recs, 500)
        print(f"  {label} inductor cache, {len(run_frames)} frames: "
              f"virnucpro {' '.join(argv[:2])} ... (in this process)", flush=True)
        rc, wall, util = run_cli(argv, plan.device)
        if rc != 0:
            raise RuntimeError(f"virnucpro predict exited {rc}")
        run = json.loads((out / "run.json").read_text())
        runs[label] = e2e_figures(run, wall, run["timing"]["startup_seconds"],
                                  run_frames,
                                  models, util, state.get("peak"))
    figures = runs["warm"]
    figures["cold"] = {k: runs["cold"][k] for k in ("frames", "cli_wall_seconds",
                                                    "startup_seconds", "compile",
                                                    "frames_per_s", "frames_per_s_after_startup")}
    peak = figures["peak_memory_gib"]
    print(f"  peak GPU memory of the warm run: {fmt_gib(peak)}")
    state["e2e"]["figures"] = figures
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
    # Share of the tokens each model computed over that were padding (MFU counts real ones).
    out["padding_share"] = {k: round(1 - st["tokens"] / st["padded_tokens"], 4)
                            for k, st in stages.items() if st.get("padded_tokens")}
    plan = run.get("plan") or {}  # the settled dtype and budgets (workers propose, run takes)
    out["plan"] = {k: plan.get(k) for k in ("dtype", "dnabert_budget", "esm_budget", "compile")}
    compiled = [w.get("compile_seconds") for w in plan.get("workers", ()) if w.get("compiled")]
    out["compile"] = {"compiled": bool(compiled), "seconds": max(compiled, default=None)}
    # Start-up without compiling: what loading the models costs (the goal: <= 5 s for 3B).
    out["startup_without_compile_seconds"] = (startup - (out["compile"]["seconds"] or 0.0)
                                              if startup else None)
    peak_bytes = timing.get("peak_device_memory")
    out["peak_memory_gib"] = round(peak_bytes / 2**30, 2) if peak_bytes is not None else None
    print(f"  {shape.name}; {n} frames in {wall:.1f} s ({timing['wall_seconds']:.1f} s in "
          f"run.json): {out['frames_per_s']:.0f} frames/s; start-up (until the first model "
          f"forward) {fmt_secs(startup)}, {fmt_num(out['frames_per_s_after_startup'])} "
          "frames/s after")
    print(f"  budgets: DNABERT-S {plan.get('dnabert_budget')} tokens, ESM-2 "
          f"{plan.get('esm_budget')} tokens, {plan.get('dtype')}; compiled: "
          f"{out['compile']['compiled']} ({fmt_secs(out['compile']['seconds'])}); start-up "
          f"without compiling {fmt_secs(out['startup_without_compile_seconds'])}")
    print(f"  stage seconds {secs}; padding share {out['padding_share']}")
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


def fmt_gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x} GiB"


def fmt_secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def fmt_num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"




# ------------------------------------------------------------------ the original's loop
def section_baseline(plan: Plan, state: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """The original's loop over the first `plan.baseline_frames` frames of the e2e run, with
    its weights read back in fp32 (`baseline.py`); the DNABERT-S pass gets a quarter of the
    time left, ESM-2 the rest. Each pass's rate counts the frames it finished, so a pass cut
    by the deadline still gives one (the e2e frames all have the same length)."""
    from virnucpro.models.dnabert import load_dnabert, load_dnabert_tokenizer

    e2e = state.get("e2e")
    if e2e is None:
        raise RuntimeError("no frames or model files: the e2e section did not get to write them")
    deadline = clock.section_deadline(plan.section_seconds["baseline"], reserve=2)
    models, device, t0 = e2e["models"], plan.device, time.perf_counter()
    dnabert = load_dnabert(models["dnabert"], device=device, dtype=torch.float32)
    tok = load_dnabert_tokenizer(models["dnabert"])
    esm = B.original_esm(models["esm"], device, plan.baseline_esm)
    load = time.perf_counter() - t0
    frames = e2e["frames"][:plan.baseline_frames]  # None: all
    print(f"  ESM-2 as {esm.backend}; {models['esm_shape'].name} and {plan.dnabert.name} "
          f"loaded in fp32 in {load:.1f} s; TF32 off, as in the original", flush=True)
    with fp32_matmuls():
        dna = B.baseline_dnabert(dnabert, tok, frames, device, deadline=time.perf_counter()
                                 + (deadline - time.perf_counter()) / 4)
        del dnabert
        prot = B.baseline_esm(esm, frames, device, deadline=deadline)
    rows = {"dnabert": C.throughput_row(dna, dna["linear_weights"], plan.dnabert, None),
            "esm": C.throughput_row(prot, prot["linear_weights"], models["esm_shape"], None)}
    for name, row in rows.items():
        print(f"  {name:7s}: {row['sequences']} of {len(frames)} frames in {row['seconds']:.1f} s:"
              f" {row['sequences_per_s']:.1f} frames/s, {row['tokens_per_s']:.0f} tokens/s, "
              f"{C.fmt_flops(row['flops_per_s'])}")
    rate = 1 / sum(t["seconds"] / t["sequences"] for t in (dna, prot))  # frames/s
    ours = e2e.get("figures", {})  # none if `virnucpro predict` failed
    out = {"esm_backend": esm.backend, "esm_model": models["esm_shape"].name,
           "load_seconds": round(load, 1), "frames": len(frames), "stages": rows,
           "frames_per_s": rate,
           "ours_over_original": _ratio(ours.get("frames_per_s_after_startup"), rate),
           "ours_over_original_whole_run": _ratio(ours.get("frames_per_s"), rate)}
    print(f"  original loop: {rate:.1f} frames/s (DNABERT-S then ESM-2, model time only)")
    print(f"  ours / original loop: {fmt_ratio(out['ours_over_original'])} after our start-up "
          f"({fmt_num(ours.get('frames_per_s_after_startup'))} frames/s), "
          f"{fmt_ratio(out['ours_over_original_whole_run'])} over our whole run")
    return out


@contextmanager
def fp32_matmuls() -> Iterator[None]:
    """fp32 matmuls without TF32 (PyTorch's default, which the original kept), whatever this
    process had set; restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _ratio(ours: float | None, original: float) -> float | None:
    return None if ours is None or not original else ours / original


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"
