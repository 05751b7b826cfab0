"""Untrusted pickles: anything beyond weights is refused before it can run."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from virnucpro.cli import main
from virnucpro.errors import ModelError
from virnucpro.models.classifier import load_classifier
from virnucpro.models.esm import convert_fair_esm
from virnucpro.models.safeload import PickledObject, load_pickle, record_type

SYSTEM = f"{os.system.__module__}.system"  # how pickle names os.system ("posix.system")


class Touch:
    """Unpickling this runs `os.system("touch <marker>")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenForWriting:
    """Unpickling this creates the marker file through `open(marker, "w")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_malicious_classifier_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "500_model.pth"
    torch.save({"hidden_layer.weight": torch.zeros(2, 2), "payload": Touch(marker)}, path)
    with pytest.raises(ModelError) as err:
        load_classifier(path)
    assert str(path) in str(err.value) and SYSTEM in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_open_payload_is_refused(tmp_path):
    marker = tmp_path / "created"
    path = tmp_path / "model.pth"
    torch.save([OpenForWriting(marker)], path)
    with pytest.raises(ModelError, match=r"model\.pth.*disallowed global\(s\) (builtins|io)\.open"):
        load_classifier(path)
    assert not marker.exists()


def test_raw_pickle_with_new_opcodes_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps(Touch(marker), protocol=5))  # STACK_GLOBAL, not torch.save
    with pytest.raises(ModelError, match=r"raw\.pth: refusing to load"):
        load_classifier(path)
    assert not marker.exists()


def test_cli_convert_esm_with_bad_global(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "esm2_t36_3B_UR50D.pt"
    hparams = argparse.Namespace(encoder_layers=1, encoder_attention_heads=1, token_dropout=True)
    torch.save({"model": {}, "cfg": {"model": hparams}, "args": Touch(marker)}, path)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=SYSTEM):
        convert_fair_esm(path, out)
    assert main(["models", "convert-esm", str(path), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("virnucpro: error: ") and err.count("\n") == 1
    assert str(path) in err and SYSTEM in err
    assert not marker.exists() and not out.exists()


def test_unlisted_class_is_refused_even_if_harmless(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"x": argparse.ArgumentParser}, path)  # allowed for fair-esm only as Namespace
    with pytest.raises(ModelError, match=r"argparse\.ArgumentParser"):
        load_pickle(path, [(argparse.Namespace, "argparse.Namespace")])


def test_allowed_classes_become_inert_records(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(a=1), "w": torch.arange(3)}, path)
    Record = record_type("argparse.Namespace")
    loaded = load_pickle(path, [(Record, "argparse.Namespace")])
    assert isinstance(loaded["args"], PickledObject) and loaded["args"].state == {"a": 1}
    assert torch.equal(loaded["w"], torch.arange(3))


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pth"):
        load_pickle(path)
    with pytest.raises(ModelError, match="not found"):
        load_pickle(tmp_path / "absent.pth")
