"""The VirNucPro MLP classifier: load the published pickles safely, convert, and classify.

The published `300_model.pth`/`500_model.pth` are whole modules pickled by the training script
(`torch.save(model)`), so they name `__main__.MLPClassifier`. We never run that class: the file
is read by `models.safeload` with every class it names mapped to an inert record, and our own
network is rebuilt from the tensors inside. Our format is a directory with `model.safetensors`
and `classifier.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import ModelError
from virnucpro.files import sha256_file
from virnucpro.models.safeload import PickledObject, load_pickle, record_type
from virnucpro.outputs import CLASSIFIER_INFO as INFO_FILE
from virnucpro.outputs import CLASSIFIER_WEIGHTS as WEIGHTS_FILE

CLASS_NAMES = ("others", "virus")  # index 0 = score1, index 1 = score2 in the original output
FORMAT = "virnucpro-classifier"
FORMAT_VERSION = 1

# What the original file may name: its own class, and the torch.nn modules inside it.
# (ReLU is listed in case a variant used the module form; the original calls F.relu.)
_PICKLED_CLASSES = {
    "__main__.MLPClassifier": "MLPClassifier",
    "torch.nn.modules.linear.Linear": "Linear",
    "torch.nn.modules.batchnorm.BatchNorm1d": "BatchNorm1d",
    "torch.nn.modules.activation.ReLU": "ReLU",
    "torch.nn.modules.dropout.Dropout": "Dropout",
}
# The original's submodules by attribute name (VirNucPro train.py / prediction.py).
_LAYOUT = {"hidden_layer": "Linear", "bn1": "BatchNorm1d", "output_layer": "Linear",
           "dropout": "Dropout"}


class MLPClassifier(nn.Module):
    """Linear → BatchNorm1d → ReLU → Dropout → Linear; attribute names match the original's keys."""

    def __init__(self, input_dim: int, hidden_dim: int, n_classes: int = 2,
                 bn_eps: float = 1e-5, dropout: float = 0.5) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim, eps=bn_eps)
        self.output_layer = nn.Linear(hidden_dim, n_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))  # [N, n_classes] logits


@dataclass(frozen=True)
class ClassifierInfo:
    """Dimensions and provenance: `source`/`sha256` name the file the weights first came from."""

    input_dim: int
    hidden_dim: int
    source: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


def load_classifier(path: Path) -> tuple[MLPClassifier, ClassifierInfo]:
    """Load a published `.pth` or one of our directories, in eval mode on CPU."""
    path = Path(path)
    if path.is_dir():
        return _load_ours(path)
    if path.is_file():
        return _load_pickled(path)
    raise ModelError(f"{path}: classifier not found")


def _build(state: dict[str, torch.Tensor], path: Path, bn_eps: float,
           dropout: float) -> MLPClassifier:
    """Our network with `state` loaded strictly; dims come from the weights."""
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        n_classes = state["output_layer.weight"].shape[0]
        model = MLPClassifier(int(input_dim), int(hidden_dim), int(n_classes), bn_eps, dropout)
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: weights do not form the VirNucPro MLP ({detail})") from None
    if n_classes != len(CLASS_NAMES):
        raise ModelError(f"{path}: {n_classes} output classes, expected {len(CLASS_NAMES)}")
    return model.eval()


def _load_pickled(path: Path) -> tuple[MLPClassifier, ClassifierInfo]:
    allowed = [(record_type(name), name) for name in _PICKLED_CLASSES]
    root = load_pickle(path, allowed)
    if isinstance(root, PickledObject):
        state, bn_eps, dropout = _module_tensors(root, path)
    elif isinstance(root, dict) and all(isinstance(v, torch.Tensor) for v in root.values()):
        state, bn_eps, dropout = dict(root), 1e-5, 0.5  # a plain state_dict of the same net
    else:
        raise ModelError(f"{path}: expected a pickled MLPClassifier, found {type(root).__name__}")
    model = _build(state, path, bn_eps, dropout)
    meta = {"class_names": list(CLASS_NAMES), "n_classes": len(CLASS_NAMES),
            "batchnorm_eps": bn_eps, "dropout": dropout, "source_format": "pickled-module"}
    info = ClassifierInfo(model.hidden_layer.in_features, model.hidden_layer.out_features,
                          path.name, sha256_file(path), meta)
    return model, info


