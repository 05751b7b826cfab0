"""`virnucpro train`: a classifier for any chunk size, from viral and other FASTA files.

1. select: chunk and translate every input exactly as predict does; optionally keep only the
   frames whose protein lies inside a known CDS protein (as the original's training set did);
   balance the classes by down-sampling the larger one with a fixed seed. Only one keep-flag
   per frame is held.
2. embed: the kept frames, as work units, go through the same engine and worker as predict,
   in embed-only mode. Every unit is saved in a cache directory named by a fingerprint of
   everything that changes the features (inputs, chunk size, backbones, dtype, batch budgets,
   unit size, balancing seed), so a killed run resumes and a later train with another recipe
   reuses them; once the cache is complete no model is loaded at all.
3. fit: the original's recipe (train.py of VirNucPro): MLP with BatchNorm and dropout,
   SGD with momentum, StepLR, batch 32, early stopping on validation loss, 90/10 split.
4. save: the classifier in our format, with backbones, chunk size, recipe, metrics and data
   hashes in classifier.json, and the per-epoch history in history.tsv.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro import __version__, outputs
from virnucpro.batching import WorkUnit, iter_units
from virnucpro.classifier import INFO_FILE, WEIGHTS_FILE, ClassifierInfo, MLPClassifier
from virnucpro.engine import RunStats, finished_units, load_unit, run_units
from virnucpro.errors import InputError, OutputError
from virnucpro.evaluate import binary_metrics
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.predict import (
    PredictConfig,
    _input_record,
    _model_record,
    _resolve_models,
    _worker_configs,
)
from virnucpro.reader import check_inputs, read_records
from virnucpro.worker import UnitResult, WorkerConfig, empty_result

log = logging.getLogger(__name__)

VIRUS, OTHER = 1, 0  # class indices, as classifier.CLASS_NAMES = ("others", "virus")
COMPLETE_FILE = "complete.json"  # in a features cache: every unit is there


@dataclass(frozen=True)
class Recipe:
    """How the MLP is trained. Defaults are the original's train.py."""

    hidden_dim: int = 512
    batchnorm: bool = True
    dropout: float = 0.5
    lr: float = 2e-4
    momentum: float = 0.9
    lr_step: int = 10
    lr_gamma: float = 0.85
    batch_size: int = 32
    patience: int = 5
    max_epochs: int = 200  # the original's num_epochs
    val_fraction: float = 0.1
    split_by: str = "frame"  # "frame" (the original's) or "sequence" (no frame of a
    # validation sequence is trained on)
    seed: int = 42  # the original's random.seed(42); also picks the balanced frames


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a train run, as given on the command line (or by a caller)."""

    viral: tuple[str, ...]
    other: tuple[str, ...]
    model_dir: Path
    chunk_size: int = 500
    cds_proteins: tuple[str, ...] = ()
    recipe: Recipe = field(default_factory=Recipe)
    features_dir: Path | None = None  # None: MODEL_DIR/features
    dnabert: str = "zhihan1996/DNABERT-S"
    esm: str = "facebook/esm2_t36_3B_UR50D"
    models_dir: Path | None = None
    device: str = "auto"
    gpus: str | None = None
    workers: int | None = None
    dnabert_budget: int | None = None
    esm_budget: int | None = None
    precision: str = "auto"
    threads: int | None = None
    unit_frames: int = 2048
    offline: bool = False
    progress: bool = True
    force: bool = False
    command_line: tuple[str, ...] = field(default_factory=tuple)

    def embed_config(self) -> PredictConfig:
        """The embedding half of this run, in the form predict's planning takes."""
        return PredictConfig(
            inputs=(*self.viral, *self.other), output_dir=self.model_dir,
            chunk_size=self.chunk_size, dnabert=self.dnabert, esm=self.esm,
            models_dir=self.models_dir, device=self.device, gpus=self.gpus,
            workers=self.workers, dnabert_budget=self.dnabert_budget,
            esm_budget=self.esm_budget, precision=self.precision, threads=self.threads,
            unit_frames=self.unit_frames, offline=self.offline, progress=self.progress)


