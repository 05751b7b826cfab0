"""Classifier: the original pickles load safely and give the original module's probabilities."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from virnucpro.cli import main
from virnucpro.errors import ModelError
from virnucpro.models.classifier import (
    ClassifierInfo,
    MLPClassifier,
    classify,
    convert_classifier,
    load_classifier,
    save_classifier,
)
from virnucpro.testing import make_tiny_classifier

# Evaluates the ORIGINAL class (VirNucPro prediction.py) on the pickled module, as the original
# prediction does: model.eval(), forward, softmax. The genuine class is allowlisted by name,
# so this reference needs no unrestricted unpickling either.
_REFERENCE = """
import sys
import torch
from torch import nn
import torch.nn.functional as F


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super(MLPClassifier, self).__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


model_path, features_path, out_path = sys.argv[1:4]
with torch.serialization.safe_globals([MLPClassifier, nn.Linear, nn.BatchNorm1d, nn.Dropout]):
    model = torch.load(model_path, weights_only=True)
assert type(model) is MLPClassifier
model.eval()
with torch.no_grad():
    probabilities = F.softmax(model(torch.load(features_path, weights_only=True)), dim=1)
torch.save(probabilities, out_path)
"""


def _original_probabilities(model_path: Path, features: torch.Tensor, tmp: Path) -> torch.Tensor:
    torch.save(features, tmp / "features.pt")
    subprocess.run([sys.executable, "-c", _REFERENCE, str(model_path), str(tmp / "features.pt"),
                    str(tmp / "reference.pt")], check=True)
    return torch.load(tmp / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("clf") / "tiny_model.pth",
                                input_dim=100, hidden_dim=7, seed=3)


def _features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_original_pth_gives_the_original_modules_probabilities(original, tmp_path):
    features = _features(64, 100)
    model, _ = load_classifier(original)
    got = classify(model, features)
    want = _original_probabilities(original, features, tmp_path)
    assert got.dtype == torch.float32 and got.shape == (64, 2)
    assert (got - want).abs().max() <= 1e-6
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert 0 < int(got.argmax(1).sum()) < 64  # both classes occur: the test can tell them apart


def test_dims_and_provenance_come_from_the_file(original):
    model, info = load_classifier(original)
    assert (info.input_dim, info.hidden_dim) == (100, 7)
    assert info.source == "tiny_model.pth"
    assert info.sha256 == hashlib.sha256(original.read_bytes()).hexdigest()
    assert info.meta["class_names"] == ["others", "virus"]
    assert not model.training
    assert model.bn1.num_batches_tracked.item() == 1000  # buffers came across too


def test_published_dims(tmp_path):
    path = make_tiny_classifier(tmp_path / "500_model.pth", input_dim=3328, hidden_dim=512)
    model, info = load_classifier(path)
    assert (info.input_dim, info.hidden_dim) == (3328, 512)
    features = _features(5, 3328, seed=1)
    assert (classify(model, features) - _original_probabilities(path, features, tmp_path)
            ).abs().max() <= 1e-6


def test_slow_reference_forward(original):
    model, _ = load_classifier(original)
    x = _features(9, 100, seed=2)
    sd = model.state_dict()
    h = x @ sd["hidden_layer.weight"].T + sd["hidden_layer.bias"]
    h = (h - sd["bn1.running_mean"]) / torch.sqrt(sd["bn1.running_var"] + 1e-5)
    h = torch.relu(h * sd["bn1.weight"] + sd["bn1.bias"])  # dropout is off in eval mode
    logits = h @ sd["output_layer.weight"].T + sd["output_layer.bias"]
    assert (classify(model, x) - torch.softmax(logits, dim=1)).abs().max() <= 1e-6


def test_convert_round_trip(original, tmp_path):
    out = convert_classifier(original, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "model.safetensors"]
    doc = json.loads((out / "classifier.json").read_text())
    assert doc["format"] == "virnucpro-classifier"
    assert (doc["input_dim"], doc["hidden_dim"], doc["n_classes"]) == (100, 7, 2)
    assert doc["class_names"] == ["others", "virus"]
    assert doc["source"] == "tiny_model.pth"
    assert doc["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
    assert doc["converted_at"].endswith("+00:00")
    features = _features(32, 100, seed=4)
    first, _ = load_classifier(original)
    again, info = load_classifier(out)
    assert torch.equal(classify(again, features), classify(first, features))
    assert (info.input_dim, info.hidden_dim, info.source) == (100, 7, "tiny_model.pth")


def test_cli_convert_classifier(original, tmp_path, capsys):
    out = tmp_path / "clf"
    assert main(["models", "convert-classifier", str(original), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    _, info = load_classifier(out)
    assert info.hidden_dim == 7


def test_cli_convert_classifier_missing_file(tmp_path, capsys):
    assert main(["models", "convert-classifier", str(tmp_path / "no.pth"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("virnucpro: error: ") and "no.pth" in err and err.count("\n") == 1


def test_plain_state_dict_pth_and_own_save(tmp_path):
    model = MLPClassifier(6, 3).eval()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    loaded, info = load_classifier(tmp_path / "sd.pth")
    x = _features(4, 6)
    assert torch.equal(classify(loaded, x), classify(model, x))
    meta = {"backbones": {"dnabert": "a", "esm": "b"}, "chunk_size": 300, "metrics": {"f1": 0.5}}
    out = save_classifier(loaded, ClassifierInfo(6, 3, "sd.pth", info.sha256, meta), tmp_path / "o")
    _, again = load_classifier(out)
    assert again.meta["chunk_size"] == 300 and again.meta["backbones"]["esm"] == "b"


def test_wrong_feature_width_is_a_model_error(original):
    model, _ = load_classifier(original)
    with pytest.raises(ModelError, match=r"\[N, 100\]"):
        classify(model, torch.zeros(3, 99))


def test_weights_that_are_not_the_mlp(tmp_path):
    torch.save({"hidden_layer.weight": torch.zeros(3, 4)}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match=r"bad\.pth.*VirNucPro MLP"):
        load_classifier(tmp_path / "bad.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="expected a pickled MLPClassifier"):
        load_classifier(tmp_path / "list.pth")
