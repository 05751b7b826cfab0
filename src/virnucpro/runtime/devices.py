"""Which devices a run uses, in which precision, and how big its batches may be.

The rules are pure functions of plain values (`parse_devices`, `dtype_for`,
`common_precision`, `esm_token_budget_for`, `dnabert_token_budget_for`) so they are
testable without a GPU, and torch-free: the parent uses them and never imports torch
(`visible_gpus` counts GPUs from the driver's files). What needs the device itself
(`describe_device`, `free_memory`, `torch_dtype`) runs in the workers, which import torch.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virnucpro.errors import VirnucproError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# DNABERT-S tokens per batch on a CPU, and the floor on a GPU; bf16 halves activation memory,
# so more fit.
DNABERT_BUDGET_DEFAULT = 2048
DNABERT_BUDGET_BF16 = 3072
# On an H200, 2,048-3,072 tokens kept DNABERT-S at 4-14% MFU, 65,536 at 35-38%.
DNABERT_BUDGET_MAX = 65536
# The longest row `dnabert_token_budget_for` provisions for: DNABERT-S's 512-token context.
# A 500 bp chunk is at most 502 tokens (one per base, [CLS], [SEP]); real ones are ~110.
DNABERT_ROW_TOKENS = 512
# ESM-2 tokens per batch. On a CPU, 4096 was ~4% faster than 2048 and within noise of 8192
# (ESM-2 150M, fp32, 2 Emerald Rapids vCPUs, 2026-11-30); bigger batches only hold more memory.
ESM_BUDGET_CPU = 4096
ESM_BUDGET_MIN = 2048  # the original's batch size (toks_per_batch=2048)
ESM_BUDGET_MAX = 65536  # beyond this bigger batches stop paying off and padding grows
ESM_HIDDEN = 2560  # esm2_t36_3B_UR50D
_GIB = 1 << 30


class DeviceError(VirnucproError):
    """A bad --device / --gpus / --precision value, or one this machine cannot honour."""


# ------------------------------------------------------------------ devices
def parse_devices(device: str, gpus: str | None, n_cuda: int) -> list[str]:
    """Device names for `--device` and `--gpus` given `n_cuda` visible CUDA devices.

    auto: every visible GPU (or those in `gpus`), else the CPU; cuda: the same but a GPU is
    required; cuda:N: that one GPU; cpu: the CPU. `gpus` ("0,1") indexes visible devices.
    """
    device = device.strip().lower()
    if device == "cpu":
        if gpus:
            raise DeviceError(f"--gpus {gpus} cannot be combined with --device cpu")
        return ["cpu"]
    if device.startswith("cuda:"):
        if gpus:
            raise DeviceError(f"--gpus {gpus} cannot be combined with --device {device}")
        return [f"cuda:{_gpu_index(device[5:], n_cuda, f'--device {device}')}"]
    if device not in ("auto", "cuda"):
        raise DeviceError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if n_cuda == 0:
        if device == "cuda" or gpus:
            what = f"--gpus {gpus}" if gpus else "--device cuda"
            raise DeviceError(f"{what} asks for a GPU but no CUDA device is visible")
        return ["cpu"]
    if not gpus:
        return [f"cuda:{i}" for i in range(n_cuda)]
    indexes = [_gpu_index(part, n_cuda, f"--gpus {gpus}") for part in gpus.split(",")]
    if len(set(indexes)) != len(indexes):
        raise DeviceError(f"--gpus {gpus} lists a GPU twice")
    return [f"cuda:{i}" for i in indexes]


def _gpu_index(text: str, n_cuda: int, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise DeviceError(f"{what}: {text!r} is not a GPU index")
    index = int(text)
    if index >= n_cuda:
        raise DeviceError(f"{what}: GPU {index} does not exist "
                          f"({n_cuda} CUDA device{'s' if n_cuda != 1 else ''} visible)")
    return index


def visible_gpus(driver: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """How many CUDA devices a worker of this process will see, without importing torch:
    the entries of CUDA_VISIBLE_DEVICES when it is set (as CUDA reads it: up to the first
    invalid one), else the GPUs the NVIDIA driver lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(list(driver.iterdir()))
    except OSError:  # no NVIDIA driver
        present = 0
    if visible is None:
        return present
    count = 0
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break  # CUDA ignores this entry and every one after it
        count += 1
    return min(count, present) if present else 0


# ------------------------------------------------------------------ precision
def dtype_for(capability: tuple[int, int] | None, precision: str) -> str:
    """'fp32', 'bf16' or 'fp16' for a device of this compute capability (None = CPU).

    auto: fp32 on CPU; on CUDA bf16 from capability 8.0 (Ampere) on, else fp16.
    An explicit choice is honoured as given (bf16 on a CPU is allowed and sometimes faster).
    """
    precision = precision.strip().lower()
    if precision not in PRECISIONS:
        raise DeviceError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if capability is None:
        return "fp32"
    return "bf16" if capability >= (8, 0) else "fp16"


_RANK = {"fp32": 0, "fp16": 1, "bf16": 2}  # fp16 and fp32 run everywhere; bf16 needs sm_80


