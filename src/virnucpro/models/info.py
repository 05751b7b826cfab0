"""`virnucpro models info`: what the models of a run are, checked without loading them."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virnucpro.errors import ModelError, ModelNotCachedError
from virnucpro.models.download import KIND_LABEL
from virnucpro.models.manifest import read_json_object, weight_files
from virnucpro.models.store import (
    DEFAULT_DNABERT,
    DEFAULT_ESM,
    ResolvedModel,
    classifier_files,
    default_models_dir,
    resolve_classifier,
    resolve_model,
)

_DIM_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size")


def models_info(*, dnabert: str = DEFAULT_DNABERT, esm: str = DEFAULT_ESM,
                classifier: str | Path | None = None, model_type: int = 500,
                models_dir: Path | None = None, offline: bool = False,
                verify: bool = False) -> list[dict[str, Any]]:
    """Describe the three models a run with these settings would use, one dict each.

    Never touches the network: a hub model that is not downloaded is reported with status
    'not downloaded' (online: a run would fetch it) or 'missing' (offline: a run would fail).
    Other problems give status 'error'. Weights are never loaded, except the small classifier.
    """
    mdir = Path(models_dir) if models_dir is not None else default_models_dir()
    rows = [
        _info_row("dnabert", dnabert, offline, lambda: resolve_model(
            dnabert, "dnabert", offline=True, cache_dir=mdir, rehash=verify)),
        _info_row("esm", esm, offline, lambda: resolve_model(
            esm, "esm", offline=True, cache_dir=mdir, rehash=verify)),
        _info_row("classifier", str(classifier or f"published:{model_type}"), offline,
                  lambda: resolve_classifier(classifier, model_type, models_dir=mdir,
                                             offline=True)),
    ]
    _check_input_dim(rows)
    return rows


def _info_row(kind: str, spec: str, offline: bool,
              resolve: Callable[[], ResolvedModel]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "spec": spec, "status": "ok", "error": None}
    try:
        rm = resolve()
        row.update(path=str(rm.path), repo_id=rm.repo_id, revision=rm.revision,
                   sha256=rm.sha256)
        row.update(_classifier_facts(rm.path) if kind == "classifier"
                   else _model_dir_facts(rm.path))
    except ModelNotCachedError as exc:
        if offline:
            row.update(status="missing", error=str(exc))
        else:
            row.update(status="not downloaded", error="a run downloads it; or run "
                       "`virnucpro models download` now")
    except ModelError as exc:
        row.update(status="error", error=str(exc))
    return row


def _model_dir_facts(path: Path) -> dict[str, Any]:
    weights = weight_files(path)
    config = read_json_object(path / "config.json")
    return {"weights": weights, "size_bytes": sum((path / w).stat().st_size for w in weights),
            "parameters": count_parameters(path, weights),
            "dims": {k: config[k] for k in _DIM_KEYS if k in config}}


def _classifier_facts(path: Path) -> dict[str, Any]:
    files = classifier_files(path)
    facts: dict[str, Any] = {"weights": [f.name for f in files], "parameters": None,
                             "size_bytes": sum(f.stat().st_size for f in files), "dims": {}}
    try:
        from virnucpro.models.classifier import load_classifier
    except ImportError:  # the classifier module is optional for `models info`
        return facts
    model, info = load_classifier(path)
    facts["parameters"] = sum(p.numel() for p in model.parameters())
    facts["dims"] = {"input_dim": info.input_dim, "hidden_dim": info.hidden_dim}
    return facts


def _check_input_dim(rows: list[dict[str, Any]]) -> None:
    """Flag a classifier whose input does not match [DNABERT-S | ESM-2] features."""
    dna, prot, clf = (r.get("dims", {}) for r in rows)
    if "hidden_size" in dna and "hidden_size" in prot and "input_dim" in clf:
        want = dna["hidden_size"] + prot["hidden_size"]
        if clf["input_dim"] != want:
            rows[2].update(status="error", error=f"classifier input_dim {clf['input_dim']} != "
                           f"DNABERT-S {dna['hidden_size']} + ESM-2 {prot['hidden_size']}")


def models_info_params(model_dir: Path) -> int:
    """Parameter count of a DNABERT-S/ESM-2 directory without loading it (sizes ESM batches)."""
    return count_parameters(model_dir, weight_files(model_dir))


def count_parameters(model_dir: Path, weights: list[str]) -> int:
    """Number of tensor elements in the weight files, read from headers (safetensors) or
    memory-mapped on the meta device (pytorch_model.bin): no weights are loaded."""
    return sum(_safetensors_numel(model_dir / w) if w.endswith(".safetensors")
               else _torch_numel(model_dir / w) for w in weights)


def _safetensors_numel(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100 << 20:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc
    return sum(math.prod(meta["shape"]) for name, meta in header.items()
               if name != "__metadata__")


def _torch_numel(path: Path) -> int:
    import torch

    try:
        try:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="meta", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise ModelError(f"{path} is not a plain PyTorch state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a state dict")
    return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))


def format_models_info(rows: list[dict[str, Any]]) -> str:
    """Plain aligned text for `virnucpro models info` (no table: long paths stay whole)."""
    lines = []
    for r in rows:
        lines.append(f"{KIND_LABEL[r['kind']]}: {r['spec']}")
        repo = r.get("repo_id")
        fields = [
            ("status", r["status"] + (f" ({r['error']})" if r.get("error") else "")),
            ("path", r.get("path")),
            ("source", f"{repo} @ {r.get('revision') or '?'}" if repo else None),
            ("weights", ", ".join(r["weights"]) + f" ({_human(r['size_bytes'])})"
             if r.get("weights") else None),
            ("parameters", f"{r['parameters']:,}" if r.get("parameters") is not None else None),
            ("dims", " ".join(f"{k}={v}" for k, v in r.get("dims", {}).items()) or None),
        ]
        fields += [("sha256", f"{name} {digest}") for name, digest in r.get("sha256", {}).items()]
        lines += [f"  {key:<11} {value}" for key, value in fields if value]
    return "\n".join(lines)


def _human(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for power, unit in enumerate(("KB", "MB", "GB"), start=1):
        if n < 1000 ** (power + 1) or unit == "GB":
            return f"{n / 1000**power:.1f} {unit}"
    raise AssertionError("unreachable")
