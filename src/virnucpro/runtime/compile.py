"""Regional compilation: each encoder layer of DNABERT-S and ESM-2 through `torch.compile`.

Most of ESM-2's time on a GPU outside its GEMMs is small elementwise kernels (LayerNorms,
residual adds, the rotary rotation, the GELU); compiling fuses them. Compiling whole models
would trace 36 layers into one graph and take minutes, so each layer is compiled on its own:
the layers of one model run the same code with the same shapes, so they share one graph and
the compile cost is one layer's.

Shapes stay few: batch rows and lengths are dynamic (one graph serves every batch), so the
graphs are "no padding" (SDPA free to pick its flash kernel), "with a padding mask", and a
single row (PyTorch specialises a size of 1). `compile_models` builds all of them at start-up
with a warm-up on made-up tokens, so their cost is paid before the first unit and is reported
apart (`compile_seconds`). Inductor keeps what it built in its on-disk cache (by default under
the system's temporary directory), so a second run on the same machine compiles much faster.

Whatever fails while compiling (no C++ compiler or Triton, an unsupported GPU) leaves the
worker on its eager layers with one warning: the numbers are the same up to float rounding.
Set in the worker's own process only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

# Warm-up lengths that equal no dimension of the models (hidden sizes, heads, head widths):
# PyTorch would otherwise tie such a length to that dimension and compile again for others.
_WARM_LENGTHS = (37, 29)
_WARM_ROWS = 3


def compile_models(models: Any) -> dict[str, Any]:
    """Compile the encoder layers of `models.dnabert` and `models.esm` in place and build every
    graph a run needs. Returns `{"compiled": bool, "compile_seconds": float}`, plus
    `compile_error` (one line) when it failed and the eager layers were put back."""
    t0 = time.perf_counter()
    nets = (models.dnabert, models.esm)
    eager = [list(net.encoder.layer) for net in nets]
    try:
        for net in nets:
            layers = net.encoder.layer
            for i, layer in enumerate(layers):
                layers[i] = torch.compile(layer, dynamic=True)
        warm_up(models)
    except Exception as exc:  # any compiler failure: run eager instead
        for net, layers in zip(nets, eager, strict=True):
            for i, layer in enumerate(layers):
                net.encoder.layer[i] = layer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s: torch.compile failed, running uncompiled (%s: %s)",
                    models.device, type(exc).__name__, first[:200])
        return {"compiled": False, "compile_seconds": round(time.perf_counter() - t0, 2),
                "compile_error": f"{type(exc).__name__}: {first[:200]}"}
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s: layers compiled in %.1f s", models.device, seconds)
    return {"compiled": True, "compile_seconds": seconds}


def warm_up(models: Any) -> None:
    """Embed made-up rows through both models in each shape class a run meets: equal lengths,
    mixed lengths (a padding mask) and a single row."""
    from virnucpro.models.dnabert import CLS_ID, SEP_ID, embed_dnabert
    from virnucpro.models.esm import embed_esm, tokenize_protein

    long, short = _WARM_LENGTHS
    dna = [[CLS_ID, *[5 + i % 20 for i in range(n - 2)], SEP_ID] for n in (long, short)]
    protein = tokenize_protein(models.esm_tokenizer, ["ACDEFGHIKLMNPQRSTVWY" * 2])[0]
    prot = [protein[:long - 1] + protein[-1:], protein[:short - 1] + protein[-1:]]
    for embed, net, (a, b) in ((embed_dnabert, models.dnabert, dna),
                               (embed_esm, models.esm, prot)):
        for rows in ([a] * _WARM_ROWS, [a] * (_WARM_ROWS - 1) + [b], [a]):
            embed(net, rows)
    if models.device.type == "cuda":
        torch.cuda.synchronize(models.device)
