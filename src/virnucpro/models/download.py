"""Downloads: hub snapshots (DNABERT-S, ESM-2) and the published classifiers from GitHub.

The only module that reaches the network, and only when a command asks for a model that is
not on disk and offline mode is off. A snapshot is pinned to the commit the hub lists, and its
LFS files are checked against the sha256 the hub publishes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from virnucpro.errors import ModelError, ModelNotCachedError
from virnucpro.models.manifest import new_entry, save_entry
from virnucpro.progress import byte_bar

CLASSIFIER_REPO = "Li-Jing-1997/VirNucPro"  # GitHub; 300_model.pth and 500_model.pth at the root
CLASSIFIER_BRANCH = "main"
# `{revision}` is a commit when the GitHub API could resolve the branch, else the branch name.
CLASSIFIER_URL = "https://raw.githubusercontent.com/{repo}/{revision}/{name}"
CLASSIFIER_LFS_URL = "https://media.githubusercontent.com/media/{repo}/{revision}/{name}"
GITHUB_COMMIT_API = "https://api.github.com/repos/{repo}/commits/{branch}"
KIND_LABEL = {"dnabert": "DNABERT-S", "esm": "ESM-2", "classifier": "classifier"}
KIND_FLAG = {"dnabert": "--dnabert DIR", "esm": "--esm DIR", "classifier": "-p FILE"}
# What we load from a hub repo; never code (*.py) and never a second copy of the weights.
_CONFIG_FILES = ["config.json"]
_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt"]
COMMIT = re.compile(r"[0-9a-f]{40}")


def missing_msg(kind: str, spec: str, where: Path, why: str) -> str:
    return (f"{KIND_LABEL[kind]} model {spec} is not in {where} and {why}; run `virnucpro "
            f"models download` (with network) or pass a local copy with {KIND_FLAG[kind]}")


def cached_snapshot(repo_id: str, revision: str | None, kind: str, spec: str,
                     models_dir: Path) -> Path:
    """The cached snapshot folder, looked up without any network access."""
    from huggingface_hub import snapshot_download

    try:
        # Only config.json is named: the completeness check then ignores repo files we never
        # download (other weight formats, code); weights are checked by `check_model_dir`.
        found = snapshot_download(repo_id, revision=revision, cache_dir=models_dir,
                                  local_files_only=True, allow_patterns=_CONFIG_FILES)
    except Exception as exc:  # huggingface_hub raises several unrelated types here
        why = "offline mode is on"
        raise ModelNotCachedError(missing_msg(kind, spec, models_dir, why)) from exc
    return Path(str(found))


class _HubLookupError(ModelError):
    """The hub could not tell us what `owner/name@revision` is (network, auth, not found)."""


def online_snapshot(repo_id: str, revision: str | None, kind: str, spec: str,
                     models_dir: Path, progress: bool) -> tuple[Path, dict[str, str] | None]:
    """Download or refresh a snapshot. As huggingface_hub itself does, a hub that cannot be
    reached falls back to the cached snapshot (then there is nothing new to record)."""
    try:
        return _download_snapshot(repo_id, revision, kind, spec, models_dir, progress)
    except _HubLookupError as exc:
        try:
            return cached_snapshot(repo_id, revision, kind, spec, models_dir), None
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
        raise ModelError(f"downloading {KIND_LABEL[kind]} {spec} into {models_dir} failed: "
                         f"{first}") from exc
    _write_ref(Path(str(found)), revision or "main", commit)
    return Path(str(found)), {name: digest for name, digest in files.items() if digest}


def _write_ref(snapshot: Path, revision: str, commit: str) -> None:
    """Point refs/<revision> at `commit`, as huggingface_hub does when given a branch name:
    we download by commit (to pin what we listed), so it does not, and an offline run asking
    for `owner/name` or `owner/name@branch` must still find the snapshot."""
    if COMMIT.fullmatch(revision):
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
    entry = new_entry(models_dir, dest, [dest], origin)
    save_entry(models_dir, entry)
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
    return sha if COMMIT.fullmatch(sha) else None


def _fetch(url: str, dest_dir: Path, progress: bool) -> Path:
    """Download `url` to a temporary file in `dest_dir` (same file system as the target,
    so the caller's rename is atomic)."""
    import urllib.request

    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = resp.headers.get("Content-Length")
            size = int(total) if total and total.isdigit() else None
            with byte_bar(Path(url).name, size, progress, min_total=0) as advance:
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
