"""Model management: find, download, record and verify the three models a run uses.

Everything lives in one *models directory* (default `~/.cache/virnucpro`, see
`default_models_dir`):

    <models dir>/
        manifest.json                         what was downloaded: revision, size, sha256
        models--zhihan1996--DNABERT-S/...     Hugging Face cache layout (snapshots/<commit>/...)
        models--facebook--esm2_t36_3B_UR50D/...
        classifiers/300_model.pth, 500_model.pth

When hashing happens (sha256 of an 11 GB file takes tens of seconds, so it is done once):
- A model downloaded from the hub (by `virnucpro models download` or by a run that downloads
  it) has every file hashed once, right after the download; for LFS files the hash is checked
  against the one the hub publishes. Size, mtime and sha256 go into `manifest.json`.
- Each later resolution of a recorded model checks size and mtime of every recorded file
  (cheap) and re-hashes only a file whose mtime changed; a file whose size or content
  changed is refused with a `ModelError` naming it. `rehash=True` (`models info --verify`)
  re-hashes every recorded file.
- Weights of a model the manifest does not know (a local directory) are hashed only when
  asked (`verify=True`, which a run uses so that run.json names what it loaded).
- Classifier files are small (7 MB): always hashed.

Nothing here reads environment variables: the CLI decides `offline` (from `--offline` and
`HF_HUB_OFFLINE`) and passes it down. `huggingface_hub` itself still honours its own variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from virnucpro.errors import ModelError

DEFAULT_DNABERT = "zhihan1996/DNABERT-S"
DEFAULT_ESM = "facebook/esm2_t36_3B_UR50D"
CLASSIFIER_REPO = "Li-Jing-1997/VirNucPro"  # GitHub; 300_model.pth and 500_model.pth at the root
CLASSIFIER_BRANCH = "main"
# `{revision}` is a commit when the GitHub API could resolve the branch, else the branch name.
CLASSIFIER_URL = "https://raw.githubusercontent.com/{repo}/{revision}/{name}"
CLASSIFIER_LFS_URL = "https://media.githubusercontent.com/media/{repo}/{revision}/{name}"
GITHUB_COMMIT_API = "https://api.github.com/repos/{repo}/commits/{branch}"
PUBLISHED_MODEL_TYPES = (300, 500)
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

ModelKind = Literal["dnabert", "esm"]
_KIND_LABEL = {"dnabert": "DNABERT-S", "esm": "ESM-2", "classifier": "classifier"}
_KIND_FLAG = {"dnabert": "--dnabert DIR", "esm": "--esm DIR", "classifier": "-p FILE"}
# What we load from a hub repo; never code (*.py) and never a second copy of the weights.
_CONFIG_FILES = ["config.json"]
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt"]
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 1 << 22


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


class ModelNotCachedError(ModelError):
    """A hub model or published classifier that is not downloaded yet (and we may not fetch)."""


def default_models_dir() -> Path:
    """`~/.cache/virnucpro`; the CLI overrides it with `--models-dir` / `VIRNUCPRO_MODELS_DIR`."""
    return Path.home() / ".cache" / "virnucpro"


def env_says_offline(value: str | None) -> bool:
    """Interpret an `HF_HUB_OFFLINE` value the way huggingface_hub does (the CLI passes it in)."""
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ------------------------------------------------------------------ spec parsing
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


def _missing_msg(kind: str, spec: str, where: Path, why: str) -> str:
    return (f"{_KIND_LABEL[kind]} model {spec} is not in {where} and {why}; run `virnucpro "
            f"models download` (with network) or pass a local copy with {_KIND_FLAG[kind]}")


# ------------------------------------------------------------------ model files
def weight_files(model_dir: Path) -> list[str]:
    """The weight files a model directory holds, safetensors first (names relative to it)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (model_dir / single).is_file():
            return [single]
        if (model_dir / index).is_file():
            weight_map = _read_json(model_dir / index).get("weight_map", {})
            return sorted(set(weight_map.values()))
    raise ModelError(f"{model_dir} holds no weights (model.safetensors or pytorch_model.bin)")


