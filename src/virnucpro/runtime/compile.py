"""Regional compilation: each encoder layer of DNABERT-S and ESM-2 through `torch.compile`.

Most of ESM-2's time on a GPU outside its GEMMs is small elementwise kernels (LayerNorms,
residual adds, the rotary rotation, the GELU); compiling fuses them. Compiling whole models
would trace 36 layers into one graph and take minutes, so each layer is compiled on its own:
the layers of one model run the same code with the same shapes, so they share one graph and
the compile cost is one layer's.

Shapes stay few: batch rows and lengths are dynamic (one graph serves every batch), so the
graphs are "no padding" (SDPA free to pick its flash kernel), "with a padding mask", and a
single row (PyTorch specialises a size of 1). Inductor guards on alignment too (a length that
is a multiple of 8 or not), and tunes its kernels for the sizes it first sees, so
`compile_models` warms every class up at a realistic batch size (`WARM_TOKENS`), at lengths
of both kinds, before the first unit; that cost is reported apart (`compile_seconds`).
Inductor keeps what it built in its on-disk cache, so a second run compiles much faster.

Compiled layers give numbers equal to the eager ones only up to float rounding, so a run
that compiles must compile on every worker: a failure is one clear error (`CompileError`),
never a silent eager fall-back. `toolchain_missing` says beforehand what compiling lacks (a
C/C++ compiler, Python's headers, Triton); the engine compiles by default only where
nothing is missing. Inductor runs in its deterministic mode where the installed torch has
one (set per compiled layer, not process-wide).
"""

from __future__ import annotations

import logging
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import VirnucproError

log = logging.getLogger(__name__)

# Warm-up lengths (tokens, specials included): 168 is a 500 bp chunk's protein (166 residues
# and two specials), a multiple of 8; 111 is not. Neither equals a dimension of the models
# (hidden sizes, heads, head widths), which PyTorch would tie such a length to.
WARM_LENGTHS = (168, 111)
# Tokens per warm-up batch: about a real batch on a GPU; on a CPU (where --compile is opt-in
# and batches are a few thousand tokens) enough to leave the one-row and tiny cases behind.
WARM_TOKENS = {"cuda": 16384, "cpu": 1024}


class CompileError(VirnucproError):
    """Compiling was asked for (or recorded by the run being resumed) and cannot be done."""


def toolchain_missing(device_type: str) -> str | None:
    """What compiling on this device type lacks, as one phrase, or None: inductor builds C++
    (CPU) or Triton kernels with a C compiler (CUDA), both against Python's headers."""
    missing = []
    compilers = ("c++", "g++", "clang++") if device_type == "cpu" else ("cc", "gcc", "clang")
    if not any(shutil.which(c) for c in compilers):
        missing.append(f"a {'C++' if device_type == 'cpu' else 'C'} compiler "
                       f"({', '.join(compilers)} not on PATH)")
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").is_file():
        missing.append(f"Python's headers ({include or '?'}/Python.h)")
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            missing.append("Triton")
    return "; ".join(missing) or None


def inductor_options() -> dict[str, Any]:
    """Options for each compiled layer: inductor's deterministic mode if this torch has it."""
    from torch._inductor import config

    return {"deterministic": True} if hasattr(config, "deterministic") else {}


def compile_models(models: Any, deadline: float | None = None) -> dict[str, Any]:
    """Compile the encoder layers of `models.dnabert` and `models.esm` in place and build every
    graph a run needs (warm-ups stop at `deadline`, a `time.perf_counter()` value). Returns
    `{"compiled": True, "compile_seconds": float}`; raises `CompileError` (one line) when the
    toolchain is missing or compiling fails, with the eager layers put back."""
    t0 = time.perf_counter()
    missing = toolchain_missing(models.device.type)
    if missing:
        raise CompileError(f"cannot compile the layers on {models.device}: no {missing}; "
                           "install it or run with --no-compile")
    nets = (models.dnabert, models.esm)
    eager = [list(net.encoder.layer) for net in nets]
    options = inductor_options()
    try:
        for net in nets:
            layers = net.encoder.layer
            for i, layer in enumerate(layers):
                layers[i] = torch.compile(layer, dynamic=True, options=options)
        warm_up(models, deadline)
    except Exception as exc:  # any compiler failure: one line, the eager layers back
        for net, layers in zip(nets, eager, strict=True):
            for i, layer in enumerate(layers):
                net.encoder.layer[i] = layer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompileError(f"compiling the layers on {models.device} failed "
                           f"({type(exc).__name__}: {first[:200]}); run with --no-compile "
                           "to score with the eager layers") from exc
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s: layers compiled in %.1f s", models.device, seconds)
    return {"compiled": True, "compile_seconds": seconds, "inductor": options}


def warm_batches(tokens: int) -> list[tuple[int, ...]]:
    """Row lengths of the warm-up batches: for each warm length, equal rows (no mask), the
    same with one shorter row (a padding mask), and a single row."""
    out = []
    for length in WARM_LENGTHS:
        rows = max(tokens // length, 3)
        out += [(length,) * rows, (length,) * (rows - 1) + (length // 2 + 1,), (length,)]
    return out


def warm_up(models: Any, deadline: float | None = None) -> None:
    """Embed made-up rows through both models in each shape class a run meets."""
    from virnucpro.models.dnabert import CLS_ID, SEP_ID, embed_dnabert
    from virnucpro.models.esm import embed_esm, tokenize_protein

    protein = tokenize_protein(models.esm_tokenizer, ["ACDEFGHIKLMNPQRSTVWY"])[0][1:-1]
    first, last = tokenize_protein(models.esm_tokenizer, ["A"])[0][::2]

    def dna(n: int) -> list[int]:
        return [CLS_ID, *[5 + i % 20 for i in range(n - 2)], SEP_ID]

    def prot(n: int) -> list[int]:
        return [first, *[protein[i % len(protein)] for i in range(n - 2)], last]

    batches = warm_batches(WARM_TOKENS.get(models.device.type, WARM_TOKENS["cpu"]))
    for lengths in batches:
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError("the time for compiling ran out before every graph was built")
        embed_dnabert(models.dnabert, [dna(n) for n in lengths])
        embed_esm(models.esm, [prot(n) for n in lengths])
    if models.device.type == "cuda":
        torch.cuda.synchronize(models.device)
