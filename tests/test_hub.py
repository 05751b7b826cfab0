"""Model resolution, manifest and `models info`. No network: sockets and the hub API raise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from virnucpro.cli import main
from virnucpro.errors import ModelError
from virnucpro.models import download, info, store
from virnucpro.models import manifest as manifest_file
from virnucpro.models.manifest import manifest_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT2 = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_config(model_dir: Path, hidden: int, layers: int = 2) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
              "intermediate_size": 4 * hidden, "vocab_size": 33, "auto_map": {"x": "y"}}
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")


def make_safetensors_dir(model_dir: Path, hidden: int = 24) -> Path:
    """A model directory with real safetensors weights: 33*h + h*h + h elements."""
    write_config(model_dir, hidden)
    rng = np.random.default_rng(0)
    tensors = {"embed.weight": rng.normal(size=(33, hidden)).astype(np.float32),
               "layer.weight": rng.normal(size=(hidden, hidden)).astype(np.float32),
               "layer.bias": np.zeros(hidden, dtype=np.float32)}
    save_file(tensors, str(model_dir / "model.safetensors"))
    (model_dir / "vocab.txt").write_text("<cls>\n<pad>\n<eos>\n<unk>\nA\n", encoding="utf-8")
    return model_dir


def make_bin_dir(model_dir: Path, hidden: int = 16) -> Path:
    """A model directory with a real pytorch_model.bin state dict: 4096*h + h*h elements."""
    import torch

    write_config(model_dir, hidden)
    state = {"embeddings.word_embeddings.weight": torch.zeros(4096, hidden),
             "encoder.layer.0.mlp.wo.weight": torch.ones(hidden, hidden)}
    torch.save(state, model_dir / "pytorch_model.bin")
    (model_dir / "tokenizer.json").write_text("{}", encoding="utf-8")
    return model_dir


def populate_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT,
                   ref: str | None = "main") -> Path:
    """Lay `source`'s files out as the Hugging Face cache does: blobs + snapshot symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(source.iterdir()):
        blob = repo / "blobs" / sha256(f)
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """Stand-ins for the two hub calls a download makes: the repo listing and
    `snapshot_download`, which here copies a prepared directory into the cache layout."""
    repos = {"org/esm-tiny": make_safetensors_dir(tmp_path / "src-esm"),
             "org/dna-tiny": make_bin_dir(tmp_path / "src-dna")}
    calls: list[dict[str, object]] = []

    def listing(repo_id: str, revision: str | None) -> tuple[str, dict[str, str | None]]:
        files: dict[str, str | None] = {f.name: None for f in repos[repo_id].iterdir()}
        for name in ("model.safetensors", "pytorch_model.bin"):
            if name in files:
                files[name] = sha256(repos[repo_id] / name)  # what the hub publishes for LFS
        files.update({"bert_layers.py": None, "tf_model.h5": "0" * 64})
        return COMMIT, files

    def snapshot_download(repo_id: str, *, revision: str, cache_dir: Path,
                          allow_patterns: list[str], **kwargs: object) -> str:
        if kwargs.get("local_files_only"):  # offline look-ups use the real thing
            return real_snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                          allow_patterns=allow_patterns, **kwargs)
        calls.append({"repo_id": repo_id, "revision": revision, "patterns": allow_patterns,
                      **kwargs})
        snap = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
        if not snap.exists():  # given a commit, the real one writes no refs/ either
            populate_cache(Path(cache_dir), repo_id, repos[repo_id], revision, ref=None)
        return str(snap)

    import huggingface_hub

    real_snapshot_download = huggingface_hub.snapshot_download
    monkeypatch.setattr(download, "_hub_listing", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return {"calls": calls, **repos}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier pickled as the original does, for input 16 + 24 (the two dirs above)."""
    from virnucpro.testing import make_tiny_classifier

    path = tmp_path_factory.mktemp("clf") / "model.pth"
    return make_tiny_classifier(path, input_dim=16 + 24, hidden_dim=8)


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           tiny_classifier: Path) -> Path:
    """A file:// stand-in for GitHub: the commit API answers COMMIT2 and raw files exist."""
    root = tmp_path / "github"
    (root / "api").mkdir(parents=True)
    (root / "api" / "main").write_text(COMMIT2 + "\n")
    for n in (300, 500):
        (root / "raw" / COMMIT2).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_classifier, root / "raw" / COMMIT2 / f"{n}_model.pth")
    monkeypatch.setattr(download, "GITHUB_COMMIT_API", f"file://{root}/api/{{branch}}")
    monkeypatch.setattr(download, "CLASSIFIER_URL", f"file://{root}/raw/{{revision}}/{{name}}")
    monkeypatch.setattr(download, "CLASSIFIER_LFS_URL", f"file://{root}/media/{{revision}}/{{name}}")
    return root


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(("spec", "expected"), [
    ("zhihan1996/DNABERT-S", ("zhihan1996/DNABERT-S", None)),
    ("facebook/esm2_t36_3B_UR50D@main", ("facebook/esm2_t36_3B_UR50D", "main")),
    (f"a.b/c_d-e@{COMMIT}", ("a.b/c_d-e", COMMIT)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
])
def test_parse_hub_id(spec: str, expected: tuple[str, str | None]) -> None:
    assert store.parse_hub_id(spec) == expected


@pytest.mark.parametrize("spec", ["name", "a/b/c", "/abs/dir", "./rel/dir", "org/na--me",
                                  "org/name@", "", "org/../x"])
def test_parse_hub_id_rejects(spec: str) -> None:
    with pytest.raises(ModelError, match="neither an existing directory nor a hub id"):
        store.parse_hub_id(spec)


def test_env_says_offline() -> None:
    assert [store.env_says_offline(v) for v in ("1", "true", "YES", " on ")] == [True] * 4
    assert [store.env_says_offline(v) for v in (None, "", "0", "false", "no")] == [False] * 5


# ------------------------------------------------------------------ local directories
def test_local_dir_is_used_as_is(tmp_path: Path) -> None:
    d = make_safetensors_dir(tmp_path / "esm")
    rm = store.resolve_model(str(d), "esm", offline=True, cache_dir=tmp_path / "cache")
    assert rm == store.ResolvedModel("esm", str(d), d, None, None, {})


def test_local_dir_hashes_weights_on_request(tmp_path: Path) -> None:
    d = make_bin_dir(tmp_path / "dna")
    rm = store.resolve_model(str(d), "dnabert", offline=False, cache_dir=tmp_path / "cache",
                           verify=True)
    assert rm.sha256 == {"pytorch_model.bin": sha256(d / "pytorch_model.bin")}
    # A local directory is never recorded in the manifest (its hash is only remembered, by
    # path, size, mtime and inode, so that a 6 GB checkpoint is not hashed on every run).
    assert not manifest_path(tmp_path / "cache").exists()


def test_local_snapshot_dir_reports_its_origin(tmp_path: Path) -> None:
    snap = populate_cache(tmp_path / "elsewhere", "org/esm-tiny",
                          make_safetensors_dir(tmp_path / "src"))
    rm = store.resolve_model(str(snap), "esm", offline=True, cache_dir=tmp_path / "cache")
    assert (rm.path, rm.repo_id, rm.revision) == (snap, "org/esm-tiny", COMMIT)


def test_bad_local_dirs(tmp_path: Path) -> None:
    d = make_safetensors_dir(tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(ModelError, match=r"m has no config\.json"):
        store.resolve_model(str(d), "esm", offline=True, cache_dir=tmp_path)
    write_config(d, 8)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds no weights"):
        store.resolve_model(str(d), "esm", offline=True, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="is not a directory"):
        store.resolve_model(str(d / "config.json"), "esm", offline=True, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="neither an existing directory nor a hub id"):
        store.resolve_model(str(tmp_path / "absent"), "esm", offline=True, cache_dir=tmp_path)
    with pytest.raises(ModelError, match="unknown model kind 'bert'"):
        store.resolve_model(str(d), "bert", offline=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(("files", "expected"), [
    (["model.safetensors", "pytorch_model.bin", "config.json"], ["model.safetensors"]),
    (["pytorch_model.bin", "config.json", "bert_layers.py"], ["pytorch_model.bin"]),
    (["model.safetensors.index.json", "model-00001-of-00002.safetensors"],
     ["model.safetensors.index.json", "model-*-of-*.safetensors"]),
])
def test_download_patterns_pick_one_weight_format_and_no_code(files: list[str],
                                                             expected: list[str]) -> None:
    base = ["config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt"]
    assert download._patterns(files) == base + expected


def test_download_patterns_without_weights() -> None:
    with pytest.raises(ModelError, match=r"hold no model\.safetensors or pytorch_model\.bin"):
        download._patterns(["config.json", "tf_model.h5"])


def test_sharded_weight_files(tmp_path: Path) -> None:
    write_config(tmp_path, 4)
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors",
                            "b": "model-00001-of-00002.safetensors",
                            "c": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert manifest_file.weight_files(tmp_path) == ["model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors"]


# ------------------------------------------------------------------ hub ids, offline
@pytest.mark.parametrize(("kind", "flag"), [("dnabert", "--dnabert DIR"), ("esm", "--esm DIR")])
def test_offline_missing_hub_model_fails_at_once(tmp_path: Path, kind: str, flag: str) -> None:
    start = time.perf_counter()
    with pytest.raises(store.ModelNotCachedError) as info:
        store.resolve_model("org/not-here", kind, offline=True,  # type: ignore[arg-type]
                          cache_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert "virnucpro models download" in msg and flag in msg and "offline" in msg
    assert "\n" not in msg


def test_offline_resolves_a_populated_cache(tmp_path: Path) -> None:
    src = make_safetensors_dir(tmp_path / "src")
    snap = populate_cache(tmp_path / "cache", "org/esm-tiny", src)
    for spec in ("org/esm-tiny", "org/esm-tiny@main", f"org/esm-tiny@{COMMIT}"):
        rm = store.resolve_model(spec, "esm", offline=True, cache_dir=tmp_path / "cache")
        assert rm == store.ResolvedModel("esm", spec, snap, "org/esm-tiny", COMMIT, {})
    rm = store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=tmp_path / "cache",
                           verify=True)
    assert rm.sha256 == {"model.safetensors": sha256(src / "model.safetensors")}
    with pytest.raises(store.ModelNotCachedError, match="not in"):
        store.resolve_model("org/esm-tiny@v2", "esm", offline=True, cache_dir=tmp_path / "cache")


def test_unreachable_hub_falls_back_to_the_cache(tmp_path: Path) -> None:
    """Online but the hub cannot be reached (here: the network guard) -> the cached copy."""
    with pytest.raises(ModelError, match=r"cannot look up org/esm-tiny@main on the Hugging "
                                         r"Face hub: AssertionError: the test tried"):
        store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=tmp_path)
    snap = populate_cache(tmp_path, "org/esm-tiny", make_safetensors_dir(tmp_path / "src"))
    rm = store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=tmp_path)
    assert rm == store.ResolvedModel("esm", "org/esm-tiny", snap, "org/esm-tiny", COMMIT, {})
    assert not (tmp_path / "manifest.json").exists()


def test_offline_cache_without_weights_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_config(src, 8)
    populate_cache(tmp_path / "cache", "org/partial", src)
    with pytest.raises(ModelError, match="holds no weights"):
        store.resolve_model("org/partial", "esm", offline=True, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------ download + manifest
def test_download_records_manifest_then_verifies(tmp_path: Path,
                                                 fake_hub: dict[str, object]) -> None:
    cache = tmp_path / "models"
    rm = store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=cache)
    snap = cache / "models--org--esm-tiny" / "snapshots" / COMMIT
    src = fake_hub["org/esm-tiny"]
    assert isinstance(src, Path)
    assert rm == store.ResolvedModel("esm", "org/esm-tiny", snap, "org/esm-tiny", COMMIT,
                                   {"model.safetensors": sha256(src / "model.safetensors")})
    (call,) = fake_hub["calls"]  # type: ignore[misc]
    assert call["revision"] == COMMIT  # pinned to the listed commit
    assert call["patterns"] == ["config.json", "tokenizer.json", "tokenizer_config.json",
                                "special_tokens_map.json", "vocab.txt", "model.safetensors"]

    manifest = json.loads((cache / "manifest.json").read_text())
    (entry,) = manifest["models"]
    base = f"models--org--esm-tiny/snapshots/{COMMIT}"
    assert (entry["kind"], entry["repo_id"], entry["revision"], entry["path"]) == \
        ("esm", "org/esm-tiny", COMMIT, base)
    assert sorted(entry["files"]) == [f"{base}/{n}" for n in
                                      ("config.json", "model.safetensors", "vocab.txt")]
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        rec = entry["files"][f"{base}/{name}"]
        assert rec["size"] == (src / name).stat().st_size
        assert rec["sha256"] == sha256(src / name)

    # Offline, the recorded hashes come back without hashing anything again.
    again = store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache)
    assert again == rm