def _check_model_dir(path: Path) -> list[str]:
    """Check that `path` is a loadable model directory; return its weight files."""
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory (expected a model directory)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json")
    names = weight_files(path)
    for name in names:
        if not (path / name).is_file():
            raise ModelError(f"{path} lacks weight file {name}")
    return names


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def sha256_file(path: Path, progress: bool = False) -> str:
    """sha256 of a file, with a progress bar on stderr for big files when asked."""
    h = hashlib.sha256()
    with open(path, "rb") as fh, _progress_bar(f"sha256 {path.name}",
                                               path.stat().st_size, progress) as advance:
        while block := fh.read(_HASH_CHUNK):
            h.update(block)
            advance(len(block))
    return h.hexdigest()


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None, enabled: bool,
                  min_total: int = 64 << 20) -> Iterator[Callable[[int], Any]]:
    """Yield an `advance(n)` callable; a rich bar on stderr when enabled and worth showing."""
    if not enabled or (total is not None and total < min_total):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


# ------------------------------------------------------------------ manifest
def manifest_path(models_dir: Path) -> Path:
    return Path(models_dir) / MANIFEST_NAME


def read_manifest(models_dir: Path) -> dict[str, Any]:
    """The manifest of `models_dir` (an empty one when the file does not exist)."""
    path = manifest_path(models_dir)
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "models": []}
    data = _read_json(path)
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), list):
        raise ModelError(f"{path} is not a virnucpro manifest (format {MANIFEST_FORMAT})")
    return data