def _module_tensors(root: PickledObject,
                    path: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """Tensors of the pickled MLPClassifier under our names, plus BatchNorm eps and dropout p."""
    if root.pickled_name != "__main__.MLPClassifier" or not isinstance(root.state, dict):
        raise ModelError(f"{path}: expected a pickled MLPClassifier, found {root.pickled_name}")
    modules = root.state.get("_modules") or {}
    kinds = {name: getattr(mod, "pickled_name", type(mod).__name__)
             for name, mod in modules.items()}
    if {k: _PICKLED_CLASSES.get(v, v) for k, v in kinds.items()} != _LAYOUT:
        raise ModelError(f"{path}: unexpected MLPClassifier layout {kinds}")
    state: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for group in ("_parameters", "_buffers"):
            for key, tensor in (mod.state.get(group) or {}).items():
                if tensor is not None:
                    state[f"{name}.{key}"] = tensor.detach()
    bn, drop = modules["bn1"].state, modules["dropout"].state
    if not (bn.get("affine", True) and bn.get("track_running_stats", True)):
        raise ModelError(f"{path}: BatchNorm1d without affine weights or running statistics")
    return state, float(bn.get("eps", 1e-5)), float(drop.get("p", 0.5))


def _load_ours(directory: Path) -> tuple[MLPClassifier, ClassifierInfo]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info_path, weights_path = directory / INFO_FILE, directory / WEIGHTS_FILE
    try:
        doc = json.loads(info_path.read_text(encoding="utf-8"))
        state = load_file(weights_path)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelError(f"{directory}: not a virnucpro classifier ({exc})") from None
    if doc.get("format") != FORMAT:
        raise ModelError(f"{info_path}: format is {doc.get('format')!r}, expected {FORMAT!r}")
    model = _build(state, directory, float(doc.get("batchnorm_eps", 1e-5)),
                   float(doc.get("dropout", 0.5)))
    dims = (model.hidden_layer.in_features, model.hidden_layer.out_features)
    if dims != (doc.get("input_dim"), doc.get("hidden_dim")):
        raise ModelError(f"{directory}: {INFO_FILE} dims disagree with the weights {dims}")
    meta = {k: v for k, v in doc.items()
            if k not in ("format", "format_version", "input_dim", "hidden_dim", "source", "sha256")}
    return model, ClassifierInfo(dims[0], dims[1], str(doc.get("source", "")),
                                 str(doc.get("sha256", "")), meta)


def save_classifier(model: MLPClassifier, info: ClassifierInfo, out: Path) -> Path:
    """Write `out/model.safetensors` and `out/classifier.json`; returns `out`."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_FILE, metadata={"format": "pt"})
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "input_dim": model.hidden_layer.in_features, "hidden_dim": model.hidden_layer.out_features,
        "n_classes": model.output_layer.out_features, "class_names": list(CLASS_NAMES),
        "batchnorm_eps": model.bn1.eps, "dropout": model.dropout.p,
        "source": info.source, "sha256": info.sha256,
    }
    # Provenance and, for trained models, backbone ids / chunk size / recipe / metrics.
    doc.update({k: v for k, v in info.meta.items() if k not in doc})
    (out / INFO_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")
    return out


def convert_classifier(in_path: Path, out: Path) -> Path:
    """Convert a published `.pth` (or one of our directories) into our directory format."""
    model, info = load_classifier(in_path)
    meta = {**info.meta, "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return save_classifier(model, ClassifierInfo(info.input_dim, info.hidden_dim, info.source,
                                                 info.sha256, meta), out)


def classify(model: MLPClassifier, features: torch.Tensor) -> torch.Tensor:
    """`[N, D]` features → `[N, 2]` float32 softmax probabilities (0 = others, 1 = virus)."""
    expected = model.hidden_layer.in_features
    if features.ndim != 2 or features.shape[1] != expected:
        raise ModelError(f"classifier expects [N, {expected}] features, got {list(features.shape)}")
    device = model.hidden_layer.weight.device
    with torch.inference_mode():
        logits = model(features.to(device, torch.float32, non_blocking=True))
        return torch.softmax(logits.float(), dim=1)