def test_modified_file_is_refused(tmp_path: Path, fake_hub: dict[str, object]) -> None:
    cache = tmp_path / "models"
    rm = store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=cache)
    weights = rm.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content, new mtime
    os.chmod(weights.resolve(), 0o644)
    weights.resolve().write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.safetensors changed since it was downloaded "
                                         r"\(sha256 differs"):
        store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache)
    weights.resolve().write_bytes(bytes(data) + b"x")
    with pytest.raises(ModelError, match=r"model\.safetensors changed .*\(size"):
        store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache)
    weights.resolve().unlink()
    with pytest.raises(ModelError, match=r"model\.safetensors is listed in .* but missing"):
        store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache)


def test_touched_but_unchanged_file_is_accepted_and_rerecorded(
        tmp_path: Path, fake_hub: dict[str, object]) -> None:
    cache = tmp_path / "models"
    rm = store.resolve_model("org/dna-tiny", "dnabert", offline=False, cache_dir=cache)
    weights = rm.path / "pytorch_model.bin"
    later = weights.stat().st_mtime_ns + 5_000_000_000
    os.utime(weights, ns=(later, later))
    assert store.resolve_model("org/dna-tiny", "dnabert", offline=True, cache_dir=cache) == rm
    (entry,) = manifest_file.read_manifest(cache)["models"]
    rel = f"models--org--dna-tiny/snapshots/{COMMIT}/pytorch_model.bin"
    assert entry["files"][rel]["mtime_ns"] == later


