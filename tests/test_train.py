"""`virnucpro train` with tiny models on a data set with a composition signal: it learns,
the saved model reloads and predicts the same, and a rerun reuses the cached embeddings."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAIN_CHUNK, train_args

from virnucpro.cli import main
from virnucpro.errors import InputError
from virnucpro.fit import Recipe, fit, split_indices
from virnucpro.frames import iter_record_frames
from virnucpro.models.classifier import classify, load_classifier
from virnucpro.outputs import HISTORY_COLUMNS
from virnucpro.reader import read_records
from virnucpro.selection import CdsIndex, kept_records, select_frames
from virnucpro.train import TrainConfig, labelled_records

CHUNK = TRAIN_CHUNK


@pytest.fixture(scope="module")
def data(train_data) -> dict[str, Path]:
    return train_data


def _args(models, data, out: Path, *extra: str) -> list[str]:
    return train_args(models, data, out, *extra)


def _info(model_dir: Path) -> dict:
    return json.loads((model_dir / "classifier.json").read_text())


def _cached_features(model_dir: Path) -> tuple[list[str], np.ndarray]:
    """Frame ids and features of every unit in a model's features cache, in unit order."""
    cache = Path(_info(model_dir)["training"]["features_cache"])
    ids, feats = [], []
    for unit in sorted((cache / "units").glob("*.npz")):
        with np.load(unit) as z:
            ids.extend(z["frame_ids"].tolist())
            feats.append(z["features"])
    return ids, np.concatenate(feats)


def _no_models(monkeypatch) -> None:
    """Make any attempt to start the embedding workers (which load the models) fail."""
    def refuse(*_args):
        raise AssertionError("workers were started although every feature was cached")

    monkeypatch.setattr("virnucpro.runtime.engine.Pool", refuse)


# ------------------------------------------------------------------ pieces
def test_cds_index_matches_substring_search():
    rng = random.Random(0)
    proteins = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(1, 120)))
                for _ in range(60)]
    index = CdsIndex([p + "*" for p in proteins] + [""])  # a trailing stop is dropped
    queries = [p[a:b] for p in proteins for a, b in [sorted(rng.sample(range(len(p) + 1), 2))
                                                     for _ in range(5)] if b > a]
    queries += ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n))
                for n in (1, 3, 8, 15, 16, 40) for _ in range(20)]
    queries += [proteins[0] + proteins[1], proteins[2][-4:] + proteins[3][:4]]  # across ends
    assert len(queries) > 300
    for q in queries:
        assert (q in index) == any(q in p for p in proteins), q


def test_select_frames_filters_and_balances(data, tmp_path):
    cfg = TrainConfig(viral=(str(data["viral"]),), other=(str(data["other"]),),
                      model_dir=tmp_path, chunk_size=CHUNK)
    frames = [(f, label) for rf, label in labelled_records(cfg) for fs in rf.frames for f in fs]
    n_viral = sum(label for _, label in frames)
    n_other = len(frames) - n_viral
    assert n_viral != n_other and min(n_viral, n_other) > 50

    sel = select_frames(labelled_records(cfg), None, seed=7)
    n = min(n_viral, n_other)
    assert sel.counts == {"all": {"viral": n_viral, "other": n_other}, "in_cds": {},
                          "used": {"viral": n, "other": n}}
    kept = [label for (_, label), k in zip(frames, sel.keep, strict=True) if k]
    assert kept.count(1) == kept.count(0) == n
    assert np.array_equal(select_frames(labelled_records(cfg), None, seed=7).keep, sel.keep)
    assert not np.array_equal(select_frames(labelled_records(cfg), None, seed=8).keep, sel.keep)
    # The second pass yields exactly the kept frames, records in order, empty ones dropped.
    again = [f.id for rf in kept_records(labelled_records(cfg), sel.keep)
             for fs in rf.frames for f in fs]
    assert again == [f.id for (f, _), k in zip(frames, sel.keep, strict=True) if k]

    # CDS filter: proteins of some frames, extended on both sides so frames are substrings.
    rng = random.Random(1)
    chosen = [f.protein for f, _ in frames if rng.random() < 0.3]
    index = CdsIndex("MK" + p + "W" for p in chosen)
    sel = select_frames(labelled_records(cfg), index, seed=7)
    in_cds = {"viral": sum(f.protein in chosen for f, y in frames if y),
              "other": sum(f.protein in chosen for f, y in frames if not y)}
    assert sel.counts["in_cds"] == in_cds
    assert all(f.protein in chosen for (f, _), k in zip(frames, sel.keep, strict=True) if k)
    assert int(sel.keep.sum()) == 2 * min(in_cds.values())
    with pytest.raises(InputError, match="no viral frame inside a --cds-proteins protein"):
        select_frames(labelled_records(cfg), CdsIndex(["WWWWWWWWWWWWWWWWWWWW"]), seed=7)


