"""The models directory's manifest: what was downloaded, its size, mtime and sha256.

    <models dir>/manifest.json   {"format": 1, "models": [{path, kind, spec, repo_id,
                                  revision, source, files: {rel path: {size, mtime_ns, sha256}}}]}

A recorded model is checked cheaply on each use (size and mtime of every file); a file whose
mtime moved is hashed again, and one whose size or content changed is refused with a
`ModelError` naming it. Also here: what a model directory must hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from virnucpro.errors import ModelError, VirnucproError
from virnucpro.files import read_json, sha256_file, write_json
from virnucpro.progress import byte_bar

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def hash_file(path: Path, progress: bool = False) -> str:
    """sha256 of a file, with a progress bar on stderr for big files when asked."""
    with byte_bar(f"sha256 {path.name}", path.stat().st_size, progress) as advance:
        return sha256_file(path, advance)


HASH_CACHE = "sha256-cache.json"  # in the models dir: hashes of local files the manifest lacks


def cached_hash(path: Path, cache_dir: Path, progress: bool = False,
                rehash: bool = False) -> str:
    """sha256 of a local model file the manifest does not know (a directory given with
    --dnabert/--esm), remembered by (path, size, mtime, inode): a 6 GB checkpoint is hashed
    once, not on every run, and again as soon as any of the four changes. `rehash`: always
    hash (`models info --verify`)."""
    info = path.stat()
    key, stamp = str(path.resolve()), [info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev]
    store = Path(cache_dir) / HASH_CACHE
    try:
        cache = read_json(store, missing_ok=True) or {}
    except VirnucproError:  # unreadable: start it again
        cache = {}
    hit = cache.get(key) if isinstance(cache, dict) else None
    if not rehash and isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["sha256"])
    sha = hash_file(path, progress)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"stamp": stamp, "sha256": sha}
    with contextlib.suppress(VirnucproError, OSError):  # a read-only models dir: no cache
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json(store, cache)
    return sha


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a model's files (a config, the manifest); ModelError otherwise."""
    data = read_json(path, error=ModelError)
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def weight_files(model_dir: Path) -> list[str]:
    """The weight files a model directory holds, safetensors first (names relative to it)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (model_dir / single).is_file():
            return [single]
        if (model_dir / index).is_file():
            weight_map = read_json_object(model_dir / index).get("weight_map", {})
            return sorted(set(weight_map.values()))
    raise ModelError(f"{model_dir} holds no weights (model.safetensors or pytorch_model.bin)")


def check_weight_file(path: Path) -> None:
    """A weight file that is whole: a safetensors header whose tensors end exactly at the end
    of the file, or a PyTorch zip whose directory reads. A truncated or damaged file is a
    `ModelError` naming it (before any worker tries to load it)."""
    import struct
    import zipfile

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if path.suffix == ".safetensors":
                if len(head) < 8:
                    raise ValueError("shorter than a safetensors header")
                (n,) = struct.unpack("<Q", head)
                if n > min(size - 8, 100 << 20):
                    raise ValueError(f"its header length {n} does not fit the file")
                header = json.loads(fh.read(n))
                end = max((int(m["data_offsets"][1]) for k, m in header.items()
                           if k != "__metadata__"), default=0)
                if 8 + n + end != size:
                    raise ValueError(f"{size} bytes, but its header describes {8 + n + end}")
            elif head.startswith(b"PK"):
                fh.seek(0)
                zipfile.ZipFile(fh).infolist()
            elif not head.startswith(b"\x80"):  # a legacy (non-zip) torch.save pickle
                raise ValueError("not a PyTorch weights file")
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: damaged or truncated weights ({exc}); download it again "
                         "(`virnucpro models download`) or replace it") from None


def check_model_dir(path: Path) -> list[str]:
    """Check that `path` is a loadable model directory; return its weight files."""
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory (expected a model directory)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json")
    names = weight_files(path)
    for name in names:
        if not (path / name).is_file():
            raise ModelError(f"{path} lacks weight file {name}")
        check_weight_file(path / name)
    return names


def manifest_path(models_dir: Path) -> Path:
    return Path(models_dir) / MANIFEST_NAME


def read_manifest(models_dir: Path) -> dict[str, Any]:
    """The manifest of `models_dir` (an empty one when the file does not exist)."""
    path = manifest_path(models_dir)
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "models": []}
    data = read_json_object(path)
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), list):
        raise ModelError(f"{path} is not a virnucpro manifest (format {MANIFEST_FORMAT})")
    return data


def write_manifest(models_dir: Path, manifest: dict[str, Any]) -> None:
    path = manifest_path(models_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: concurrent readers see the old or the new manifest


def rel_path(models_dir: Path, path: Path) -> str | None:
    """`path` relative to `models_dir` (posix), or None when it lies outside."""
    # Resolve the parent only: snapshot files are symlinks into blobs/, keep their own name.
    try:
        full = path.parent.resolve() / path.name
        return full.relative_to(Path(models_dir).resolve()).as_posix()
    except ValueError:
        return None


def find_entry(manifest: dict[str, Any], rel: str | None) -> dict[str, Any] | None:
    return next((e for e in manifest["models"] if rel is not None and e.get("path") == rel), None)


def save_entry(models_dir: Path, entry: dict[str, Any]) -> None:
    """Add or replace (by path) one manifest entry."""
    manifest = read_manifest(models_dir)
    manifest["models"] = [e for e in manifest["models"] if e.get("path") != entry["path"]]
    manifest["models"].append(entry)
    manifest["models"].sort(key=lambda e: e["path"])
    write_manifest(models_dir, manifest)


def file_record(path: Path, sha256: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Size, mtime and sha256 of one file, as stored in the manifest."""
    st = path.stat()
    digest = sha256 or hash_file(path, progress)
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
            if hash_file(path, progress) != rec["sha256"]:
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
    entry = find_entry(manifest, entry_path)
    if entry is not None:
        for rel, mtime in mtimes.items():
            entry["files"][rel]["mtime_ns"] = mtime
        write_manifest(models_dir, manifest)


def new_entry(models_dir: Path, path: Path, files: list[Path], origin: dict[str, Any],
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
        records[rel_path(models_dir, f)] = rec
    return {**origin, "path": rel_path(models_dir, path), "files": records,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def entry_hashes(models_dir: Path, path: Path, hashes: dict[str, str]) -> dict[str, str]:
    """Manifest hashes (keyed relative to the models dir) re-keyed relative to `path`."""
    base = rel_path(models_dir, path) or ""
    out = {}
    for rel, digest in hashes.items():
        inside = path.is_dir() and rel.startswith(base + "/")
        out[rel[len(base) + 1:] if inside else Path(rel).name] = digest
    return out
