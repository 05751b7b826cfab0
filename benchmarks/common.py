"""Shared helpers of the model benchmarks (`bench_predict.py`, `gpu_check.py`).

- hardware description and a matmul peak (the denominator of every MFU figure);
- an analytic count of forward FLOPs (see `forward_flops`);
- timing an embedding function over token batches, and the figures of a row of results;
- formatting and JSON.
Random models and workloads are in `synthetic.py`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from virnucpro.runtime.batching import token_batches

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class Shape:
    """The size of a transformer encoder (DNABERT-S: intermediate is the GeGLU half-width)."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int


DNABERT_S = Shape("DNABERT-S 117M", 12, 768, 12, 3072)
DNABERT_TINY = Shape("DNABERT-S tiny", 2, 64, 4, 128)
ESM2_3B = Shape("ESM-2 3B", 36, 2560, 40, 10240)
ESM2_650M = Shape("ESM-2 650M", 33, 1280, 20, 5120)
ESM2_150M = Shape("ESM-2 150M", 30, 640, 20, 2560)
ESM2_TINY = Shape("ESM-2 tiny", 2, 64, 4, 256)


# ------------------------------------------------------------------ hardware
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "device": str(device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "compute_capability": f"{props.major}.{props.minor}",
                 "cuda": torch.version.cuda,
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_kernels(device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    """The square-matmul kernels the models can use on `device`, by name.

    On a CUDA GPU: `torch.mm` (cuBLAS). On a CPU also oneDNN's linear op, which our CPU
    workers use for fp32 (`virnucpro.runtime.cpu`): MKL, behind `torch.mm`, is not the fastest
    kernel on every CPU, so a peak taken from `torch.mm` alone could understate the machine.
    """
    from virnucpro.runtime.cpu import onednn_linear_works

    kernels: dict[str, Callable[..., torch.Tensor]] = {"torch.mm": torch.mm}
    if device.type == "cpu" and onednn_linear_works():
        kernels["oneDNN"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(
            a, b, None, "none", [], "")  # a @ b.T: the same 2 n^3 FLOPs
    return kernels


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: Sequence[int],
                repeats: int = 6, max_seconds: float = 10.0) -> dict[str, Any]:
    """Best achieved FLOP/s of a square matmul (2 n^3 FLOPs) over kernels x `sizes` x `repeats`.

    This is the denominator of MFU: the best this machine reaches on an ideal shape with any
    kernel available to the models (see `matmul_kernels`), not the datasheet figure (which we
    also cannot know for a CPU slice of a VM). `kernels` has each kernel's own best; a kernel
    that refuses `dtype` on this machine is left out.
    """
    best: dict[str, Any] = {"flops": 0.0}
    per_kernel: dict[str, float] = {}
    stop = time.perf_counter() + max_seconds
    for name, mm in matmul_kernels(device).items():
        for n in sizes:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            try:
                for _ in range(2):  # warm up the library, clocks and caches
                    mm(a, b)
            except RuntimeError:  # this kernel does not take this dtype here (oneDNN bf16)
                per_kernel.pop(name, None)
                break
            sync(device)
            for _ in range(repeats):
                t0 = time.perf_counter()
                mm(a, b)
                sync(device)
                rate = 2 * n**3 / (time.perf_counter() - t0)
                per_kernel[name] = max(per_kernel.get(name, 0.0), rate)
                if rate > best["flops"]:
                    best = {"flops": rate, "size": n, "kernel": name}
                if time.perf_counter() > stop:
                    break
            del a, b
    return best | {"dtype": str(dtype).removeprefix("torch."), "kernels": per_kernel}


def sustained_matmul(device: torch.device, dtype: torch.dtype, n: int, seconds: float,
                     kernel: str = "torch.mm") -> float:
    """Median FLOP/s of back-to-back square matmuls over `seconds`: what a long run gets
    (clocks settle lower than in a burst; on a shared machine, neighbours take their share)."""
    mm = matmul_kernels(device)[kernel]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    rates = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(rates) < 3:
        t0 = time.perf_counter()
        mm(a, b)
        sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return float(np.median(rates))


class OtherLoad:
    """How much CPU other processes used while a phase ran (a shared machine's noise).

    From /proc/stat: all CPUs' busy time minus the CPU time of this process (all threads)
    and of the child processes it waited for (a command run as a subprocess, its workers),
    per second of wall time, in cores; `steal` is time the hypervisor gave to other VMs.
    Both should be ~0 for the figures of a phase to mean anything. Zero where /proc/stat
    does not exist.
    """

    def __enter__(self) -> OtherLoad:
        self._start = (_proc_stat(), _own_cpu(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        (busy0, steal0), own0, t0 = self._start
        busy1, steal1 = _proc_stat()
        wall = max(time.perf_counter() - t0, 1e-9)
        self.cores = max(0.0, (busy1 - busy0) - (_own_cpu() - own0)) / wall
        self.steal = (steal1 - steal0) / wall

    def as_dict(self) -> dict[str, float]:
        return {"other_cores": round(self.cores, 3), "steal_cores": round(self.steal, 3)}


def _own_cpu() -> float:
    """CPU seconds of this process and of its finished (waited-for) children."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(x) for x in fields] + [0] * 10
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


# ------------------------------------------------------------------ FLOP count
def encoder_linear_weights(model: nn.Module) -> int:
    """Weights of the `nn.Linear` layers of `model.encoder` (biases, norms and the unused
    pooler / contact head are left out)."""
    return sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, nn.Linear))


def forward_flops(lengths: Sequence[int], linear_weights: int, layers: int, hidden: int) -> float:
    """Useful forward FLOPs of an encoder over sequences of these token lengths.

    Per sequence of T tokens: 2 * W * T for the linear layers (W = encoder linear weights,
    one multiply-add per weight per token) plus 4 * L * T^2 * d for attention (q k^T and
    attn @ v: 2 T^2 d each per layer, summed over heads). Embedding lookups, norms,
    activations and softmax are left out (< 1%). Padding is not counted: MFU here means
    useful work, so padding waste shows up as a lower MFU.
    """
    t = np.asarray(lengths, dtype=np.float64)
    return float(2.0 * linear_weights * t.sum() + 4.0 * layers * hidden * (t**2).sum())


# ------------------------------------------------------------------ timing
def embed_throughput(embed: Callable[[list[list[int]]], torch.Tensor],
                     token_ids: Sequence[Sequence[int]], budget: int, device: torch.device,
                     min_seconds: float = 0.0, max_seconds: float = float("inf"),
                     deadline: float | None = None, keep: bool = False) -> dict[str, Any]:
    """Time `embed` over token-budget batches (the worker's batching), after one warm-up batch.

    Goes through every batch once, and round again while under `min_seconds` (so a fast
    device is timed long enough); stops after the batch that crosses `max_seconds` or
    `deadline` even mid-pass. The device is synchronised only at the end, so host work
    overlaps device work as it does in a run. With `keep`, the first pass's embeddings come
    back in input order under "embeddings". On a CPU (where nothing is asynchronous) each
    batch's time is also kept, under "pieces", for a median rate robust to other load.
    """
    batches = token_batches([len(t) for t in token_ids], budget)
    embed([list(token_ids[i]) for i in batches[0]])  # warm-up: kernels, allocator, threads
    sync(device)
    lengths: list[int] = []
    kept: list[tuple[list[int], torch.Tensor]] = []
    pieces: list[tuple[float, list[int]]] = []
    padded, done = 0, 0
    t0 = last = time.perf_counter()
    while True:
        batch = batches[done % len(batches)]
        rows = [list(token_ids[i]) for i in batch]
        out = embed(rows)
        if device.type == "cpu":
            now = time.perf_counter()
            pieces.append((now - last, [len(r) for r in rows]))
            last = now
        if keep and done < len(batches):
            kept.append((batch, out))
        lengths.extend(map(len, rows))
        padded += len(rows) * max(map(len, rows))
        done += 1
        now = time.perf_counter()
        elapsed = now - t0
        if elapsed >= max_seconds or (deadline is not None and now > deadline):
            break
        if done % len(batches) == 0 and elapsed >= min_seconds:
            break
    sync(device)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "sequences": len(lengths), "tokens": sum(lengths),
              "padded_tokens": padded, "batches_per_pass": len(batches), "batches": done,
              "lengths": lengths, "pieces": pieces}
    if keep:
        result["embeddings"] = _in_order(kept, len(token_ids))
    return result


def _in_order(pieces: list[tuple[list[int], torch.Tensor]], n: int) -> torch.Tensor:
    out = torch.zeros(n, pieces[0][1].shape[1], device=pieces[0][1].device)
    for idx, emb in pieces:
        out[torch.tensor(idx, device=emb.device)] = emb.float()
    return out


def throughput_row(timing: dict[str, Any], linear_weights: int, shape: Shape,
                   peak: float) -> dict[str, Any]:
    """tokens/s, FLOP/s and MFU from an `embed_throughput` result.

    With per-batch times ("pieces"), also the median batch's FLOP/s and MFU, and
    `robust_seconds` = all FLOPs at that median rate: on a shared machine, a burst of
    someone else's work slows a few batches, which moves the total but not the median.
    """
    flops = forward_flops(timing["lengths"], linear_weights, shape.layers, shape.hidden)
    secs = timing["seconds"]
    robust: dict[str, Any] = {}
    if timing.get("pieces"):
        rates = [forward_flops(lens, linear_weights, shape.layers, shape.hidden) / t
                 for t, lens in timing["pieces"]]
        median = float(np.median(rates))
        robust = {"flops_per_s_median": median, "mfu_median": median / peak if peak else None,
                  "robust_seconds": round(flops / median, 3), "n_pieces": len(rates)}
    return {"seconds": round(secs, 3), "sequences": timing["sequences"],
            "tokens": timing["tokens"], "tokens_per_s": round(timing["tokens"] / secs, 1),
            "sequences_per_s": round(timing["sequences"] / secs, 2),
            "flops_per_s": flops / secs, "mfu": flops / secs / peak if peak else None,
            "padding_efficiency": round(timing["tokens"] / max(timing["padded_tokens"], 1), 3),
            "mean_tokens": round(timing["tokens"] / max(timing["sequences"], 1), 1), **robust}


def fmt_flops(x: float | None) -> str:
    if x is None:
        return "n/a"
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x / 1e6:.1f} MFLOP/s"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def to_json(obj: Any) -> Any:
    """JSON-safe copy: drops per-sequence lists and tensors, turns paths into strings."""
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()
                if k not in ("lengths", "embeddings", "pieces")
                and not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj


def agreement(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How close two [n, d] embedding sets are, row by row.

    `centered_min_cosine` subtracts the reference's mean row from both first: random-weight
    models give embeddings with a large common component, which alone makes plain cosines
    look good; the centred cosine measures agreement on what differs between sequences.
    """
    ref, other = ref.double().cpu(), other.double().cpu()
    cos = torch.nn.functional.cosine_similarity(ref, other, dim=1)
    mean = ref.mean(dim=0, keepdim=True)
    centred = torch.nn.functional.cosine_similarity(ref - mean, other - mean, dim=1)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "centered_min_cosine": float(centred.min()),
            "max_abs_diff": float((ref - other).abs().max()),
            "ref_abs_max": float(ref.abs().max())}
