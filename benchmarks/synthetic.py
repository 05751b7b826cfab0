"""Synthetic inputs of the model benchmarks: random models at real sizes (built in memory or
written in the real on-disk formats) and frame workloads (random DNA biased so that chunks keep
a frame of full length, reads, contig-like genomes).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import REPO, Shape
from torch import nn

from virnucpro.frames import GENETIC_CODE, Frame, iter_record_frames
from virnucpro.reader import Record

# The real DNABERT-S tokenizer, kept with the test data (see tests/data/PROVENANCE.md).
TOKENIZER_CANDIDATES = (REPO / "tests" / "data" / "dnabert-s" / "tokenizer.json",)


# ------------------------------------------------------------------ random models
def _init_(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """BERT-style random weights: N(0, std) matrices and embeddings, zero biases, unit norms."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model


def dnabert_config(shape: Shape) -> dict[str, Any]:
    """The hub `config.json` of DNABERT-S, resized to `shape`."""
    return {
        "_name_or_path": f"virnucpro/random-{shape.name}", "alibi_starting_size": 512,
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoModel": "bert_layers.BertModel"}, "classifier_dropout": None,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": shape.hidden,
        "initializer_range": 0.02, "intermediate_size": shape.intermediate,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": shape.heads, "num_hidden_layers": shape.layers,
        "pad_token_id": 0, "position_embedding_type": "absolute", "torch_dtype": "float32",
        "type_vocab_size": 2, "vocab_size": 4096,
    }  # fmt: skip


def build_dnabert(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random DNABERT-S built directly on `device` (no disk), in eval mode."""
    from virnucpro.models.dnabert import DnaBert, DnaBertConfig

    names = DnaBertConfig.__dataclass_fields__
    cfg = DnaBertConfig(**{k: v for k, v in dnabert_config(shape).items() if k in names})
    with torch.device(device):
        model = DnaBert(cfg)
    return _init_(model, seed).to(dtype).eval()


def dnabert_tokenizer_file(explicit: Path | None, work_dir: Path) -> tuple[Path, str]:
    """The real tokenizer.json if we can find it, else the test suite's fallback BPE.

    Returns (path, label). The fallback has other merges, so token counts per frame differ
    (tokens/s and MFU stay meaningful; frames/s less so).
    """
    for path in ([Path(explicit)] if explicit else []) + list(TOKENIZER_CANDIDATES):
        if path.is_file():
            return path, f"real ({path})"
    from virnucpro.testing import make_tiny_dnabert

    tiny = make_tiny_dnabert(work_dir / "fallback-tokenizer")
    label = "real (via virnucpro.testing)" if _same_as_real(tiny) else "fallback BPE (256 tokens)"
    return tiny / "tokenizer.json", label


def _same_as_real(tiny_dir: Path) -> bool:
    return len(json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["vocab"]) == 4096


def write_dnabert_dir(model: nn.Module, shape: Shape, out_dir: Path, tokenizer: Path) -> Path:
    """config.json + pytorch_model.bin (a plain fp32 state dict, as on the hub) + tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dnabert_config(shape), indent=2) + "\n")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    torch.save(state, out_dir / "pytorch_model.bin")
    shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
    return out_dir


def esm_config(shape: Shape) -> Any:
    from transformers import EsmConfig

    from virnucpro.models.esm import ESM_VOCAB

    return EsmConfig(
        vocab_size=len(ESM_VOCAB), pad_token_id=ESM_VOCAB.index("<pad>"),
        mask_token_id=ESM_VOCAB.index("<mask>"), hidden_size=shape.hidden,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate, max_position_embeddings=1026,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=True,
        architectures=["EsmModel"])


def build_esm(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random HF EsmModel built directly on `device` (no disk), SDPA attention, eval mode."""
    from transformers import EsmModel

    from virnucpro.models.esm import quiet_transformers

    config = esm_config(shape)
    config._attn_implementation = "sdpa"
    with quiet_transformers(), torch.device(device):
        model = EsmModel(config, add_pooling_layer=False)
    return esm_to(_init_(model, seed), dtype).eval()


def esm_to(model: Any, dtype: torch.dtype) -> Any:
    """`model.to(dtype)`, but the rotary `inv_freq` buffers stay fp32, as they do when
    `load_esm` loads a checkpoint in bf16 (a bf16 inv_freq would shift the rotary angles
    by up to ~0.2% x position and spoil the bf16-vs-fp32 comparison)."""
    keep = {name: buf.float().clone() for name, buf in model.named_buffers()
            if name.endswith("inv_freq")}
    model = model.to(dtype)
    for name, buf in keep.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, buf)
    return model


def write_esm_dir(model: Any, out_dir: Path) -> Path:
    """An HF ESM-2 directory (config.json, model.safetensors, vocab + tokenizer files)."""
    from virnucpro.testing import write_esm_dir as write

    return write(model, out_dir)


def fair_esm_checkpoint(shape: Shape, path: Path, seed: int = 0) -> tuple[Any, Any]:
    """A random fair-esm ESM2 (its own default init), saved as fair-esm's .pt files are.

    Returns (model in eval mode, alphabet). `virnucpro.models.esm.convert_fair_esm` turns the file
    into the HF directory our pipeline loads, so both run the very same weights.
    """
    import argparse

    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = esm.model.esm2.ESM2(num_layers=shape.layers, embed_dim=shape.hidden,
                                    attention_heads=shape.heads, alphabet=alphabet,
                                    token_dropout=True)
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith("contact_head."):  # fair-esm ships it in a separate file
            prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
            state[prefix + key] = value
    hparams = argparse.Namespace(encoder_layers=shape.layers, encoder_embed_dim=shape.hidden,
                                 encoder_attention_heads=shape.heads, token_dropout=True)
    torch.save({"model": state, "cfg": {"model": hparams}}, path)
    return model.eval(), alphabet


def write_classifier(path: Path, input_dim: int, seed: int = 0) -> Path:
    """A random classifier of the published size (hidden 512), pickled as the original's."""
    from virnucpro.testing import make_tiny_classifier

    return make_tiny_classifier(path, input_dim=input_dim, hidden_dim=512, seed=seed)


def random_classifier(features: torch.Tensor, seed: int = 0) -> Any:
    """The published MLP shape with random weights, calibrated on `features` [n, d] so that
    half of them are called virus.

    Uncalibrated, a random MLP calls nearly every frame the same way, and "same call in
    fp32 and bf16" would say nothing; at a 50/50 split many frames sit near the boundary.
    """
    from virnucpro.models.classifier import MLPClassifier

    gen = torch.Generator().manual_seed(seed)
    model = MLPClassifier(features.shape[1], 512)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(p.shape[-1], 1) ** 0.5)
        model.bn1.running_mean.copy_(torch.randn(512, generator=gen) * 0.1)
        model = model.to(features.device).eval()
        logits = model(features.float())
        margin = (logits[:, 1] - logits[:, 0]).sort().values
        k = len(margin) // 2  # the boundary goes midway between the two middle frames
        model.output_layer.bias[1] -= (margin[max(k - 1, 0)] + margin[k]) / 2
    return model