def test_split_indices():
    seq_ids = [f"s{i // 3}" for i in range(100)]  # 34 sequences of (mostly) 3 frames
    train, val = split_indices(seq_ids, Recipe(seed=1))
    assert len(val) == 10 and len(train) == 90
    assert sorted([*train, *val]) == list(range(100))
    assert np.array_equal(split_indices(seq_ids, Recipe(seed=1))[1], val)
    train, val = split_indices(seq_ids, Recipe(seed=1, split_by="sequence"))
    assert len(val) >= 10 and sorted([*train, *val]) == list(range(100))
    assert not {seq_ids[i] for i in train} & {seq_ids[i] for i in val}
    with pytest.raises(InputError, match="too few"):
        split_indices(["a"] * 5, Recipe())


@pytest.mark.parametrize("batchnorm", [True, False])
def test_saved_model_reloads_and_predicts_identically(tmp_path, batchnorm):
    from virnucpro.train import save_trained

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = (rng.normal(size=(200, 24)) + y[:, None] * 0.8).astype(np.float32)
    recipe = Recipe(hidden_dim=16, lr=0.05, max_epochs=6, batch_size=16, batchnorm=batchnorm)
    split = split_indices([str(i) for i in range(200)], recipe)
    result = fit(x, y, split, recipe)
    again = fit(x, y, split, recipe)  # seeded: the same weights
    for (k, a), b in zip(result.model.state_dict().items(), again.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    assert result.validation["accuracy"] > 0.8
    save_trained(result.model, {"chunk_size": CHUNK}, tmp_path)
    reloaded, info = load_classifier(tmp_path)
    assert info.meta["chunk_size"] == CHUNK and info.hidden_dim == 16
    with torch.no_grad():
        expected = torch.softmax(result.model.eval()(torch.from_numpy(x)), dim=1)
    assert torch.equal(classify(reloaded, torch.from_numpy(x)), expected)


# ------------------------------------------------------------------ the command
def test_train_learns_and_records(trained, data, tiny_models):
    info = _info(trained)
    val = info["metrics"]["validation"]
    assert val["n"] >= 15 and val["accuracy"] >= 0.9 and val["auroc"] >= 0.95
    assert info["chunk_size"] == CHUNK and info["input_dim"] == 64 and info["hidden_dim"] == 32
    assert info["recipe"] == {**Recipe().__dict__, "lr": 0.01, "hidden_dim": 32,
                              "batch_size": 16, "max_epochs": 12, "patience": 4}
    assert info["dropout"] == 0.5 and info["batchnorm_eps"] == 1e-5
    assert set(info["backbones"]) == {"dnabert", "esm"}
    assert info["backbones"]["esm"]["path"] == str(tiny_models.esm_dir)
    assert all(m["sha256"] for m in info["backbones"].values())
    for role in ("viral", "other"):
        rec = info["data"]["inputs"][role][0]
        assert rec["sha256"] == hashlib.sha256(data[role].read_bytes()).hexdigest()
    used = info["data"]["frames"]["used"]
    assert used["viral"] == used["other"]
    split = info["data"]["split"]
    assert split["train"] + split["validation"] == 2 * used["viral"]
    assert split["validation"] == int(2 * used["viral"] * 0.1)
    assert info["training"]["units_embedded"] == info["training"]["units"] > 1
    assert info["training"]["frames_embedded"] == 2 * used["viral"]

    rows = [line.split("\t") for line in (trained / "history.tsv").read_text().splitlines()]
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == list(range(1, info["metrics"]["epochs_run"] + 1))
    best = rows[info["metrics"]["best_epoch"]]
    assert float(best[2]) == pytest.approx(val["loss"], rel=1e-5)
    assert float(best[3]) == pytest.approx(val["accuracy"], rel=1e-5)
    assert float(rows[1][HISTORY_COLUMNS.index("lr")]) == 0.01


def test_predict_uses_trained_model(trained, data, tiny_models, tmp_path):
    out = tmp_path / "pred"
    # No --chunk-size: predict takes the one the classifier was trained with.
    assert main(["predict", str(data["viral"]), "-o", str(out), "-p", str(trained),
                 "--dnabert", str(tiny_models.dnabert_dir), "--esm", str(tiny_models.esm_dir),
                 "--offline", "--no-progress", "-q", "--threads", "1"]) == 0
    assert json.loads((out / "run.json").read_text())["params"]["chunk_size"] == CHUNK
    rows = [line.split("\t") for line in
            (out / "prediction_results.txt").read_text().splitlines()[1:]]
    got = {r[0]: float(r[3]) for r in rows}
    # The same frames' cached training features, through the reloaded classifier.
    ids, feats = _cached_features(trained)
    model, _ = load_classifier(trained)
    ref = classify(model, torch.from_numpy(feats))[:, 1].numpy()
    shared = [(got[i], r) for i, r in zip(ids, ref, strict=True) if i in got]
    assert len(shared) > 20
    assert max(abs(a - b) for a, b in shared) <= 1e-5
    calls = [line.split("\t")[6] for line in
             (out / "sequences.tsv").read_text().splitlines()[1:]]
    assert calls.count("virus") >= 0.9 * len(calls)


def test_rerun_reuses_cached_embeddings(trained, data, tiny_models, monkeypatch, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained, model)  # with its features cache; the shared one stays as it is
    before = (model / "model.safetensors").read_bytes()
    assert main(_args(tiny_models, data, model)) == 1  # refuses to replace without --force
    _no_models(monkeypatch)
    # The same recipe with --force: nothing embedded, and the very same weights.
    assert main(_args(tiny_models, data, model, "--force")) == 0
    info = _info(model)["training"]
    assert info["units_embedded"] == 0 and info["frames_embedded"] == 0
    assert info["units_from_cache"] == info["units"]
    assert Path(info["features_cache"]).is_relative_to(model.resolve())  # the copy's own
    assert (model / "model.safetensors").read_bytes() == before
    # Another model directory and recipe sharing the cache.
    other = tmp_path / "other"
    features = Path(info["features_cache"]).parent
    assert main(_args(tiny_models, data, other, "--features-dir", str(features),
                      "--hidden-dim", "8", "--split-by", "sequence")) == 0
    assert _info(other)["training"]["frames_embedded"] == 0
    assert _info(other)["hidden_dim"] == 8


def test_interrupted_embedding_resumes(trained, data, tiny_models, tmp_path):
    cache = Path(_info(trained)["training"]["features_cache"])
    copy = tmp_path / "features" / cache.name
    shutil.copytree(cache, copy)
    (copy / "complete.json").unlink()  # as if killed before the last unit
    units = sorted((copy / "units").glob("*.npz"))
    with np.load(units[-1]) as z:
        lost = z["features"]
    units[-1].unlink()
    out = tmp_path / "model"
    assert main(_args(tiny_models, data, out, "--features-dir", str(copy.parent))) == 0
    info = _info(out)["training"]
    assert info["units_embedded"] == 1 and info["units_from_cache"] == len(units) - 1
    with np.load(units[-1]) as z:
        assert np.array_equal(z["features"], lost)
    assert (out / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()


def test_train_errors(data, tiny_models, tmp_path, capsys):
    args = _args(tiny_models, {"viral": data["viral"], "other": data["viral"]}, tmp_path / "m")
    assert main(args) == 1
    assert "given as both --viral and --other" in capsys.readouterr().err
    cds = tmp_path / "cds.faa"
    cds.write_text(">p1\nWWWWWWWWWWWWWWWWWWWWWWWW\n")
    assert main(_args(tiny_models, data, tmp_path / "m", "--cds-proteins", str(cds))) == 1
    assert capsys.readouterr().err == ("virnucpro: error: no viral frame inside a "
                                       "--cds-proteins protein to train on\n")
    assert main(["train", "--viral", "-", "--other", str(data["other"]), "-o",
                 str(tmp_path / "m")]) == 1
    assert "stdin cannot be used" in capsys.readouterr().err


def test_cds_filtered_training_set(data, tiny_models, tmp_path):
    """--cds-proteins keeps the frames inside known proteins (the counts recorded match)."""
    frames = [f for rf in iter_record_frames(read_records([str(data["viral"]),
                                                           str(data["other"])]), CHUNK)
              for fs in rf.frames for f in fs]
    chosen = [f.protein for f in frames[::2]]
    cds = tmp_path / "cds.faa.gz"
    import gzip

    with gzip.open(cds, "wt") as fh:
        fh.writelines(f">p{i}\nM{p}*\n" for i, p in enumerate(chosen))
    out = tmp_path / "m"
    assert main(_args(tiny_models, data, out, "--cds-proteins", str(cds), "--max-epochs",
                      "2")) == 0
    frames_rec = _info(out)["data"]["frames"]
    n_viral = sum(f.protein in chosen for f in frames if f.id.startswith("v"))
    n_other = sum(f.protein in chosen for f in frames if f.id.startswith("o"))
    assert frames_rec["in_cds"] == {"viral": n_viral, "other": n_other}
    assert frames_rec["used"]["viral"] == min(n_viral, n_other)
    assert _info(out)["data"]["inputs"]["cds_proteins"][0]["sha256"] == hashlib.sha256(
        cds.read_bytes()).hexdigest()
