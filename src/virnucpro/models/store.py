"""Where the models a run loads are: find, download if allowed, record and verify them.

Everything lives in one *models directory* (default `~/.cache/virnucpro`, see
`default_models_dir`):

    <models dir>/
        manifest.json                         what was downloaded: revision, size, sha256
        models--zhihan1996--DNABERT-S/...     Hugging Face cache layout (snapshots/<commit>/...)
        models--facebook--esm2_t36_3B_UR50D/...
        classifiers/300_model.pth, 500_model.pth

When hashing happens (sha256 of an 11 GB file takes tens of seconds, so it is done once):
- A model downloaded from the hub has every file hashed once, right after the download; for
  LFS files the hash is checked against the one the hub publishes (see `manifest.py`).
- Each later resolution of a recorded model checks size and mtime of every recorded file
  (cheap) and re-hashes only a file whose mtime changed. `rehash=True` (`models info
  --verify`) re-hashes every recorded file.
- Weights of a model the manifest does not know (a local directory) are hashed only when
  asked (`verify=True`, which a run uses so that run.json names what it loaded).
- Classifier files are small (7 MB): always hashed.

Nothing here reads environment variables: the CLI decides `offline` (from `--offline` and
`HF_HUB_OFFLINE`) and passes it down. `huggingface_hub` itself still honours its own variables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from virnucpro.errors import ModelError, ModelNotCachedError
from virnucpro.models.download import (
    CLASSIFIER_REPO,
    COMMIT,
    KIND_LABEL,
    cached_snapshot,
    download_classifier,
    missing_msg,
    online_snapshot,
)
from virnucpro.models.manifest import (
    cached_hash,
    check_model_dir,
    entry_hashes,
    find_entry,
    hash_file,
    manifest_path,
    new_entry,
    read_manifest,
    rel_path,
    save_entry,
    verify_entry,
)

DEFAULT_DNABERT = "zhihan1996/DNABERT-S"
DEFAULT_ESM = "facebook/esm2_t36_3B_UR50D"
PUBLISHED_MODEL_TYPES = (300, 500)
ModelKind = Literal["dnabert", "esm"]
# config.json `model_type` of the models we load; which option takes each kind of model.
_MODEL_TYPES = {"bert": "dnabert", "esm": "esm"}
_OPTION = {"dnabert": "--dnabert", "esm": "--esm", "classifier": "-p/--model-path"}
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")


@dataclass(frozen=True)
class ResolvedModel:
    """A model file or directory a run will load, and where it came from.

    `repo_id`/`revision` are None for a plain local path. `sha256` maps weight file names
    (relative to `path`, or the file name for a classifier) to their sha256; it is empty for
    a model the manifest does not know, resolved without `verify=True`.
    """

    kind: str
    spec: str
    path: Path
    repo_id: str | None
    revision: str | None
    sha256: dict[str, str] = field(default_factory=dict)


def default_models_dir() -> Path:
    """`~/.cache/virnucpro`; the CLI overrides it with `--models-dir` / `VIRNUCPRO_MODELS_DIR`."""
    return Path.home() / ".cache" / "virnucpro"


def env_says_offline(value: str | None) -> bool:
    """Interpret an `HF_HUB_OFFLINE` value the way huggingface_hub does (the CLI passes it in)."""
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """Split `owner/name[@revision]` into (repo_id, revision or None)."""
    m = _HUB_ID.fullmatch(spec.strip())
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        raise ModelError(f"{spec!r} is neither an existing directory nor a hub id "
                         "(owner/name or owner/name@revision)")
    return m["repo"], m["rev"]


def _check_kind(kind: str) -> None:
    if kind not in ("dnabert", "esm"):
        raise ModelError(f"unknown model kind {kind!r} (expected 'dnabert' or 'esm')")


def model_kind(path: Path) -> str | None:
    """What a model argument points at, judged from its small files alone (no weights are
    read, nothing heavy is imported): 'dnabert', 'esm', 'classifier', `model_type X` for
    another model, or None when it cannot tell (the loader then says what is wrong)."""
    path = Path(path)
    if path.is_file():
        return "classifier" if path.suffix in (".pth", ".pt") else None
    if (path / "classifier.json").is_file():
        return "classifier"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = config.get("model_type") if isinstance(config, dict) else None
    return None if found is None else _MODEL_TYPES.get(found, f"model_type {found!r}")


def check_model_kind(path: Path, kind: str) -> None:
    """A `ModelError` when `path` is another kind of model than `kind` ('dnabert', 'esm' or
    'classifier'): one line saying what was found, what was expected, and the likely mix-up.
    Cheap, so a run checks every model argument before any worker starts."""
    found = model_kind(path)
    want = f"{_OPTION[kind]} expects {_a(KIND_LABEL[kind])} model"
    if found is None and kind == "classifier" and Path(path).is_dir():
        raise ModelError(f"{path}: not a classifier directory (no classifier.json); {want} "
                         "(a .pth file or a directory written by `virnucpro train`)")
    if found is None or found == kind:
        return
    if found not in KIND_LABEL:
        raise ModelError(f"{path}: this is a model of {found}; {want}")
    hint = ("--dnabert and --esm swapped?" if {found, kind} == {"dnabert", "esm"}
            else f"pass it with {_OPTION[found]}")
    raise ModelError(f"{path}: this is {_a(KIND_LABEL[found])} model, but {want}; {hint}")


def _a(label: str) -> str:
    return f"{'an' if label[0] in 'AEIOU' else 'a'} {label}"


def resolve_model(spec: str, kind: ModelKind, *, offline: bool, cache_dir: Path | None = None,
                  verify: bool = False, rehash: bool = False,
                  progress: bool = False) -> ResolvedModel:
    """Find the DNABERT-S or ESM-2 directory a run will load.

    `spec` is an existing local directory (used as is) or a hub id `owner/name[@revision]`
    looked up in `cache_dir` (the models dir, Hugging Face cache layout; default
    `default_models_dir()`). Online, a hub model is downloaded if missing and recorded in the
    manifest; offline, a model that is not cached fails at once, without any network attempt.
    `verify`: also hash the weights of a model the manifest does not know. `rehash`: re-hash
    recorded files too, not only when their mtime moved (implies `verify`).
    """
    _check_kind(kind)
    models_dir = Path(cache_dir) if cache_dir is not None else default_models_dir()
    local = Path(spec).expanduser()
    fresh = None  # (origin, published sha256) when the hub was just asked for this model
    if local.exists():
        check_model_kind(local, kind)
        path, repo_id, revision = local, *_snapshot_origin(local)
    else:
        repo_id, rev = parse_hub_id(spec)
        if offline:
            path = cached_snapshot(repo_id, rev, kind, spec, models_dir)
        else:
            path, published = online_snapshot(repo_id, rev, kind, spec, models_dir, progress)
            if published is not None:
                fresh = ({"kind": kind, "spec": spec, "repo_id": repo_id, "revision": path.name,
                          "source": f"https://huggingface.co/{repo_id}"}, published)
        revision = path.name
        check_model_kind(path, kind)
    # The manifest check comes first so that a recorded file gone missing is named as such.
    known = _recorded_hashes(models_dir, path, fresh, rehash=rehash, progress=progress)
    weights = check_model_dir(path)
    if known is not None:
        sha = {name: known[name] for name in weights if name in known}
    elif verify or rehash:
        sha = {name: cached_hash(path / name, models_dir, progress, rehash) for name in weights}
    else:
        sha = {}
    return ResolvedModel(kind, spec, path, repo_id, revision, sha)


def _snapshot_origin(path: Path) -> tuple[str | None, str | None]:
    """(repo_id, commit) when `path` is a snapshot folder of a Hugging Face cache."""
    path = path.resolve()
    repo_dir = path.parent.parent.name
    if path.parent.name == "snapshots" and COMMIT.fullmatch(path.name) \
            and repo_dir.startswith("models--"):
        return repo_dir[len("models--"):].replace("--", "/"), path.name
    return None, None


def _recorded_hashes(models_dir: Path, path: Path,
                     fresh: tuple[dict[str, Any], dict[str, str]] | None, *, rehash: bool,
                     progress: bool) -> dict[str, str] | None:
    """{file name: sha256} of a model recorded in the manifest, verified. A model the hub was
    just asked for (`fresh`: its origin and the hub's sha256 of its LFS files) is recorded
    first. None for a model the manifest does not know."""
    entry = find_entry(read_manifest(models_dir), rel_path(models_dir, path))
    if entry is None and fresh is not None:
        files = [f for f in sorted(path.iterdir()) if f.is_file()]
        entry = new_entry(models_dir, path, files, fresh[0], known=fresh[1], progress=progress)
        save_entry(models_dir, entry)
    if entry is None:
        return None
    hashes = verify_entry(models_dir, entry, full=rehash, progress=progress)
    return entry_hashes(models_dir, path, hashes)


def resolve_classifier(spec: str | Path | None, model_type: int, *, models_dir: Path | None,
                       offline: bool, progress: bool = False) -> ResolvedModel:
    """Find the classifier a run will load: `spec` (a `.pth` file or a converted classifier
    directory) or, when None, the published `<model_type>_model.pth`, downloaded into the
    models dir if missing and online. Classifiers are small, so they are always hashed (and
    checked against the manifest when recorded there)."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    if spec is not None:
        path, label, repo_id = Path(spec).expanduser(), str(spec), None
        if not path.exists():
            raise ModelError(f"classifier not found: {spec}")
        check_model_kind(path, "classifier")
    else:
        if model_type not in PUBLISHED_MODEL_TYPES:
            raise ModelError(f"there is no published classifier for chunk size {model_type} "
                             "(only 300 and 500); pass your own with -p FILE")
        path = models_dir / "classifiers" / f"{model_type}_model.pth"
        label, repo_id = f"published:{model_type}", CLASSIFIER_REPO
        if not path.is_file():
            if offline:
                raise ModelNotCachedError(missing_msg("classifier", path.name, path.parent,
                                                       "offline mode is on"))
            download_classifier(model_type, models_dir, progress=progress)
    entry = find_entry(read_manifest(models_dir), rel_path(models_dir, path))
    if entry is None:
        hashes = {f.name: hash_file(f) for f in classifier_files(path)}
        return ResolvedModel("classifier", label, path, repo_id, None, hashes)
    hashes = verify_entry(models_dir, entry, full=True)
    return ResolvedModel("classifier", label, path, entry.get("repo_id"), entry.get("revision"),
                         entry_hashes(models_dir, path, hashes))


def classifier_files(path: Path) -> list[Path]:
    """The files of a classifier: the `.pth` itself, or those of a converted directory."""
    return sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]


def download_models(model_type: str = "all", dest: Path | None = None, *, progress: bool = True,
                    dnabert: str = DEFAULT_DNABERT, esm: str = DEFAULT_ESM) -> Path:
    """Download DNABERT-S, ESM-2 and the published classifier(s) for `model_type`
    ("300", "500" or "all") into `dest` (default `default_models_dir()`), hash every file once
    and record it in the manifest. Already recorded files are only checked. Returns the
    manifest path."""
    types = {"300": [300], "500": [500], "all": [300, 500]}.get(str(model_type))
    if types is None:
        raise ModelError(f"unknown model type {model_type!r} (expected 300, 500 or all)")
    models_dir = Path(dest) if dest is not None else default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    resolve_model(dnabert, "dnabert", offline=False, cache_dir=models_dir, progress=progress)
    resolve_model(esm, "esm", offline=False, cache_dir=models_dir, progress=progress)
    for t in types:
        resolve_classifier(None, t, models_dir=models_dir, offline=False, progress=progress)
    return manifest_path(models_dir)