def test_rehash_catches_an_edit_that_kept_size_and_mtime(tmp_path: Path,
                                                         fake_hub: dict[str, object]) -> None:
    cache = tmp_path / "models"
    rm = store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=cache)
    blob = (rm.path / "model.safetensors").resolve()
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))  # a sneaky edit: same size and mtime
    # The per-run check (size + mtime) does not see it, even with verify=True ...
    assert store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache) == rm
    assert store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache,
                             verify=True) == rm
    # ... a full re-hash does.
    with pytest.raises(ModelError, match="sha256 differs"):
        store.resolve_model("org/esm-tiny", "esm", offline=True, cache_dir=cache, rehash=True)


def test_download_checks_the_published_sha256(tmp_path: Path, fake_hub: dict[str, object],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = download._hub_listing

    def lying(repo_id: str, revision: str | None) -> tuple[str, dict[str, str | None]]:
        commit, files = real(repo_id, revision)
        return commit, {**files, "model.safetensors": "f" * 64}

    monkeypatch.setattr(download, "_hub_listing", lying)
    with pytest.raises(ModelError, match="does not match the sha256 published by"):
        store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_manifest_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"models": {}}')
    with pytest.raises(ModelError, match="is not a virnucpro manifest"):
        manifest_file.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ModelError, match=r"manifest\.json: cannot read"):
        manifest_file.read_manifest(tmp_path)