# ------------------------------------------------------------------ known CDS proteins
class CdsIndex:
    """Answers "is this protein inside some known CDS protein?" without scanning them all.

    Every K-mer starting at a multiple of STEP in each CDS protein is indexed. A query of at
    least K + STEP - 1 residues that occurs in a protein covers one of those K-mers at an
    offset below STEP, so trying its first STEP K-mers finds every candidate; shorter
    queries fall back to one scan of all proteins.
    """

    K, STEP = 8, 8

    def __init__(self, proteins: Iterable[str]) -> None:
        self.proteins = sorted({p.upper().rstrip("*") for p in proteins} - {""})
        self.index: dict[str, list[int]] = {}
        for i, p in enumerate(self.proteins):
            for s in range(0, len(p) - self.K + 1, self.STEP):
                hits = self.index.setdefault(p[s:s + self.K], [])
                if not hits or hits[-1] != i:
                    hits.append(i)
        self._joined = "\n".join(self.proteins)  # no protein holds '\n'

    def __len__(self) -> int:
        return len(self.proteins)

    def __contains__(self, query: object) -> bool:
        if not isinstance(query, str) or not query:
            return False
        if len(query) < self.K + self.STEP - 1:
            return query in self._joined
        proteins = self.proteins
        return any(query in proteins[i] for off in range(self.STEP)
                   for i in self.index.get(query[off:off + self.K], ()))


def read_cds_proteins(paths: Sequence[str]) -> CdsIndex:
    """The proteins of FASTA files (plain or gzip); a trailing '*' is dropped."""
    import dnaio

    proteins: list[str] = []
    for path in paths:
        try:
            with dnaio.open(path) as reader:
                proteins.extend(rec.sequence for rec in reader)
        except (OSError, UnicodeDecodeError, dnaio.exceptions.UnknownFileFormat,
                dnaio.exceptions.FileFormatError) as exc:
            raise InputError(f"{path}: cannot read CDS proteins ({exc})") from None
    index = CdsIndex(proteins)
    if not len(index):
        raise InputError(f"{', '.join(paths)}: no protein records found")
    return index


# ------------------------------------------------------------------ selecting frames
def check_train_inputs(cfg: TrainConfig) -> None:
    """Fail before any work on inputs train cannot use."""
    for flag, paths in (("--viral", cfg.viral), ("--other", cfg.other)):
        if not paths:
            raise InputError(f"no {flag} input given")
        if "-" in paths:
            raise InputError(f"{flag} -: train reads its inputs twice, so stdin cannot be used")
    both = set(cfg.viral) & set(cfg.other)
    if both:
        raise InputError(f"{sorted(both)[0]}: given as both --viral and --other")
    check_inputs([*cfg.viral, *cfg.other, *cfg.cds_proteins])
    if cfg.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {cfg.chunk_size}")


def labelled_records(cfg: TrainConfig) -> Iterator[tuple[RecordFrames, int]]:
    """Every input record, chunked and translated as predict does, with its class."""
    viral = set(cfg.viral)
    for rf in iter_record_frames(read_records([*cfg.viral, *cfg.other]), cfg.chunk_size):
        yield rf, VIRUS if rf.record.source in viral else OTHER


@dataclass(frozen=True)
class Selection:
    keep: np.ndarray  # bool per frame, in input order: the frames to train on
    counts: dict[str, dict[str, int]]  # frames per class: all, in a CDS, used


def select_frames(records: Iterable[tuple[RecordFrames, int]], cds: CdsIndex | None,
                  seed: int) -> Selection:
    """Keep-flags: frames inside a known CDS protein (when given), then classes balanced by
    down-sampling the larger one (a seeded random choice)."""
    kept, classes = bytearray(), bytearray()
    for rf, label in records:
        for frames in rf.frames:
            for f in frames:
                kept.append(cds is None or f.protein in cds)
                classes.append(label)
    keep = np.frombuffer(bytes(kept), np.uint8).astype(bool)
    cls = np.frombuffer(bytes(classes), np.uint8)
    idx = {c: np.flatnonzero(keep & (cls == c)) for c in (VIRUS, OTHER)}
    names = {VIRUS: "viral", OTHER: "other"}
    for c, where in idx.items():
        if not where.size:
            why = " inside a --cds-proteins protein" if cds is not None else ""
            raise InputError(f"no {names[c]} frame{why} to train on")
    n = min(len(v) for v in idx.values())
    rng = np.random.default_rng(seed)
    for where in idx.values():
        keep[rng.choice(where, size=len(where) - n, replace=False)] = False
    counts = {
        "all": {names[c]: int(np.sum(cls == c)) for c in (VIRUS, OTHER)},
        "in_cds": {names[c]: len(v) for c, v in idx.items()} if cds is not None else {},
        "used": {names[c]: n for c in (VIRUS, OTHER)},
    }
    return Selection(keep, counts)


