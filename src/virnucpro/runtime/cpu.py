"""The CPU fast path and a worker's own process settings (never the caller's).

- `choose_cpu_linears`: each model's CPU linear layers on the faster of MKL and oneDNN here,
  timed at worker start (`use_onednn_linears` does the swap);
- `keep_freed_buffers` / `release_free_memory`: glibc malloc tuned for big activations;
- `apply_process_settings`: what a worker process sets for itself at start.

oneDNN or MKL linears: same products, timed per machine.

PyTorch sends an fp32 `nn.Linear` on the CPU to its BLAS, which is MKL in the official x86
wheels. oneDNN, the kernel library PyTorch also ships (and that `torch.compile` uses for CPU
linears), computes the same fp32 product: both are IEEE fp32 with fp32 accumulation, and
results differ only by summation order (~1e-6). Which is faster depends on the CPU, not in a
way a vendor name predicts: on the 2-core Zen 5 machine where this path was first measured MKL
takes a generic path (~210 GFLOP/s) and oneDNN reaches ~450 GFLOP/s; on a 2-vCPU Emerald
Rapids VM MKL's peak is ~10% above oneDNN's, and whole models run faster on MKL (DNABERT-S by
12%, ESM-2 150M by 3-9%). So a CPU worker times both on each model's widest linear layer when
it starts (`time_linears`: ~0.3 s for both models on 2 cores) and moves that model's linears
to oneDNN only when oneDNN is faster by `_MARGIN` (`faster_linears`); run.json records both
times and the choice under `plan.workers[].cpu_linears`. bf16 linears go to oneDNN untimed:
with PyTorch's implicit oneDNN use switched off (below), `F.linear` in bf16 falls back to a
kernel ~30x slower.

oneDNN compiles and caches a kernel, with buffers of its own, for every input shape it
meets, and keeps up to 1024 of them: a few MiB each, so batches of ever-new sizes would grow
memory by gigabytes. Rows therefore go through in blocks of _BLOCK_ROWS, the last one padded
to a multiple of _ALIGN_ROWS: at most 8 shapes per layer shape, whatever the input. A single
256-row product runs about as fast as a whole batch's; end to end the blocks cost up to ~10%
(the extra copy of each output), the price of memory that does not grow, and part of what the
timing at start weighs. For the same reason a CPU worker switches off PyTorch's implicit use
of oneDNN (`torch.backends.mkldnn.enabled`) whichever kernel its linears use: it would
otherwise run, e.g., every fp32 GELU through a per-shape cached oneDNN kernel; PyTorch's own
GELU kernel is also the faster one.

Only the kernel changes: weights, names and state dicts stay those of `nn.Linear`. Models
here are for inference only (oneDNN's op has no gradient), so their weights are frozen.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_X86 = ("x86_64", "amd64", "i686", "x86")
_BLOCK_ROWS = 256
_ALIGN_ROWS = 32
_WORKS: dict[torch.dtype, bool] = {}
_MARGIN = 0.05  # oneDNN must be this much faster than MKL to be used (blocks cost memory)
_PROBE_ROWS = (256, 512)  # rows of the timed product: 512, or 256 where that is over
_PROBE_FLOPS = 8e9  # this much work (ESM-2 3B's feed-forward)
_PROBE_SECONDS = 0.08  # per model: both kernels in turn until this is spent (3 rounds at least)


class OneDnnLinear(nn.Linear):
    """`nn.Linear` computed by oneDNN's matmul (the op behind inductor's CPU linears), in row
    blocks of at most 8 distinct shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        out = rows.new_empty((rows.shape[0], self.out_features))  # [M, N]
        for start, n, padded in row_blocks(rows.shape[0]):
            block = rows[start:start + n]
            if padded > n:
                block = nn.functional.pad(block, (0, 0, 0, padded - n))
            product = torch.ops.mkldnn._linear_pointwise(block, self.weight, self.bias, "none",
                                                         [], "")
            out[start:start + n] = product[:n]
        return out.reshape(*x.shape[:-1], self.out_features)


