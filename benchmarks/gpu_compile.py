"""gpu_check's `compile` section: each model eager, then with its layers compiled the way a
worker compiles them (`virnucpro.runtime.compile.compile_models`), at the budget a worker
would use on this device, on 500 bp chunk frames.

Reports the compile time (warm-up included: every graph a run needs), tokens/s and MFU
before and after, and how far the compiled embeddings are from the eager ones.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import common as C
import torch

AGREE_ROWS = 32  # frames embedded eager and compiled, to compare


def section_compile(plan: Any, state: dict[str, Any], deadline: float,
                    budgets: dict[str, int]) -> dict[str, Any]:
    """`state` holds the models left by the dnabert and esm sections, the tokenizers and the
    frame pools; `budgets` the DNABERT-S and ESM-2 budgets a worker would choose here."""
    from virnucpro.models.dnabert import embed_dnabert, tokenize_dna
    from virnucpro.models.esm import embed_esm, tokenize_protein
    from virnucpro.runtime.compile import compile_models

    frames = next(iter(state["pools"].values()))  # the 500 bp chunk workload
    ids = {"dnabert": tokenize_dna(state["tokenizer"], [f.nucleotide for f in frames]),
           "esm": tokenize_protein(state["esm_tokenizer"], [f.protein for f in frames])}
    nets = {"dnabert": state["dnabert_model"], "esm": state["esm_model"]}
    embeds = {"dnabert": embed_dnabert, "esm": embed_esm}
    shapes = {"dnabert": plan.dnabert, "esm": plan.esm}

    def measure(name: str) -> dict[str, Any]:
        timing = C.embed_throughput(lambda b: embeds[name](nets[name], b), ids[name],
                                    budgets[name], plan.device, plan.min_seconds,
                                    plan.max_seconds, deadline)
        return C.throughput_row(timing, C.encoder_linear_weights(nets[name]), shapes[name],
                                state["peak"])

    def reference_rows(name: str) -> torch.Tensor:
        """One batch of the first frames: what compiled and eager embeddings are compared on
        (a throughput pass may be cut short by the deadline)."""
        with torch.inference_mode():
            return embeds[name](nets[name], ids[name][:AGREE_ROWS]).float()

    out: dict[str, Any] = {"budgets": budgets}
    eager = {}
    for name in nets:
        out[f"{name}_eager"], eager[name] = measure(name), reference_rows(name)
    models = SimpleNamespace(dnabert=nets["dnabert"], esm=nets["esm"], device=plan.device,
                             esm_tokenizer=state["esm_tokenizer"])
    t0 = time.perf_counter()
    out["report"] = compile_models(models, deadline=deadline)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  compile_models: {out['report']} ({out['wall_seconds']} s)")
    if not out["report"]["compiled"]:
        return out
    for name in nets:
        emb = reference_rows(name)
        row = measure(name)
        cos = torch.nn.functional.cosine_similarity(emb, eager[name]).min().item()
        row["min_cosine_vs_eager"] = cos
        row["max_abs_diff_vs_eager"] = (emb - eager[name]).abs().max().item()
        out[f"{name}_compiled"] = row
        before = out[f"{name}_eager"]
        print(f"  {name} at {budgets[name]} tokens: eager {before['tokens_per_s']:.0f} "
              f"tokens/s, MFU {C.fmt_pct(before['mfu'])}; compiled {row['tokens_per_s']:.0f} "
              f"tokens/s, MFU {C.fmt_pct(row['mfu'])}; min cosine vs eager on "
              f"{len(emb)} frames {cos:.6f}")
    return out