def kept_records(records: Iterable[tuple[RecordFrames, int]],
                 keep: np.ndarray) -> Iterator[RecordFrames]:
    """The records again, each with only its kept frames; records left empty are dropped."""
    i = 0
    flags = keep.tolist()
    changed = InputError("the inputs changed while train was reading them")
    for rf, _ in records:
        frames = []
        for fs in rf.frames:
            if i + len(fs) > len(flags):
                raise changed
            frames.append([f for j, f in enumerate(fs, i) if flags[j]])
            i += len(fs)
        if any(frames):
            yield RecordFrames(rf.record, rf.chunks, frames, rf.skipped)
    if i != len(flags):
        raise changed


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class EmbedPlan:
    """Which features a run needs and where they are cached, settled before any model loads."""

    workers: tuple[WorkerConfig, ...]
    models: dict[str, dict[str, Any]]
    inputs: dict[str, list[dict[str, Any]]]
    params: dict[str, Any]
    fingerprint: str
    cache: Path


def plan_embedding(cfg: TrainConfig) -> EmbedPlan:
    """Resolve backbones and devices, identify the inputs and fingerprint the features."""
    ecfg = cfg.embed_config()
    models = _resolve_models(ecfg, cfg.chunk_size, classifier=False)
    workers = _worker_configs(ecfg, models)
    w0 = workers[0]
    # As in predict: dtype, device kind, batch budgets and unit size can change features.
    params = {"chunk_size": cfg.chunk_size, "dtype": w0.dtype,
              "device_type": w0.device.split(":")[0], "dnabert_budget": w0.dnabert_budget,
              "esm_budget": w0.esm_budget, "unit_frames": cfg.unit_frames,
              "balance_seed": cfg.recipe.seed}
    model_records = {k: _model_record(m) for k, m in models.items()}
    inputs = {"viral": [_input_record(p) for p in cfg.viral],
              "other": [_input_record(p) for p in cfg.other],
              "cds_proteins": [_input_record(p) for p in cfg.cds_proteins]}
    identity = {"params": params,
                "inputs": {k: [(i["size"], i["sha256"]) for i in v] for k, v in inputs.items()},
                "models": {k: m["sha256"] for k, m in model_records.items()}}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    root = cfg.features_dir or cfg.model_dir / outputs.FEATURES_DIR
    return EmbedPlan(workers, model_records, inputs, params, fingerprint,
                     Path(root) / fingerprint[:16])


# ------------------------------------------------------------------ embedding
@dataclass
class Features:
    """The training frames: features, classes and where each came from."""

    x: np.ndarray  # [n, dnabert_dim + esm_dim] float32
    y: np.ndarray  # [n] int64, VIRUS or OTHER
    frame_ids: list[str]
    seq_ids: list[str]
    units: int = 0
    units_embedded: int = 0  # scored by a model in this run (the rest came from the cache)
    stats: RunStats = field(default_factory=RunStats)


class _Collector:
    """Puts each unit's features, in unit order, into one preallocated array."""

    def __init__(self, n: int, viral: set[str]) -> None:
        self.f = Features(np.empty((0, 0), np.float32), np.empty(n, np.int64), [], [])
        self.n, self.viral, self.pos = n, viral, 0

    def __call__(self, group: list[RecordFrames], result: UnitResult) -> None:
        frames = [(f.id, rf) for rf in group for fs in rf.frames for f in fs]
        self.f.units += 1
        self.f.units_embedded += bool(result.worker)
        if not frames:
            return
        x = result.embeddings
        assert x is not None and len(x) == len(frames), "features do not match the frames"
        if self.pos == 0:
            self.f.x = np.empty((self.n, x.shape[1]), np.float32)
        end = self.pos + len(frames)
        self.f.x[self.pos:end] = x
        for i, (fid, rf) in enumerate(frames, self.pos):
            self.f.y[i] = VIRUS if rf.record.source in self.viral else OTHER
            self.f.frame_ids.append(fid)
            self.f.seq_ids.append(rf.record.id)
        self.pos = end