def call_agreement(features_ref: torch.Tensor, features_other: torch.Tensor,
                   seed: int = 0) -> dict[str, float]:
    """Virus/others calls of a calibrated random classifier on two feature sets."""
    from virnucpro.models.classifier import classify

    model = random_classifier(features_ref, seed)
    ref, other = classify(model, features_ref), classify(model, features_other)
    return {"frames": len(ref),
            "same_call": float((ref.argmax(1) == other.argmax(1)).float().mean()),
            "virus_fraction_ref": float((ref.argmax(1) == 1).float().mean()),
            "max_abs_score_diff": float((ref - other).abs().max())}


# ------------------------------------------------------------------ workload
_SENSE = [c for c, aa in GENETIC_CODE.items() if aa != "*"]
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def stop_free_records(n: int, length: int, seed: int = 0, prefix: str = "s") -> list[Record]:
    """Random DNA of `length` bp whose first forward frame has no stop codon.

    Uniform random DNA almost never keeps a frame over 500 bp (each codon is a stop with
    p = 3/64), so every chunk would be dropped. Drawing sense codons only in frame 1 gives
    what real coding sequence gives: a kept frame of length // 3 residues per chunk (other
    frames are kept now and then, by chance).
    """
    rng = np.random.default_rng(seed)
    codons = np.array(_SENSE)
    n_codons = -(-length // 3)
    draws = rng.integers(0, len(codons), size=(n, n_codons))
    seqs = ["".join(codons[row])[:length] for row in draws]
    return [Record(f"{prefix}{i}", f"{prefix}{i}", s, "bench") for i, s in enumerate(seqs)]


def stop_free_reads(n: int, min_length: int, max_length: int, seed: int = 0,
                    prefix: str = "r") -> list[Record]:
    """Like `stop_free_records`, with lengths drawn uniformly from [min_length, max_length]
    (short reads); built as one byte matrix, so 200,000 reads take about a second."""
    rng = np.random.default_rng(seed)
    table = np.frombuffer("".join(_SENSE).encode(), dtype=np.uint8).reshape(len(_SENSE), 3)
    n_codons = -(-max_length // 3)
    lengths = rng.integers(min_length, max_length + 1, size=n)
    bases = table[rng.integers(0, len(_SENSE), size=(n, n_codons))].reshape(n, 3 * n_codons)
    return [Record(f"{prefix}{i}", f"{prefix}{i}", bases[i, :k].tobytes().decode(), "bench")
            for i, k in enumerate(lengths.tolist())]


def contig_like_records(total_bp: int, n_contigs: int = 5, seed: int = 0) -> list[Record]:
    """About `total_bp` of contigs laid out like a phage genome: genes of 300-1,500 bp
    (ATG, stop-free sense codons, a stop) on either strand, between random spacers of
    20-300 bp, so ~85% is coding. Unlike `stop_free_records`, a 500 bp chunk keeps a frame
    only where it lies inside one gene: chunks across gene ends and spacers keep none, as
    in real genomes."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n_contigs):
        parts: list[str] = []
        size = 0
        while size < total_bp // n_contigs:
            codons = rng.choice(_SENSE, size=int(rng.integers(100, 500)) - 2)
            gene = "ATG" + "".join(codons) + str(rng.choice(["TAA", "TAG", "TGA"]))
            if rng.random() < 0.5:
                gene = gene.translate(_COMPLEMENT)[::-1]
            spacer = "".join(rng.choice(list("ACGT"), size=int(rng.integers(20, 301))))
            parts += [gene, spacer]
            size += len(gene) + len(spacer)
        records.append(Record(f"contig{k + 1}", f"contig{k + 1} contig-like, synthetic",
                              "".join(parts), "bench"))
    return records


def frames_of(records: Sequence[Record], chunk_size: int) -> list[Frame]:
    """Every kept frame of the records, in output order (our own chunking + translation)."""
    return [f for rf in iter_record_frames(records, chunk_size) for fs in rf.frames for f in fs]


def write_fasta(records: Sequence[Record], path: Path) -> Path:
    with open(path, "w", encoding="ascii") as fh:
        for r in records:
            fh.write(f">{r.header}\n{r.seq}\n")
    return path