# ------------------------------------------------------------------ classifier
def test_classifier_from_a_file_is_hashed(tmp_path: Path, tiny_classifier: Path) -> None:
    rm = store.resolve_classifier(tiny_classifier, 500, models_dir=tmp_path, offline=True)
    assert rm == store.ResolvedModel("classifier", str(tiny_classifier), tiny_classifier, None,
                                   None, {"model.pth": sha256(tiny_classifier)})
    with pytest.raises(ModelError, match=r"classifier not found: .*nope\.pth"):
        store.resolve_classifier(tmp_path / "nope.pth", 500, models_dir=tmp_path, offline=True)


def test_classifier_published_offline_missing(tmp_path: Path) -> None:
    with pytest.raises(store.ModelNotCachedError) as info:
        store.resolve_classifier(None, 300, models_dir=tmp_path, offline=True)
    assert "virnucpro models download" in str(info.value) and "-p FILE" in str(info.value)
    with pytest.raises(ModelError, match=r"no published classifier for chunk size 400.*-p FILE"):
        store.resolve_classifier(None, 400, models_dir=tmp_path, offline=True)


def test_classifier_download_records_commit_and_sha256(tmp_path: Path, github: Path,
                                                       tiny_classifier: Path) -> None:
    rm = store.resolve_classifier(None, 500, models_dir=tmp_path, offline=False)
    path = tmp_path / "classifiers" / "500_model.pth"
    assert rm == store.ResolvedModel("classifier", "published:500", path, download.CLASSIFIER_REPO,
                                   COMMIT2, {"500_model.pth": sha256(tiny_classifier)})
    (entry,) = manifest_file.read_manifest(tmp_path)["models"]
    assert entry["source"] == f"file://{github}/raw/{COMMIT2}/500_model.pth"
    assert entry["files"]["classifiers/500_model.pth"]["sha256"] == sha256(tiny_classifier)
    assert [p.name for p in path.parent.iterdir()] == ["500_model.pth"]  # no temp left
    assert store.resolve_classifier(None, 500, models_dir=tmp_path, offline=True) == rm
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"500_model\.pth changed since it was downloaded"):
        store.resolve_classifier(None, 500, models_dir=tmp_path, offline=True)