def _cache_state(plan: EmbedPlan) -> dict[str, Any] | None:
    """The cache's complete.json when every unit is there, else None; checks the cache is
    the one this fingerprint names."""
    state, complete = plan.cache / "state.json", plan.cache / COMPLETE_FILE
    try:
        recorded = json.loads(state.read_text())
    except FileNotFoundError:
        (plan.cache / "units").mkdir(parents=True, exist_ok=True)
        outputs.write_json(state, {"fingerprint": plan.fingerprint, "params": plan.params,
                                   "inputs": plan.inputs, "models": plan.models})
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{state}: unreadable features cache ({exc}); delete "
                          f"{plan.cache} to recompute") from None
    if recorded.get("fingerprint") != plan.fingerprint:
        raise OutputError(f"{plan.cache}: holds features of other inputs; delete it")
    return json.loads(complete.read_text()) if complete.is_file() else None


def embed_frames(cfg: TrainConfig, plan: EmbedPlan, selection: Selection) -> Features:
    """Features of the kept frames: from the cache where saved, else from the workers."""
    n = int(selection.keep.sum())
    collect = _Collector(n, set(cfg.viral))
    units = iter_units(kept_records(labelled_records(cfg), selection.keep), cfg.unit_frames)
    complete = _cache_state(plan)
    if complete is not None:
        log.info("all features are in the cache %s; no model is loaded", plan.cache)
        for unit, group in units:
            collect(group, _cached(plan.cache, unit))
        stats = RunStats()
    else:
        done = finished_units(plan.cache)
        if done:
            log.info("features cache %s: %d units already done", plan.cache, len(done))
        stats = run_units(plan.workers, units, state=plan.cache, done=done, consume=collect,
                          progress=cfg.progress)
        outputs.write_json(plan.cache / COMPLETE_FILE, {"units": collect.f.units, "frames": n})
    if collect.pos != n:
        raise OutputError(f"{plan.cache}: {collect.pos} cached frames, expected {n}; delete "
                          "it to recompute")
    collect.f.stats = stats
    return collect.f


def _cached(cache: Path, unit: WorkUnit) -> UnitResult:
    return load_unit(cache, unit) if unit.n_frames else empty_result(unit)


# ------------------------------------------------------------------ fitting
def split_indices(seq_ids: Sequence[str], recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) frame indices, each sorted: a seeded shuffle of frames (the
    original's), or of sequences so that no sequence is on both sides."""
    n = len(seq_ids)
    n_val = int(n * recipe.val_fraction)  # the original: int(total_size * 0.1)
    rng = np.random.default_rng(recipe.seed)
    if recipe.split_by == "frame":
        perm = rng.permutation(n)
        val = np.sort(perm[:n_val])
    elif recipe.split_by == "sequence":
        names, inverse = np.unique(np.asarray(seq_ids, dtype=str), return_inverse=True)
        order = rng.permutation(len(names))
        filled = np.cumsum(np.bincount(inverse, minlength=len(names))[order])
        n_seqs = int(np.searchsorted(filled, n_val)) + 1  # sequences until n_val frames
        val = np.flatnonzero(np.isin(inverse, order[:n_seqs])) if n_val else np.array([], int)
    else:
        raise InputError(f"--split-by must be frame or sequence, got {recipe.split_by!r}")
    train = np.setdiff1d(np.arange(n), val)
    if len(val) < 1 or len(train) < 2:
        raise InputError(f"{n} frames are too few for a {recipe.val_fraction:g} validation "
                         f"split by {recipe.split_by}")
    return train, val


def new_model(input_dim: int, recipe: Recipe) -> MLPClassifier:
    """A fresh MLP, initialised as the original's init_weights (xavier uniform weights)."""
    model = MLPClassifier(input_dim, recipe.hidden_dim, 2, dropout=recipe.dropout)
    nn.init.xavier_uniform_(model.hidden_layer.weight)
    nn.init.xavier_uniform_(model.output_layer.weight)
    if not recipe.batchnorm:
        model.bn1 = nn.Identity()  # type: ignore[assignment]
    return model


def _as_saved(model: MLPClassifier, recipe: Recipe) -> MLPClassifier:
    """The model on CPU in eval mode, in the saved layout. Without BatchNorm, bn1 becomes an
    exact identity (mean 0, variance 1, eps 0, scale 1, shift 0), so the format stays one."""
    model = model.cpu().eval()
    if recipe.batchnorm:
        return model
    out = MLPClassifier(model.hidden_layer.in_features, recipe.hidden_dim, 2, bn_eps=0.0,
                        dropout=recipe.dropout)
    out.hidden_layer.load_state_dict(model.hidden_layer.state_dict())
    out.output_layer.load_state_dict(model.output_layer.state_dict())
    return out.eval()


@torch.no_grad()
def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray,
             device: torch.device) -> dict[str, Any]:
    """Loss (mean over frames) and metrics of `model` on the frames `idx`, in eval mode."""
    model.eval()
    loss, probs, preds = 0.0, [], []
    for b in range(0, len(idx), 8192):
        rows = torch.from_numpy(idx[b:b + 8192])
        logits = model(x[rows].to(device)).float()
        loss += F.cross_entropy(logits, y[rows].to(device), reduction="sum").item()
        probs.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())  # ties go to `others`, as in predict
    labels = y[torch.from_numpy(idx)].numpy() == VIRUS
    metrics = binary_metrics(labels, np.concatenate(probs), np.concatenate(preds) == VIRUS)
    return {"loss": loss / len(idx), **metrics}


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, idx: np.ndarray, recipe: Recipe, gen: torch.Generator,
                 device: torch.device) -> float:
    """One pass over the training frames in a seeded shuffle; the mean of batch losses (the
    original's epoch loss)."""
    model.train()
    order = torch.from_numpy(idx)[torch.randperm(len(idx), generator=gen)]
    total, batches = torch.zeros((), device=device), 0
    for b in range(0, len(order), recipe.batch_size):
        rows = order[b:b + recipe.batch_size]
        if len(rows) < 2 and recipe.batchnorm:
            continue  # BatchNorm cannot train on one row (the original crashes there)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[rows].to(device)), y[rows].to(device))
        loss.backward()
        opt.step()
        total += loss.detach()
        batches += 1
    return total.item() / max(batches, 1)