def common_precision(capabilities: list[tuple[int, int] | None], precision: str) -> str:
    """The one precision for every device of a run: `dtype_for` of each, and where they
    differ (a bf16 GPU beside an older one) the best that all of them support."""
    choices = {dtype_for(c, precision) for c in capabilities}
    return min(choices, key=_RANK.__getitem__) if choices else dtype_for(None, precision)


def torch_dtype(precision: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ------------------------------------------------------------------ description
def describe_device(device: torch.device) -> dict[str, Any]:
    """Name, compute capability and memory (bytes) of a device, the software it computes with
    (torch, CUDA, cuDNN, the attention kernels SDPA may use) and what compiling on it lacks
    (`compile_missing`, None if nothing), for logs and run.json. Called in the worker that
    owns the device (it initialises CUDA)."""
    import torch

    from virnucpro.models.attention import backend_names
    from virnucpro.runtime.compile import toolchain_missing

    device = torch.device(device)
    software = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                "attention": backend_names(), "compile_missing": toolchain_missing(device.type)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        return {"device": str(device), "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "total_memory": total, "free_memory": free, **software}
    return {"device": str(device), "name": platform.processor() or platform.machine(),
            "compute_capability": None, "total_memory": _sysconf_bytes("SC_PHYS_PAGES"),
            "free_memory": _sysconf_bytes("SC_AVPHYS_PAGES"), **software, "cuda": None}


def _sysconf_bytes(name: str) -> int | None:
    try:
        return os.sysconf(name) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not available on this OS
        return None


# ------------------------------------------------------------------ batch sizes
def esm_token_budget_for(free_bytes: int, dtype_bytes: int, n_params: int,
                         hidden_size: int = ESM_HIDDEN) -> int:
    """ESM-2 tokens per batch that fit in `free_bytes` of GPU memory.

    Rule: usable = 0.8 * (free - weights - 1 GiB), where weights = n_params * dtype_bytes and
    1 GiB covers the CUDA context, the cuBLAS workspace and allocator slack; the 0.8 keeps
    room for fragmentation. In inference only one layer's activations are alive at a time.
    Per token a layer holds the residual stream, LayerNorm output, q/k/v/attention output
    (~6 d), the feed-forward input and GELU output (2 x 4d = 8 d) and the next residual:
    ~16 d values, plus attention scores of heads x length, which for 40 heads and proteins
    up to 1024 residues is at most another ~16 d. So we budget 32 * d values per token:
    320 KiB in fp32 and 160 KiB in bf16/fp16 for d = 2560. The result is rounded down to a
    multiple of 256 and clamped to [ESM_BUDGET_MIN, ESM_BUDGET_MAX].
    """
    usable = 0.8 * (free_bytes - n_params * dtype_bytes - _GIB)  # n_params=0: weights loaded
    per_token = 32 * hidden_size * dtype_bytes
    budget = int(max(usable, 0) // per_token) // 256 * 256
    return max(ESM_BUDGET_MIN, min(ESM_BUDGET_MAX, budget))


def dnabert_token_budget_for(free_bytes: int, dtype_bytes: int, floor: int, *,
                             hidden_size: int = 768, heads: int = 12,
                             intermediate_size: int = 3072,
                             row_tokens: int = DNABERT_ROW_TOKENS) -> int:
    """DNABERT-S tokens per batch (rows x longest row) that fit in `free_bytes` of GPU memory,
    with the model already loaded.

    Rule: usable = 0.8 * (free - 1 GiB), as for ESM-2 (`esm_token_budget_for`). Per token:
    - layer activations, one layer alive at a time; the widest moment is the GeGLU: its input
      (d), the gated layer's output (2 I wide), GELU of the gate (I) and the product (I), so
      d + 4 I values in the compute dtype (13,056 for d = 768, I = 3072);
    - the attention bias `DnaBert.attention_bias` builds, [B, heads, T, T] in the compute
      dtype, alive through the whole forward: heads x T values per token (B x T tokens). While
      it is built a float32 copy exists too (4 bytes each), and where SDPA has no fused kernel
      for a float bias, each layer also holds the scores and their softmax (2 x heads x T).
    So per token: dtype_bytes * (d + 4 I + 3 heads T) + 4 heads T bytes, with T = `row_tokens`,
    the longest row provisioned for (87.5 KB in bf16, 150.5 KB in fp32 for DNABERT-S at
    T = 512). A longer row (a chunk size above ~500 bp of hard-to-merge sequence) needs more;
    if it does not fit, the worker's out-of-memory fallback splits the batch. The result is
    rounded down to a multiple of 256 and clamped to [floor, DNABERT_BUDGET_MAX].
    """
    usable = 0.8 * (free_bytes - _GIB)
    attention = heads * row_tokens
    per_token = (dtype_bytes * (hidden_size + 4 * intermediate_size + 3 * attention)
                 + 4 * attention)
    budget = int(max(usable, 0) // per_token) // 256 * 256
    return max(floor, min(DNABERT_BUDGET_MAX, budget))


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device right now; None on a CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