def test_classifier_download_follows_lfs_pointer(tmp_path: Path, github: Path,
                                                 tiny_classifier: Path) -> None:
    raw = github / "raw" / COMMIT2 / "300_model.pth"
    raw.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    (github / "media" / COMMIT2).mkdir(parents=True)
    shutil.copyfile(tiny_classifier, github / "media" / COMMIT2 / "300_model.pth")
    path = download.download_classifier(300, tmp_path, progress=False)
    assert sha256(path) == sha256(tiny_classifier)
    (entry,) = manifest_file.read_manifest(tmp_path)["models"]
    assert entry["source"] == f"file://{github}/media/{COMMIT2}/300_model.pth"


def test_classifier_download_refuses_other_content(tmp_path: Path, github: Path) -> None:
    (github / "raw" / COMMIT2 / "300_model.pth").write_text("<html>rate limited</html>")
    with pytest.raises(ModelError, match="did not serve a PyTorch file"):
        download.download_classifier(300, tmp_path, progress=False)
    assert not (tmp_path / "classifiers" / "300_model.pth").exists()
    assert list((tmp_path / "classifiers").iterdir()) == []


def test_classifier_branch_is_recorded_when_the_commit_is_unknown(
        tmp_path: Path, github: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "GITHUB_COMMIT_API", f"file://{github}/no-api/{{branch}}")
    (github / "raw" / "main").mkdir()
    shutil.copyfile(github / "raw" / COMMIT2 / "300_model.pth",
                    github / "raw" / "main" / "300_model.pth")
    download.download_classifier(300, tmp_path, progress=False)
    assert manifest_file.read_manifest(tmp_path)["models"][0]["revision"] == "main"


def test_download_models_fetches_everything(tmp_path: Path, fake_hub: dict[str, object],
                                            github: Path) -> None:
    dest = tmp_path / "models"
    manifest = store.download_models("all", dest, progress=False, dnabert="org/dna-tiny",
                                   esm="org/esm-tiny")
    assert manifest == dest / "manifest.json"
    entries = manifest_file.read_manifest(dest)["models"]
    assert [(e["kind"], e["revision"], e["path"]) for e in entries] == [
        ("classifier", COMMIT2, "classifiers/300_model.pth"),
        ("classifier", COMMIT2, "classifiers/500_model.pth"),
        ("dnabert", COMMIT, f"models--org--dna-tiny/snapshots/{COMMIT}"),
        ("esm", COMMIT, f"models--org--esm-tiny/snapshots/{COMMIT}"),
    ]
    with pytest.raises(ModelError, match="unknown model type '400'"):
        store.download_models("400", dest, progress=False)