def _write_manifest(models_dir: Path, manifest: dict[str, Any]) -> None:
    path = manifest_path(models_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: concurrent readers see the old or the new manifest


def _rel(models_dir: Path, path: Path) -> str | None:
    """`path` relative to `models_dir` (posix), or None when it lies outside."""
    # Resolve the parent only: snapshot files are symlinks into blobs/, keep their own name.
    try:
        full = path.parent.resolve() / path.name
        return full.relative_to(Path(models_dir).resolve()).as_posix()
    except ValueError:
        return None


def _find_entry(manifest: dict[str, Any], rel: str | None) -> dict[str, Any] | None:
    return next((e for e in manifest["models"] if rel is not None and e.get("path") == rel), None)


def _save_entry(models_dir: Path, entry: dict[str, Any]) -> None:
    """Add or replace (by path) one manifest entry."""
    manifest = read_manifest(models_dir)
    manifest["models"] = [e for e in manifest["models"] if e.get("path") != entry["path"]]
    manifest["models"].append(entry)
    manifest["models"].sort(key=lambda e: e["path"])
    _write_manifest(models_dir, manifest)


def file_record(path: Path, sha256: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Size, mtime and sha256 of one file, as stored in the manifest."""
    st = path.stat()
    digest = sha256 or sha256_file(path, progress)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def verify_entry(models_dir: Path, entry: dict[str, Any], *, full: bool = False,
                 progress: bool = False) -> dict[str, str]:
    """Check the files of a manifest entry; return {path relative to models dir: sha256}.

    Size is always checked; the content is re-hashed when the mtime moved or `full`.
    A touched but unchanged file gets its new mtime recorded (best effort).
    """
    mpath, touched, hashes = manifest_path(models_dir), {}, {}
    for rel, rec in sorted(entry["files"].items()):
        path = Path(models_dir) / rel
        if not path.is_file():
            raise ModelError(f"{path} is listed in {mpath} but missing; "
                             "run `virnucpro models download` again")
        st = path.stat()
        if st.st_size != rec["size"]:
            raise ModelError(f"{path} changed since it was downloaded (size {st.st_size}, "
                             f"manifest {mpath} says {rec['size']}); delete it and run "
                             "`virnucpro models download` again")
        if full or st.st_mtime_ns != rec["mtime_ns"]:
            if sha256_file(path, progress) != rec["sha256"]:
                raise ModelError(f"{path} changed since it was downloaded (sha256 differs from "
                                 f"{mpath}); delete it and run `virnucpro models download` again")
            if st.st_mtime_ns != rec["mtime_ns"]:
                touched[rel] = st.st_mtime_ns
        hashes[rel] = rec["sha256"]
    if touched:
        with contextlib.suppress(OSError):  # a read-only models dir is fine
            _update_mtimes(models_dir, entry["path"], touched)
    return hashes


def _update_mtimes(models_dir: Path, entry_path: str, mtimes: dict[str, int]) -> None:
    manifest = read_manifest(models_dir)
    entry = _find_entry(manifest, entry_path)
    if entry is not None:
        for rel, mtime in mtimes.items():
            entry["files"][rel]["mtime_ns"] = mtime
        _write_manifest(models_dir, manifest)


def _new_entry(models_dir: Path, path: Path, files: list[Path], origin: dict[str, Any],
               known: dict[str, str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Hash `files` and build a manifest entry. `origin` holds kind, spec, repo_id, revision
    and source (a URL); `known` maps file names to hashes the source publishes: they must
    match."""
    records = {}
    for f in sorted(files):
        rec = file_record(f, progress=progress)
        expected = (known or {}).get(f.relative_to(path).as_posix() if path.is_dir() else f.name)
        if expected is not None and rec["sha256"] != expected:
            raise ModelError(f"{f} does not match the sha256 published by {origin['source']}; "
                             "delete it and download again")
        records[_rel(models_dir, f)] = rec
    return {**origin, "path": _rel(models_dir, path), "files": records,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _entry_hashes(models_dir: Path, path: Path, hashes: dict[str, str]) -> dict[str, str]:
    """Manifest hashes (keyed relative to the models dir) re-keyed relative to `path`."""
    base = _rel(models_dir, path) or ""
    out = {}
    for rel, digest in hashes.items():
        inside = path.is_dir() and rel.startswith(base + "/")
        out[rel[len(base) + 1:] if inside else Path(rel).name] = digest
    return out


# ------------------------------------------------------------------ DNABERT-S / ESM-2
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
        path, repo_id, revision = local, *_snapshot_origin(local)
    else:
        repo_id, rev = parse_hub_id(spec)
        if offline:
            path = _cached_snapshot(repo_id, rev, kind, spec, models_dir)
        else:
            path, published = _online_snapshot(repo_id, rev, kind, spec, models_dir, progress)
            if published is not None:
                fresh = ({"kind": kind, "spec": spec, "repo_id": repo_id, "revision": path.name,
                          "source": f"https://huggingface.co/{repo_id}"}, published)
        revision = path.name
    # The manifest check comes first so that a recorded file gone missing is named as such.
    known = _recorded_hashes(models_dir, path, fresh, rehash=rehash, progress=progress)
    weights = _check_model_dir(path)
    if known is not None:
        sha = {name: known[name] for name in weights if name in known}
    elif verify or rehash:
        sha = {name: sha256_file(path / name, progress) for name in weights}
    else:
        sha = {}
    return ResolvedModel(kind, spec, path, repo_id, revision, sha)


def _snapshot_origin(path: Path) -> tuple[str | None, str | None]:
    """(repo_id, commit) when `path` is a snapshot folder of a Hugging Face cache."""
    path = path.resolve()
    repo_dir = path.parent.parent.name
    if path.parent.name == "snapshots" and _COMMIT.fullmatch(path.name) \
            and repo_dir.startswith("models--"):
        return repo_dir[len("models--"):].replace("--", "/"), path.name
    return None, None


def _recorded_hashes(models_dir: Path, path: Path,
                     fresh: tuple[dict[str, Any], dict[str, str]] | None, *, rehash: bool,
                     progress: bool) -> dict[str, str] | None:
    """{file name: sha256} of a model recorded in the manifest, verified. A model the hub was
    just asked for (`fresh`: its origin and the hub's sha256 of its LFS files) is recorded
    first. None for a model the manifest does not know."""
    entry = _find_entry(read_manifest(models_dir), _rel(models_dir, path))
    if entry is None and fresh is not None:
        files = [f for f in sorted(path.iterdir()) if f.is_file()]
        entry = _new_entry(models_dir, path, files, fresh[0], known=fresh[1], progress=progress)
        _save_entry(models_dir, entry)
    if entry is None:
        return None
    hashes = verify_entry(models_dir, entry, full=rehash, progress=progress)
    return _entry_hashes(models_dir, path, hashes)


def _cached_snapshot(repo_id: str, revision: str | None, kind: str, spec: str,
                     models_dir: Path) -> Path:
    """The cached snapshot folder, looked up without any network access."""
    from huggingface_hub import snapshot_download

    try:
        # Only config.json is named: the completeness check then ignores repo files we never
        # download (other weight formats, code); weights are checked by `_check_model_dir`.
        found = snapshot_download(repo_id, revision=revision, cache_dir=models_dir,
                                  local_files_only=True, allow_patterns=_CONFIG_FILES)
    except Exception as exc:  # huggingface_hub raises several unrelated types here
        why = "offline mode is on"
        raise ModelNotCachedError(_missing_msg(kind, spec, models_dir, why)) from exc
    return Path(str(found))


class _HubLookupError(ModelError):
    """The hub could not tell us what `owner/name@revision` is (network, auth, not found)."""


def _online_snapshot(repo_id: str, revision: str | None, kind: str, spec: str,
                     models_dir: Path, progress: bool) -> tuple[Path, dict[str, str] | None]:
    """Download or refresh a snapshot. As huggingface_hub itself does, a hub that cannot be
    reached falls back to the cached snapshot (then there is nothing new to record)."""
    try:
        return _download_snapshot(repo_id, revision, kind, spec, models_dir, progress)
    except _HubLookupError as exc:
        try:
            return _cached_snapshot(repo_id, revision, kind, spec, models_dir), None
        except ModelNotCachedError:
            raise exc from exc.__cause__


def _hub_listing(repo_id: str, revision: str | None) -> tuple[str, dict[str, str | None]]:
    """(commit, {file: lfs sha256 or None}) of a hub repo at `revision` (one API call)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # network, auth, not found: all end the same way for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _HubLookupError(f"cannot look up {repo_id}@{revision or 'main'} on the Hugging Face "
                         f"hub: {type(exc).__name__}: {first}") from exc
    files = {s.rfilename: (s.lfs.sha256 if s.lfs is not None else None)
             for s in info.siblings or []}
    return str(info.sha), files


def _patterns(files: list[str]) -> list[str]:
    """allow_patterns for a download: config, tokenizer files, and ONE weight format."""
    wanted = _CONFIG_FILES + _TOKENIZER_FILES
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if single in files:
            return [*wanted, single]
        if index in files:
            stem = single.rsplit(".", 1)[0]
            return [*wanted, index, f"{stem}-*-of-*.{single.rsplit('.', 1)[1]}"]
    raise ModelError(f"hub repo files {sorted(files)} hold no model.safetensors "
                     "or pytorch_model.bin")


def _download_snapshot(repo_id: str, revision: str | None, kind: str, spec: str,
                       models_dir: Path, progress: bool) -> tuple[Path, dict[str, str]]:
    """Download (or find up to date) a hub snapshot pinned to the current commit; return it
    with the sha256 the hub publishes for its LFS files."""
    from huggingface_hub import snapshot_download

    commit, files = _hub_listing(repo_id, revision)
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        found = snapshot_download(repo_id, revision=commit, cache_dir=models_dir,
                                  allow_patterns=_patterns(list(files)),
                                  tqdm_class=None if progress else _quiet_tqdm())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"downloading {_KIND_LABEL[kind]} {spec} into {models_dir} failed: "
                         f"{first}") from exc
    _write_ref(Path(str(found)), revision or "main", commit)
    return Path(str(found)), {name: digest for name, digest in files.items() if digest}


def _write_ref(snapshot: Path, revision: str, commit: str) -> None:
    """Point refs/<revision> at `commit`, as huggingface_hub does when given a branch name:
    we download by commit (to pin what we listed), so it does not, and an offline run asking
    for `owner/name` or `owner/name@branch` must still find the snapshot."""
    if _COMMIT.fullmatch(revision):
        return
    ref = snapshot.parent.parent / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != commit:
        ref.write_text(commit)


def _quiet_tqdm() -> type:
    from tqdm.auto import tqdm

    class _Quiet(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Quiet


# ------------------------------------------------------------------ classifier
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
    else:
        if model_type not in PUBLISHED_MODEL_TYPES:
            raise ModelError(f"there is no published classifier for chunk size {model_type} "
                             "(only 300 and 500); pass your own with -p FILE")
        path = models_dir / "classifiers" / f"{model_type}_model.pth"
        label, repo_id = f"published:{model_type}", CLASSIFIER_REPO
        if not path.is_file():
            if offline:
                raise ModelNotCachedError(_missing_msg("classifier", path.name, path.parent,
                                                       "offline mode is on"))
            download_classifier(model_type, models_dir, progress=progress)
    entry = _find_entry(read_manifest(models_dir), _rel(models_dir, path))
    if entry is None:
        hashes = {f.name: sha256_file(f) for f in _classifier_files(path)}
        return ResolvedModel("classifier", label, path, repo_id, None, hashes)
    hashes = verify_entry(models_dir, entry, full=True)
    return ResolvedModel("classifier", label, path, entry.get("repo_id"), entry.get("revision"),
                         _entry_hashes(models_dir, path, hashes))


def _classifier_files(path: Path) -> list[Path]:
    """The files of a classifier: the `.pth` itself, or those of a converted directory."""
    return sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]


def download_classifier(model_type: int, models_dir: Path, *, progress: bool = True) -> Path:
    """Fetch the published `<model_type>_model.pth` from GitHub into `models_dir/classifiers`
    (temporary file, then atomic rename) and record it in the manifest."""
    name = f"{model_type}_model.pth"
    revision = _github_commit(CLASSIFIER_REPO, CLASSIFIER_BRANCH) or CLASSIFIER_BRANCH
    dest = Path(models_dir) / "classifiers" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    for template in (CLASSIFIER_URL, CLASSIFIER_LFS_URL):
        url = template.format(repo=CLASSIFIER_REPO, revision=revision, name=name)
        tmp = _fetch(url, dest.parent, progress)
        kind = _torch_file_kind(tmp)
        if kind == "torch":
            os.replace(tmp, dest)
            break
        tmp.unlink()
        if kind != "lfs-pointer":  # raw.githubusercontent serves LFS files as pointers
            raise ModelError(f"{url} did not serve a PyTorch file")
    else:
        raise ModelError(f"{url} served a Git LFS pointer instead of the model")
    origin = {"kind": "classifier", "spec": f"published:{model_type}",
              "repo_id": CLASSIFIER_REPO, "revision": revision, "source": url}
    entry = _new_entry(models_dir, dest, [dest], origin)
    _save_entry(models_dir, entry)
    return dest


def _github_commit(repo: str, branch: str) -> str | None:
    """The commit `branch` points at, so the manifest pins the classifier; None if unknown
    (rate limit, no network): the branch name is then recorded instead."""
    import urllib.request

    url = GITHUB_COMMIT_API.format(repo=repo, branch=branch)
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.github.sha",
                                               "User-Agent": "virnucpro"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            sha = resp.read(100).decode("ascii", "replace").strip()
    except (OSError, ValueError):
        return None
    return sha if _COMMIT.fullmatch(sha) else None


def _fetch(url: str, dest_dir: Path, progress: bool) -> Path:
    """Download `url` to a temporary file in `dest_dir` (same file system as the target,
    so the caller's rename is atomic)."""
    import urllib.request

    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = resp.headers.get("Content-Length")
            size = int(total) if total and total.isdigit() else None
            with _progress_bar(Path(url).name, size, progress, min_total=0) as advance:
                while block := resp.read(1 << 20):
                    out.write(block)
                    advance(len(block))
    except (OSError, ValueError) as exc:  # urllib's URLError/HTTPError are OSErrors
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"downloading {url} failed: {exc}") from exc
    return Path(tmp)


def _torch_file_kind(path: Path) -> str:
    """'torch' (zip or legacy pickle), 'lfs-pointer', or 'other', from the first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return "lfs-pointer" if head.startswith(b"version https://git-lfs") else "other"


# ------------------------------------------------------------------ download everything
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


# ------------------------------------------------------------------ info
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
    config = _read_json(path / "config.json")
    return {"weights": weights, "size_bytes": sum((path / w).stat().st_size for w in weights),
            "parameters": count_parameters(path, weights),
            "dims": {k: config[k] for k in _DIM_KEYS if k in config}}


def _classifier_facts(path: Path) -> dict[str, Any]:
    files = _classifier_files(path)
    facts: dict[str, Any] = {"weights": [f.name for f in files], "parameters": None,
                             "size_bytes": sum(f.stat().st_size for f in files), "dims": {}}
    try:
        from virnucpro.classifier import load_classifier
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
        lines.append(f"{_KIND_LABEL[r['kind']]}: {r['spec']}")
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
