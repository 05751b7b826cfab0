"""Tiny random models in the real on-disk formats, for tests and `virnucpro selftest`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TinyModels:
    dnabert_dir: Path
    esm_dir: Path
    classifier_path: Path


def make_tiny_dnabert(out_dir: Path, seed: int = 0, tokenizer: Path | None = None) -> Path:
    """Write a tiny DNABERT-S directory (config.json, pytorch_model.bin, tokenizer.json).

    Same config fields and checkpoint keys as the hub model; hidden 32, 2 layers, 4 heads and
    random weights. `tokenizer` is a `tokenizer.json` to copy (the real one, in tests);
    without it a small BPE is trained here with the same special tokens, ids and
    `[CLS] $A [SEP]` template.
    """
    import json
    import random
    import shutil

    import torch

    from virnucpro.models.dnabert import DnaBert, load_dnabert_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "_name_or_path": "virnucpro/tiny-dnabert-s", "alibi_starting_size": 512,
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoModel": "bert_layers.BertModel"}, "classifier_dropout": None,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 4,
        "num_hidden_layers": 2, "pad_token_id": 0, "position_embedding_type": "absolute",
        "torch_dtype": "float32", "type_vocab_size": 2, "vocab_size": 4096,
    }  # fmt: skip
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # Weights large enough that attention is far from uniform, so ALiBi and masking matter.
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in DnaBert(load_dnabert_config(out_dir)).state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        is_norm_weight = key.lower().endswith("layernorm.weight")
        state[key] = 1 + 0.1 * noise if is_norm_weight else 0.2 * noise
    torch.save(state, out_dir / "pytorch_model.bin")

    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
        return out_dir
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = ["".join(rng.choice("ACGT") for _ in range(300)) for _ in range(100)]
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4, as in the real file
    trainer = trainers.BpeTrainer(
        vocab_size=256, special_tokens=specials, initial_alphabet=list("ACGT"), show_progress=False
    )
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    # The real file bakes in padding and truncation to 2000; so does this one.
    tokenizer.enable_padding(pad_id=3, pad_token="[PAD]", length=2000)
    tokenizer.enable_truncation(max_length=2000)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir


def make_tiny_esm(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny HF ESM-2 directory (config.json, model.safetensors, vocab.txt, ...).

    ESM-2 layout (rotary, token dropout, the 33-token alphabet) with hidden 32, 2 layers,
    4 heads and random weights large enough that every one of them matters.
    """
    import torch
    from transformers import EsmConfig, EsmModel

    from virnucpro.models.esm import ESM_VOCAB

    out_dir = Path(out_dir)
    config = EsmConfig(
        vocab_size=len(ESM_VOCAB), pad_token_id=ESM_VOCAB.index("<pad>"),
        mask_token_id=ESM_VOCAB.index("<mask>"), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=1026,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        model = EsmModel(config, add_pooling_layer=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                centre = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                param.copy_(centre + 0.3 * torch.randn(param.shape, generator=gen))
    return write_esm_dir(model, out_dir)


def write_esm_dir(model: Any, out_dir: Path) -> Path:
    """Save an `EsmModel` as an HF ESM-2 directory (config, safetensors, vocab, tokenizer)."""
    from transformers import EsmTokenizer

    from virnucpro.models.esm import ESM_VOCAB, quiet_transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out_dir, safe_serialization=True)
    vocab = out_dir / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(out_dir)
    return out_dir


def make_tiny_classifier(path: Path, input_dim: int, hidden_dim: int = 16, seed: int = 0) -> Path:
    """Write an MLP `.pth` pickled exactly as the original saves it (class in `__main__`).

    A child Python runs a script that defines the original `MLPClassifier` at top level (as in
    VirNucPro's train.py) and `torch.save`s the whole module, with random weights and random
    BatchNorm running statistics so that eval-mode BatchNorm matters.
    """
    import subprocess
    import sys

    # The class is VirNucPro's train.py/prediction.py definition, verbatim in structure.
    script = """
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
        self.init_weights()

    def init_weights(self):
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


path, input_dim, hidden_dim, seed = sys.argv[1], *map(int, sys.argv[2:5])
torch.manual_seed(seed)
model = MLPClassifier(input_dim, hidden_dim, 2)
with torch.no_grad():
    for p in (model.hidden_layer.bias, model.output_layer.bias, model.bn1.bias):
        p.normal_(0.0, 0.5)
    model.bn1.weight.uniform_(0.5, 2.0)
    model.bn1.running_mean.normal_(0.0, 0.5)
    model.bn1.running_var.uniform_(0.2, 3.0)
    model.bn1.num_batches_tracked.fill_(1000)
model.eval()  # the original saves right after evaluating on its test split
torch.save(model, path)
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", script, str(path), str(input_dim), str(hidden_dim),
                    str(seed)], check=True)
    return path


def make_tiny_models(out_dir: Path, seed: int = 0, tokenizer: Path | None = None) -> TinyModels:
    """Write all three tiny models under `out_dir` and return their paths.

    `tokenizer`: a DNABERT-S `tokenizer.json` to use (see `make_tiny_dnabert`)."""
    from virnucpro.models.dnabert import load_dnabert_config
    from virnucpro.models.esm import load_esm_config

    out_dir = Path(out_dir)
    dnabert_dir = make_tiny_dnabert(out_dir / "dnabert-s", seed=seed, tokenizer=tokenizer)
    esm_dir = make_tiny_esm(out_dir / "esm2", seed=seed)
    input_dim = load_dnabert_config(dnabert_dir).hidden_size + load_esm_config(esm_dir).hidden_size
    classifier = make_tiny_classifier(out_dir / "classifier.pth", input_dim=input_dim, seed=seed)
    return TinyModels(dnabert_dir, esm_dir, classifier)