# ------------------------------------------------------------------ info
def test_count_parameters_reads_headers_only(tmp_path: Path) -> None:
    st = make_safetensors_dir(tmp_path / "st", hidden=24)
    assert info.count_parameters(st, ["model.safetensors"]) == 33 * 24 + 24 * 24 + 24
    pt = make_bin_dir(tmp_path / "pt", hidden=16)
    assert info.count_parameters(pt, ["pytorch_model.bin"]) == 4096 * 16 + 16 * 16
    assert info.models_info_params(pt) == 4096 * 16 + 16 * 16
    assert info.models_info_params(st) == 33 * 24 + 24 * 24 + 24
    (st / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        info.count_parameters(st, ["model.safetensors"])


def test_models_info_cli_on_local_dirs(tmp_path: Path, tiny_classifier: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    dna = make_bin_dir(tmp_path / "dna", hidden=16)
    esm = make_safetensors_dir(tmp_path / "esm", hidden=24)
    rc = main(["models", "info", "--dnabert", str(dna), "--esm", str(esm), "-p",
               str(tiny_classifier), "--offline", "--models-dir", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert rc == 0, out
    blocks = out.split("\n")
    assert blocks[0] == f"DNABERT-S: {dna}"
    assert f"  path        {dna}" in blocks
    assert "  status      ok" in blocks
    assert f"  parameters  {4096 * 16 + 16 * 16:,}" in blocks
    assert "  dims        hidden_size=16 num_hidden_layers=2 num_attention_heads=4 " \
           "intermediate_size=64 vocab_size=33" in blocks
    assert f"ESM-2: {esm}" in blocks
    assert f"  parameters  {33 * 24 + 24 * 24 + 24:,}" in blocks
    assert f"classifier: {tiny_classifier}" in blocks
    assert "  dims        input_dim=40 hidden_dim=8" in blocks
    assert f"  sha256      model.pth {sha256(tiny_classifier)}" in blocks


def test_models_info_flags_a_classifier_of_the_wrong_width(
        tmp_path: Path, tiny_classifier: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dna = make_bin_dir(tmp_path / "dna", hidden=16)
    esm = make_safetensors_dir(tmp_path / "esm", hidden=32)
    rc = main(["models", "info", "--dnabert", str(dna), "--esm", str(esm), "-p",
               str(tiny_classifier), "--models-dir", str(tmp_path)])
    assert rc == 1
    assert "classifier input_dim 40 != DNABERT-S 16 + ESM-2 32" in capsys.readouterr().out


def test_models_info_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models", "info", "--models-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0  # online, a run would download what is missing
    assert out.count("status      not downloaded (a run downloads it") == 3
    assert "DNABERT-S: zhihan1996/DNABERT-S" in out and "classifier: published:500" in out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by the CLI like --offline
    rc = main(["models", "info", "--models-dir", str(tmp_path), "-m", "300"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.count("status      missing (") == 3
    assert "ESM-2 model facebook/esm2_t36_3B_UR50D is not in" in out


def test_models_info_reports_a_broken_download(tmp_path: Path, fake_hub: dict[str, object],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rm = store.resolve_model("org/esm-tiny", "esm", offline=False, cache_dir=tmp_path)
    (rm.path / "vocab.txt").resolve().write_text("changed")
    rc = main(["models", "info", "--esm", "org/esm-tiny", "--models-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "vocab.txt changed since it was downloaded" in out


def test_models_download_refuses_when_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "download", "--dest", str(tmp_path)]) == 1
    assert capsys.readouterr().err == \
        "virnucpro: error: HF_HUB_OFFLINE is set: unset it to download models\n"


def test_models_download_cli(tmp_path: Path, fake_hub: dict[str, object], github: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    # The command downloads the defaults: point them at the stand-in repos.
    monkeypatch.setattr(store.download_models, "__kwdefaults__",
                        {"progress": True, "dnabert": "org/dna-tiny", "esm": "org/esm-tiny"})
    assert main(["models", "download", "--model-type", "300", "--dest", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out == f"models recorded in {tmp_path / 'm' / 'manifest.json'}\n"
    assert [e["kind"] for e in manifest_file.read_manifest(tmp_path / "m")["models"]] == \
        ["classifier", "dnabert", "esm"]
