"""The one worker function. One CPU, one GPU or eight GPUs differ only in how many run it.

A worker loads the three models on its device, then scores work units taken from a queue:
DNABERT-S embeddings, then ESM-2 embeddings, then the classifier. Results go back on another
queue. The same `worker_loop` runs in a thread (one device) or in a spawned process (many).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from virnucpro.batching import WorkUnit, token_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, as plain data (it crosses process boundaries)."""

    dnabert_dir: str
    esm_dir: str
    classifier_path: str | None  # None: embed only (training), features are returned
    device: str
    dtype: str  # "float32" | "bfloat16" | "float16"
    dnabert_budget: int
    esm_budget: int
    threads: int
    save_embeddings: bool = False


@dataclass(frozen=True)
class UnitResult:
    index: int
    scores: np.ndarray  # [n_frames, 2] float32 softmax (others, virus); [n, 0] if embed-only
    embeddings: np.ndarray | None  # [n_frames, dnabert_dim + esm_dim] float32, if asked
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    worker: str = ""


@dataclass
class Models:
    """The loaded models of one worker."""

    dnabert: Any
    dna_tokenizer: Any
    esm: Any
    esm_tokenizer: Any
    classifier: Any
    device: torch.device
    config: WorkerConfig
    oom_logged: bool = False


def load_models(cfg: WorkerConfig) -> Models:
    from virnucpro.classifier import load_classifier
    from virnucpro.dnabert import load_dnabert, load_dnabert_tokenizer
    from virnucpro.esm import load_esm
    from virnucpro.onednn import use_onednn_linears

    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    dnabert = load_dnabert(cfg.dnabert_dir, device=device, dtype=dtype)
    esm, esm_tokenizer = load_esm(cfg.esm_dir, device=device, dtype=dtype)
    if device.type == "cpu":
        keep_freed_buffers()
        use_onednn_linears(dnabert, esm)  # through oneDNN on x86 (see onednn.py)
    classifier = None
    if cfg.classifier_path is not None:
        classifier, _ = load_classifier(cfg.classifier_path)
        # The classifier stays in fp32, as the original ran it.
        classifier = classifier.to(device=device, dtype=torch.float32).eval()
    return Models(dnabert, load_dnabert_tokenizer(cfg.dnabert_dir), esm, esm_tokenizer,
                  classifier, device, cfg)


def _embed_rows(
    embed: Callable[[list[list[int]]], torch.Tensor],
    token_ids: Sequence[Sequence[int]],
    budget: int,
    models: Models,
) -> torch.Tensor:
    """Embed every row in token-budget batches; returns [n, dim] fp32 in input order."""
    pieces: list[tuple[list[int], torch.Tensor]] = []
    for batch in token_batches([len(t) for t in token_ids], budget):
        pieces.extend(_embed_batch(embed, token_ids, batch, models))
    if not pieces:
        return torch.empty(0, 0)
    order = torch.tensor([i for idx, _ in pieces for i in idx])
    stacked = torch.cat([emb for _, emb in pieces])
    out = torch.empty_like(stacked)
    out[order.to(stacked.device, non_blocking=True)] = stacked
    return out


def _embed_batch(
    embed: Callable[[list[list[int]]], torch.Tensor],
    token_ids: Sequence[Sequence[int]],
    batch: list[int],
    models: Models,
) -> list[tuple[list[int], torch.Tensor]]:
    """Embed one batch; on out-of-memory, split it in half (half the budget) and retry both."""
    try:
        return [(batch, embed([list(token_ids[i]) for i in batch]))]
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        if not models.oom_logged:
            log.warning("%s: out of memory on a batch of %d rows; halving its token budget "
                        "and retrying (logged once)", models.device, len(batch))
            models.oom_logged = True
        if models.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return (_embed_batch(embed, token_ids, batch[:half], models)
                + _embed_batch(embed, token_ids, batch[half:], models))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_unit(models: Models, unit: WorkUnit) -> UnitResult:
    """DNABERT-S, then ESM-2, then the classifier, over every frame of one unit."""
    from virnucpro.classifier import classify
    from virnucpro.dnabert import embed_dnabert, tokenize_dna
    from virnucpro.esm import embed_esm, tokenize_protein

    cfg = models.config
    t0 = time.perf_counter()
    dna_ids = tokenize_dna(models.dna_tokenizer, unit.nucleotides)
    dna = _embed_rows(lambda b: embed_dnabert(models.dnabert, b), dna_ids,
                      cfg.dnabert_budget, models)
    _sync(models.device)
    t1 = time.perf_counter()
    prot_ids = tokenize_protein(models.esm_tokenizer, unit.proteins)
    prot = _embed_rows(lambda b: embed_esm(models.esm, b), prot_ids, cfg.esm_budget, models)
    _sync(models.device)
    t2 = time.perf_counter()
    features = torch.cat([dna, prot], dim=1)
    if models.classifier is None:
        scores_np = np.zeros((unit.n_frames, 0), np.float32)
    else:
        scores_np = classify(models.classifier, features).cpu().numpy().astype(np.float32)
    t3 = time.perf_counter()
    seconds = {"dnabert": t1 - t0, "esm": t2 - t1, "classifier": t3 - t2}
    tokens = {"dnabert": sum(map(len, dna_ids)), "esm": sum(map(len, prot_ids))}
    keep = cfg.save_embeddings or models.classifier is None
    emb = features.cpu().numpy() if keep else None
    return UnitResult(unit.index, scores_np, emb, seconds, tokens, str(models.device))


def empty_result(unit: WorkUnit) -> UnitResult:
    """The result of a unit without frames: no model needs to run."""
    return UnitResult(unit.index, np.zeros((0, 2), np.float32), None)


def keep_freed_buffers() -> None:
    """Let glibc reuse big freed buffers instead of unmapping them (glibc only; else a no-op).

    glibc serves blocks above its mmap threshold (at most 32 MiB) straight from the OS and
    unmaps them on free, so every layer of every batch page-faults its widest activations
    in afresh (tens of MiB: DNABERT-S's gated MLP at 2048 tokens is 48 MiB). Raising the
    threshold and the trim threshold keeps them in the heap between uses; whoever scores units
    calls `release_free_memory` after each, so resident memory stays bounded. Process-wide;
    set by `load_models` for CPU workers.
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


def worker_loop(cfg: WorkerConfig, tasks: Any, results: Any) -> None:
    """Load models, then score units from `tasks` until a `None` arrives.

    Puts `("ready", device)` once loaded, `("result", UnitResult)` per unit and
    `("error", message)` if anything fails (the orchestrator turns it into a clean error).
    """
    try:
        torch.set_num_threads(cfg.threads)
        with torch.inference_mode():
            models = load_models(cfg)
            results.put(("ready", cfg.device))
            while (unit := tasks.get()) is not None:
                results.put(("result", score_unit(models, unit)))
                release_free_memory()
    except Exception as exc:  # reported to the orchestrator, which stops the run
        from virnucpro.errors import VirnucproError

        msg = str(exc) if isinstance(exc, VirnucproError) else (
            f"worker on {cfg.device} failed: {type(exc).__name__}: {exc}\n"
            + traceback.format_exc())
        results.put(("error", msg))