def row_blocks(n_rows: int) -> list[tuple[int, int, int]]:
    """`(start, rows, padded rows)` of each block: _BLOCK_ROWS rows each, the last padded up
    to a multiple of _ALIGN_ROWS, so padded sizes take at most 8 values."""
    blocks = []
    for start in range(0, n_rows, _BLOCK_ROWS):
        n = min(_BLOCK_ROWS, n_rows - start)
        blocks.append((start, n, n + -n % _ALIGN_ROWS))
    return blocks


def onednn_linear_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether CPU linears in `dtype` should go through oneDNN here: an x86 CPU, a PyTorch
    built with oneDNN, and its linear op present and agreeing with `F.linear` on a small
    product in that dtype.

    Checked once per process and dtype. On other CPUs (ARM) PyTorch's oneDNN build differs,
    and the default path is kept.
    """
    if dtype not in _WORKS:
        _WORKS[dtype] = _check(dtype)
    return _WORKS[dtype]


def _check(dtype: torch.dtype) -> bool:
    if platform.machine().lower() not in _X86 or not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 5, 64), (48, 64), (48,)))
    expected = nn.functional.linear(x, w, b)
    try:
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(x.to(dtype), w.to(dtype), b.to(dtype),
                                                     "none", [], "")
    except (AttributeError, RuntimeError):  # op missing or renamed, or dtype unsupported
        return False
    tol = 1e-5 if dtype == torch.float32 else 0.1
    return got.shape == (3, 5, 48) and torch.allclose(got.float(), expected, rtol=tol, atol=tol)


def use_onednn_linears(*models: nn.Module) -> int:
    """Run the CPU `nn.Linear` layers of `models` through oneDNN, in place; returns how many.

    Layers whose dtype fails `onednn_linear_works` keep their kernel. When any layer was
    moved, PyTorch's implicit oneDNN use is switched off for the whole process (see the
    module note); the models' weights are frozen (`requires_grad=False`).
    """
    swapped = 0
    for model in models:
        moved = 0
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if (type(child) is nn.Linear and child.weight.device.type == "cpu"
                        and onednn_linear_works(child.weight.dtype)):
                    setattr(parent, name, _as_onednn(child))
                    moved += 1
        if moved:
            model.requires_grad_(False)
        swapped += moved
    if swapped:
        torch.backends.mkldnn.enabled = False
    return swapped


def choose_cpu_linears(models: dict[str, nn.Module]) -> dict[str, Any]:
    """Put each model's CPU linears on the faster kernel here, in place; returns the record
    for run.json: per model, the kernel chosen and, for fp32, both kernels' times.

    fp32: MKL (PyTorch's `F.linear`) and oneDNN are timed on the model's widest linear
    (`time_linears`); oneDNN is used only when `faster_linears` says so. bf16/fp16: oneDNN
    where it works, untimed. Wherever oneDNN works, PyTorch's implicit oneDNN use is then
    switched off for the whole process (see the module note), whichever kernel was chosen.
    """
    record: dict[str, Any] = {}
    for name, model in models.items():
        record[name] = _choose(model)
        log.info("CPU linears of %s: %s", name, _describe(record[name]))
    if onednn_linear_works():
        torch.backends.mkldnn.enabled = False
    return record


def _choose(model: nn.Module) -> dict[str, Any]:
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"]
    if not linears or not onednn_linear_works(linears[0].weight.dtype):
        return {"kernel": _blas_name()}
    widest = max(linears, key=lambda m: m.weight.numel())
    if widest.weight.dtype != torch.float32:
        use_onednn_linears(model)
        return {"kernel": "onednn"}
    blas_s, onednn_s, rows = time_linears(widest)
    kernel = faster_linears(blas_s, onednn_s)
    if kernel == "onednn":
        use_onednn_linears(model)
    else:
        model.requires_grad_(False)
    return {"kernel": kernel if kernel == "onednn" else _blas_name(),
            "timed_shape": [rows, widest.in_features, widest.out_features],
            "blas_ms": round(blas_s * 1e3, 3), "onednn_ms": round(onednn_s * 1e3, 3)}


def faster_linears(blas_seconds: float, onednn_seconds: float, margin: float = _MARGIN) -> str:
    """"onednn" when oneDNN's time is below (1 - margin) times the BLAS's, else "blas": ties
    and near-ties keep PyTorch's own kernel, which needs no blocks and no kernel cache."""
    return "onednn" if onednn_seconds < (1.0 - margin) * blas_seconds else "blas"


def time_linears(linear: nn.Linear, seconds: float = _PROBE_SECONDS,
                 ) -> tuple[float, float, int]:
    """Best seconds of one product through `F.linear` and through `OneDnnLinear` with
    `linear`'s weights, on 512 random rows (256 for the widest layers); returns
    `(blas, onednn, rows)`. The two run in turn, so a burst of other load hits both, until
    `seconds` is spent, at least 3 rounds after a warm-up (oneDNN builds its kernel there)."""
    k, rows = linear.in_features, probe_rows(linear.in_features, linear.out_features)
    fast = _as_onednn(linear)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=gen).to(linear.weight.dtype)  # [M, K]
    kernels = (lambda: nn.functional.linear(x, linear.weight, linear.bias), lambda: fast(x))
    best = [math.inf, math.inf]
    with torch.inference_mode():
        for kernel in kernels:
            kernel()
        stop, rounds = time.perf_counter() + seconds, 0
        while rounds < 3 or (time.perf_counter() < stop and rounds < 50):
            for i, kernel in enumerate(kernels):
                t0 = time.perf_counter()
                kernel()
                best[i] = min(best[i], time.perf_counter() - t0)
            rounds += 1
    return best[0], best[1], rows


