"""The one worker. One CPU, one GPU or eight GPUs differ only in how many processes run it.

A worker is a child process (`python -m virnucpro.runtime.worker`) that owns one device. It
settles, with the parent, how the run computes (`serve.serve`), loads the three models on its
device (`TorchBackend`), then scores the units the parent sends: DNABERT-S embeddings, then
ESM-2 embeddings, then the classifier (`score_unit`); a predict unit is chunked, translated
and rendered around that (`serve.process_unit`). Everything process-wide (threads, malloc,
oneDNN, the CUDA device) is set here, in the worker's own process; the caller's process is
left as it was, and never imports torch.
"""

from __future__ import annotations

import itertools
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from virnucpro.runtime.batching import WorkUnit, token_batches
from virnucpro.runtime.devices import (
    DNABERT_BUDGET_BF16,
    DNABERT_BUDGET_DEFAULT,
    ESM_BUDGET_CPU,
    dnabert_token_budget_for,
    esm_token_budget_for,
    free_memory,
    torch_dtype,
)
from virnucpro.runtime.protocol import Settings, UnitResult, WorkerSpec

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The loaded models of one worker, and the settings it scores with."""

    dnabert: Any
    dna_tokenizer: Any
    esm: Any
    esm_tokenizer: Any
    classifier: Any
    device: torch.device
    spec: WorkerSpec
    settings: Settings
    oom_logged: bool = False
    cpu_linears: dict[str, Any] | None = None  # the kernels choose_cpu_linears picked (cpu.py)


def load_models(spec: WorkerSpec, settings: Settings) -> Models:
    """The three models on the worker's device, in the run's dtype (the classifier in fp32).
    On a CPU the linears go to the faster of MKL and oneDNN, timed here (`choose_cpu_linears`);
    with `settings.compile` they stay PyTorch's: the compiler picks their kernels."""
    from virnucpro.models.classifier import load_classifier
    from virnucpro.models.dnabert import load_dnabert, load_dnabert_tokenizer
    from virnucpro.models.esm import load_esm
    from virnucpro.runtime.cpu import choose_cpu_linears

    device = torch.device(spec.device)
    dtype = torch_dtype(settings.dtype)
    dnabert = load_dnabert(spec.dnabert_dir, device=device, dtype=dtype)
    esm, esm_tokenizer = load_esm(spec.esm_dir, device=device, dtype=dtype)
    linears = (choose_cpu_linears({"dnabert": dnabert, "esm": esm})
               if device.type == "cpu" and not settings.compile else None)
    classifier = None
    if spec.classifier_path is not None:
        classifier, _ = load_classifier(spec.classifier_path)
        # The classifier stays in fp32, as the original ran it.
        classifier = classifier.to(device=device, dtype=torch.float32).eval()
    return Models(dnabert, load_dnabert_tokenizer(spec.dnabert_dir), esm, esm_tokenizer,
                  classifier, device, spec, settings, cpu_linears=linears)


def prepare_models(spec: WorkerSpec, settings: Settings) -> tuple[Models, dict[str, Any]]:
    """`load_models`, then compile their layers if the run compiles; returns the models and
    what loading reported: the CPU linears' kernels (`cpu_linears`, on a CPU without
    compiling) and what compiling reported (when the run compiles)."""
    from virnucpro.runtime.compile import compile_models

    models = load_models(spec, settings)
    report = {"cpu_linears": models.cpu_linears} if models.cpu_linears else {}
    return models, report | (compile_models(models) if settings.compile else {})


def propose_budgets(models: Models) -> dict[str, int]:
    """The batch budgets this worker's device can take, measured once every model of the run
    is loaded (workers sharing a GPU split its free memory)."""
    dtype = torch_dtype(models.settings.dtype)
    dna = DNABERT_BUDGET_BF16 if dtype == torch.bfloat16 else DNABERT_BUDGET_DEFAULT
    free = free_memory(models.device)
    if free is None:
        return {"dnabert_budget": dna, "esm_budget": ESM_BUDGET_CPU}
    itemsize = torch.empty((), dtype=dtype).element_size()
    hidden = int(models.esm.config.hidden_size)
    # The weights are already loaded, so they are not subtracted again (n_params=0).
    esm = esm_token_budget_for(free // models.spec.share, itemsize, 0, hidden)
    cfg = models.dnabert.config  # the CPU figure above is the floor on a GPU
    dna = dnabert_token_budget_for(free // models.spec.share, itemsize, dna,
                                   hidden_size=cfg.hidden_size, heads=cfg.num_attention_heads,
                                   intermediate_size=cfg.intermediate_size)
    return {"dnabert_budget": dna, "esm_budget": esm}


# ------------------------------------------------------------------ scoring
def _embed_rows(
    embed: Callable[[list[list[int]]], torch.Tensor],
    token_ids: Sequence[Sequence[int]],
    budget: int,
    models: Models,
) -> torch.Tensor:
    """Embed every row in token-budget batches; returns [n, dim] fp32 in input order."""
    pieces: list[tuple[list[int], torch.Tensor]] = []
    for batch in token_batches([len(t) for t in token_ids], budget):
        pieces.extend(embed_batch(embed, token_ids, batch, models))
    if not pieces:
        return torch.empty(0, 0)
    order = torch.tensor([i for idx, _ in pieces for i in idx])
    stacked = torch.cat([emb for _, emb in pieces])
    out = torch.empty_like(stacked)
    out[order.to(stacked.device, non_blocking=True)] = stacked
    return out


def embed_batch(
    embed: Callable[[list[list[int]]], torch.Tensor],
    token_ids: Sequence[Sequence[int]],
    batch: list[int],
    models: Models,
) -> list[tuple[list[int], torch.Tensor]]:
    """Embed one batch; on out-of-memory, split it in half and embed both halves.

    The retry happens after the `except` block has ended: inside it, the failed attempt's
    traceback would keep every activation it had allocated alive through the retries."""
    try:
        return [(batch, embed([list(token_ids[i]) for i in batch]))]
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
    if not models.oom_logged:
        log.warning("%s: out of memory on a batch of %d rows; splitting such batches in half "
                    "(logged once)", models.device, len(batch))
        models.oom_logged = True
    if models.device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(batch) // 2
    return (embed_batch(embed, token_ids, batch[:half], models)
            + embed_batch(embed, token_ids, batch[half:], models))


def padded_tokens(token_ids: Sequence[Sequence[int]], budget: int) -> int:
    """Tokens the model computes over, padding included (rows x longest row of each batch
    `_embed_rows` makes): MFU counts the real ones, this shows what padding costs."""
    lengths = [len(t) for t in token_ids]
    return sum(len(b) * lengths[b[0]] for b in token_batches(lengths, budget))


class StageClock:
    """Where each stage of a unit starts and ends: CUDA events on a GPU, so that timing waits
    for nothing inside a unit (the host queues the next stage while the GPU runs this one);
    the host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks (on a GPU, waits for the last one)."""
        pairs = itertools.pairwise(self.marks)
        if not self.cuda:
            return [b - a for a, b in pairs]
        self.marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in pairs]


