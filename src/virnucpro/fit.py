"""Fitting the VirNucPro MLP on embedded frames: the original's recipe (train.py of
VirNucPro), seeded so that the same features give the same weights.

MLP with BatchNorm and dropout, SGD with momentum, StepLR, batch 32, early stopping on
validation loss, 90/10 split (by frame as the original, or by sequence).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import InputError
from virnucpro.evaluate import binary_metrics
from virnucpro.models.classifier import MLPClassifier

VIRUS, OTHER = 1, 0  # class indices, as classifier.CLASS_NAMES = ("others", "virus")


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