@dataclass
class FitResult:
    model: MLPClassifier  # the best epoch's weights, CPU, eval mode, saved layout
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    validation: dict[str, Any]  # metrics of the returned model


def _history_row(epoch: int, train_loss: float, val: dict[str, Any], lr: float,
                 seconds: float) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
            "val_accuracy": val["accuracy"], "val_precision": val["precision"],
            "val_recall": val["recall"], "val_f1": val["f1"], "val_auroc": val["auroc"],
            "val_auprc": val["auprc"], "lr": lr, "seconds": seconds}


def fit(x: np.ndarray, y: np.ndarray, split: tuple[np.ndarray, np.ndarray], recipe: Recipe,
        device: str = "cpu",
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train an MLP with the recipe; seeded, so the same inputs give the same weights."""
    dev = torch.device(device)
    train_idx, val_idx = split
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(recipe.seed)  # weight init and dropout
        model = new_model(x.shape[1], recipe).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
        sched = torch.optim.lr_scheduler.StepLR(opt, recipe.lr_step, recipe.lr_gamma)
        gen = torch.Generator().manual_seed(recipe.seed)
        history: list[dict[str, Any]] = []
        best_loss, best_state, best_epoch, bad = float("inf"), None, 0, 0
        for epoch in range(1, recipe.max_epochs + 1):
            t0, lr = time.perf_counter(), opt.param_groups[0]["lr"]
            train_loss = _train_epoch(model, opt, xt, yt, train_idx, recipe, gen, dev)
            val = validate(model, xt, yt, val_idx, dev)
            history.append(_history_row(epoch, train_loss, val, lr, time.perf_counter() - t0))
            if on_epoch is not None:
                on_epoch(history[-1])
            # Early stopping as the original's: improvement means strictly lower loss.
            # Unlike the original (whose saved "best" state_dict aliased the live weights),
            # we keep a copy and return the best epoch's weights.
            if val["loss"] < best_loss:
                best_loss, best_epoch, bad = val["loss"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= recipe.patience:
                    break
            sched.step()
        assert best_state is not None
        model.load_state_dict(best_state)
        final = validate(model, xt, yt, val_idx, dev)
    stopped = len(history) < recipe.max_epochs
    return FitResult(_as_saved(model, recipe), history, best_epoch, stopped, final)


# ------------------------------------------------------------------ outputs
def _check_model_dir(cfg: TrainConfig) -> None:
    out = cfg.model_dir
    present = [p.name for p in (out / WEIGHTS_FILE, out / INFO_FILE) if p.exists()]
    if present and not cfg.force:
        raise OutputError(f"{out}: already holds a classifier ({', '.join(present)}); use "
                          "--force to replace it (cached features are kept)")
    outputs.make_output_dir(out)


class _History:
    """history.tsv, a row per epoch as it finishes, and the same line on the console."""

    def __init__(self, path: Path, max_epochs: int) -> None:
        self.fh = path.open("w", encoding="utf-8", newline="\n")
        self.fh.write(outputs.tsv_row(outputs.HISTORY_COLUMNS))
        self.max_epochs = max_epochs

    def __call__(self, row: dict[str, Any]) -> None:
        cells = [row["epoch"], *(outputs.format_metric(row[c])
                                 for c in outputs.HISTORY_COLUMNS[1:])]
        self.fh.write(outputs.tsv_row(cells))
        self.fh.flush()
        auroc = "n/a" if row["val_auroc"] is None else f"{row['val_auroc']:.4f}"
        log.info("epoch %d/%d: train loss %.4f, validation loss %.4f, accuracy %.4f, "
                 "AUROC %s (%.1fs)", row["epoch"], self.max_epochs, row["train_loss"],
                 row["val_loss"], row["val_accuracy"], auroc, row["seconds"])

    def close(self) -> None:
        self.fh.close()


def _meta(cfg: TrainConfig, plan: EmbedPlan, sel: Selection, feats: Features,
          split: tuple[np.ndarray, np.ndarray], result: FitResult,
          seconds: float) -> dict[str, Any]:
    """classifier.json's record of how the model was made."""
    stats = feats.stats
    return {
        "trained_by": f"virnucpro {__version__}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chunk_size": cfg.chunk_size,
        "backbones": plan.models,
        "embedding": {k: v for k, v in plan.params.items() if k != "balance_seed"},
        "recipe": asdict(cfg.recipe),
        "metrics": {"validation": result.validation, "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history), "stopped_early": result.stopped_early},
        "data": {"inputs": plan.inputs, "frames": sel.counts,
                 "split": {"train": len(split[0]), "validation": len(split[1])},
                 "features_fingerprint": plan.fingerprint},
        "training": {
            "command_line": list(cfg.command_line),
            "features_cache": str(plan.cache.resolve()),
            "units": feats.units, "units_embedded": feats.units_embedded,
            "units_from_cache": feats.units - feats.units_embedded,
            "frames_embedded": stats.frames_scored,
            "embed_seconds": {k: round(v, 3) for k, v in stats.seconds.items()
                              if k != "classifier"},  # embed-only: no classifier ran
            "wall_seconds": round(seconds, 3),
        },
    }


def save_trained(model: MLPClassifier, meta: dict[str, Any], model_dir: Path) -> None:
    """Write the classifier files beside each other first, then move them into place."""
    from virnucpro.classifier import save_classifier

    tmp = model_dir / f".train-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    info = ClassifierInfo(model.hidden_layer.in_features, model.hidden_layer.out_features,
                          source="virnucpro train", sha256="", meta=meta)
    save_classifier(model, info, tmp)
    for name in (WEIGHTS_FILE, INFO_FILE):  # classifier.json last: it marks a whole model
        os.replace(tmp / name, model_dir / name)
    tmp.rmdir()


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train end to end; returns what classifier.json records beyond the weights."""
    t0 = time.perf_counter()
    check_train_inputs(cfg)
    _check_model_dir(cfg)
    plan = plan_embedding(cfg)
    cds = read_cds_proteins(cfg.cds_proteins) if cfg.cds_proteins else None
    selection = select_frames(labelled_records(cfg), cds, cfg.recipe.seed)
    used = selection.counts["used"]
    log.info("training frames: %d viral, %d other (of %d and %d)", used["viral"],
             used["other"], selection.counts["all"]["viral"], selection.counts["all"]["other"])
    feats = embed_frames(cfg, plan, selection)
    split = split_indices(feats.seq_ids, cfg.recipe)
    history = _History(outputs.train_paths(cfg.model_dir)["history"], cfg.recipe.max_epochs)
    try:
        result = fit(feats.x, feats.y, split, cfg.recipe, plan.workers[0].device, history)
    finally:
        history.close()
    meta = _meta(cfg, plan, selection, feats, split, result, time.perf_counter() - t0)
    save_trained(result.model, meta, cfg.model_dir)
    v = result.validation
    log.info("best epoch %d: validation accuracy %.4f, F1 %s; classifier in %s",
             result.best_epoch, v["accuracy"], outputs.format_metric(v["f1"]), cfg.model_dir)
    return meta