def score_unit(models: Models, unit: WorkUnit) -> UnitResult:
    """DNABERT-S, then ESM-2, then the classifier, over every frame of one unit."""
    from virnucpro.models.classifier import classify
    from virnucpro.models.dnabert import embed_dnabert, tokenize_dna
    from virnucpro.models.esm import embed_esm, tokenize_protein

    s = models.settings
    clock = StageClock(models.device)
    # Host work first: the first mark goes just before the first forward, so tokenizing is
    # counted neither as DNABERT-S time nor as the device being busy.
    dna_ids = tokenize_dna(models.dna_tokenizer, unit.nucleotides)
    prot_ids = tokenize_protein(models.esm_tokenizer, unit.proteins)
    clock.mark()
    dna = _embed_rows(lambda b: embed_dnabert(models.dnabert, b), dna_ids,
                      s.dnabert_budget, models)
    clock.mark()
    prot = _embed_rows(lambda b: embed_esm(models.esm, b), prot_ids, s.esm_budget, models)
    clock.mark()
    features = torch.cat([dna, prot], dim=1)
    if models.classifier is None:
        scores = torch.zeros((unit.n_frames, 0))
    else:
        scores = classify(models.classifier, features)
    clock.mark()
    scores_np = scores.cpu().numpy().astype(np.float32)  # the unit's one wait for the device
    seconds = dict(zip(("dnabert", "esm", "classifier"), clock.seconds(), strict=True))
    tokens = {"dnabert": sum(map(len, dna_ids)), "esm": sum(map(len, prot_ids)),
              "dnabert_padded": padded_tokens(dna_ids, s.dnabert_budget),
              "esm_padded": padded_tokens(prot_ids, s.esm_budget)}
    keep = models.spec.save_embeddings or models.classifier is None
    emb = features.cpu().numpy() if keep else None
    peak = torch.cuda.max_memory_allocated(models.device) if models.device.type == "cuda" \
        else None
    return UnitResult(unit.index, scores_np, emb, seconds, tokens, str(models.device), peak)


# ------------------------------------------------------------------ the process
class TorchBackend:
    """The real models behind `serve.serve`: one device, the run's settings."""

    def __init__(self, spec: WorkerSpec) -> None:
        from virnucpro.runtime.cpu import apply_process_settings

        self.spec = spec
        self.models: Models | None = None
        claim_device(spec.device)
        apply_process_settings(torch.device(spec.device).type, spec.threads)

    def probe(self) -> dict[str, Any]:
        from virnucpro.runtime.devices import describe_device

        return describe_device(torch.device(self.spec.device))

    def load(self, settings: Settings) -> dict[str, Any]:
        # Provisional budgets until the parent has every worker's proposal.
        with torch.inference_mode():
            self.models, report = prepare_models(self.spec, settings)
        return report

    def propose(self) -> dict[str, int]:
        assert self.models is not None
        return propose_budgets(self.models)

    def go(self, settings: Settings) -> None:
        assert self.models is not None
        self.models.settings = settings

    def score(self, unit: WorkUnit) -> UnitResult:
        assert self.models is not None
        with torch.inference_mode():
            return score_unit(self.models, unit)

    def after_unit(self) -> None:
        from virnucpro.runtime.cpu import release_free_memory

        release_free_memory()

    def failure(self, exc: BaseException) -> str:
        return failure_line(exc, self.spec.device)


def claim_device(device: str) -> None:
    """Make a CUDA `device` this process's current device, before any CUDA work: otherwise
    the stage clock's events go on GPU 0's stream (on `cuda:N`, timings would be host enqueue
    times) and pinned memory creates a context on GPU 0 in every worker."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)


def failure_line(exc: BaseException, device: str) -> str:
    """One line for what stopped a worker: our own errors as they are; anything else with
    its type (the traceback goes to the debug log of the worker)."""
    from virnucpro.errors import VirnucproError

    if isinstance(exc, VirnucproError):
        return str(exc)
    log.debug("worker on %s failed:\n%s", device, traceback.format_exc())
    if isinstance(exc, torch.OutOfMemoryError):
        return (f"the worker on {device} ran out of memory on a single row; use smaller "
                "--esm-batch-size/--dnabert-batch-size or another device")
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"the worker on {device} failed: {type(exc).__name__}: {first}"