def probe_rows(in_features: int, out_features: int) -> int:
    """Rows `time_linears` times a layer on: 512, or 256 where that is over _PROBE_FLOPS."""
    low, high = _PROBE_ROWS
    return high if 2 * high * in_features * out_features <= _PROBE_FLOPS else low


def _blas_name() -> str:
    return "mkl" if torch.backends.mkl.is_available() else "blas"


def _describe(choice: dict[str, Any]) -> str:
    if "blas_ms" not in choice:
        return choice["kernel"]
    return (f"{choice['kernel']} (one {'x'.join(map(str, choice['timed_shape']))} product: "
            f"{_blas_name()} {choice['blas_ms']:.2f} ms, oneDNN {choice['onednn_ms']:.2f} ms)")


def _as_onednn(linear: nn.Linear) -> OneDnnLinear:
    """A OneDnnLinear holding the very same parameter tensors as `linear`."""
    new = OneDnnLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       device="meta")
    new.weight = linear.weight
    new.bias = linear.bias
    return new.train(linear.training)


# ------------------------------------------------------------------ process settings
def apply_process_settings(device: str, threads: int) -> None:
    """What a worker process sets for itself before loading models: torch's thread count
    and, on CPU, glibc's malloc thresholds (`keep_freed_buffers`). Process-wide, so it is
    called in worker processes only; the caller's process keeps its settings."""
    torch.set_num_threads(threads)
    if device == "cpu":
        keep_freed_buffers()


# ------------------------------------------------------------------ glibc malloc
def keep_freed_buffers() -> None:
    """Let glibc reuse big freed buffers instead of unmapping them (glibc only; else a no-op).

    glibc serves blocks above its mmap threshold (at most 32 MiB) straight from the OS and
    unmaps them on free, so every layer of every batch page-faults its widest activations
    in afresh (tens of MiB: DNABERT-S's gated MLP at 2048 tokens is 48 MiB). Raising the
    threshold and the trim threshold keeps them in the heap between uses; whoever scores units
    calls `release_free_memory` after each, so resident memory stays bounded. Process-wide;
    set by `apply_process_settings` in CPU workers.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_KEEP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_KEEP_BYTES)


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    Batches of ever-changing shapes leave the C heap fragmented, so without this a worker's
    resident memory creeps up with the input size although nothing is kept."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_GLIBC_KEEP_BYTES = 1 << 30
_LIBC: list[Any] = []


def _libc() -> Any:
    """glibc through ctypes, or None where it is not the C library (macOS, musl)."""
    if not _LIBC:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.append(libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")
                         else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]
