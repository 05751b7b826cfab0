"""ESM-2 wrapper: token ids, pooling, batching, and agreement with fair-esm's own ESM2."""

from __future__ import annotations

import argparse
import copy
import math
import random
import warnings
from pathlib import Path

import pytest
import torch

from virnucpro.cli import main
from virnucpro.errors import ModelError
from virnucpro.models.esm import (
    ESM_VOCAB,
    EsmInferenceLayer,
    convert_fair_esm,
    embed_esm,
    load_esm,
    load_esm_config,
    rotary_tables,
    tokenize_protein,
)
from virnucpro.testing import make_tiny_esm

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_dir = make_tiny_esm(tmp_path_factory.mktemp("esm") / "esm2", seed=1)
    return load_esm(model_dir)


@pytest.fixture(scope="module")
def plain(tiny):
    """The same directory as transformers' own EsmModel, with its own layers (the reference)."""
    from transformers import EsmModel

    return EsmModel.from_pretrained(tiny[0].name_or_path, add_pooling_layer=False,
                                    attn_implementation="sdpa").eval()


def _proteins(lengths, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(n)) for n in lengths]


def _slow_pool(model, ids: list[int], cap: int = 1024) -> torch.Tensor:
    """transformers' own forward on one protein alone, no mask: mean of last_hidden_state over
    residues 1..min(n, cap)."""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    n = len(ids) - 2
    return hidden[1 : min(n, cap) + 1].mean(0)


def test_token_ids_for_a_known_protein(tiny):
    _, tokenizer = tiny
    # <cls>=0 M=20 K=15 T=11 A=5 Y=19 I=12 <eos>=2; J is not in the alphabet: <unk>=3
    assert tokenize_protein(tokenizer, ["MKTAYIAK", "AJ"]) == [
        [0, 20, 15, 11, 5, 19, 12, 5, 15, 2],
        [0, 5, 3, 2],
    ]
    assert tokenizer.get_vocab() == {tok: i for i, tok in enumerate(ESM_VOCAB)}


def test_token_ids_match_fair_esm_and_hf_tokenizer(tiny):
    import esm

    _, tokenizer = tiny
    proteins = [*_proteins([1, 5, 40]), "XBUZO", AMINO]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    expected = [[alphabet.cls_idx, *alphabet.encode(p), alphabet.eos_idx] for p in proteins]
    assert tokenize_protein(tokenizer, proteins) == expected
    assert tokenize_protein(tokenizer, proteins) == tokenizer(proteins)["input_ids"]


def test_model_is_sdpa_eval_without_pooler(tiny):
    model, _ = tiny
    assert model.config._attn_implementation == "sdpa"
    assert not model.training and model.pooler is None
    assert load_esm_config(Path(model.name_or_path)).hidden_size == 32


def test_batched_equals_one_at_a_time_and_slow_reference(tiny, plain):
    model, tokenizer = tiny
    ids = tokenize_protein(tokenizer, _proteins([1, 2, 7, 50, 33, 130, 7], seed=3))
    batched = embed_esm(model, ids)
    assert batched.shape == (7, 32) and batched.dtype == torch.float32
    singles = torch.cat([embed_esm(model, [row]) for row in ids])
    slow = torch.stack([_slow_pool(plain, row) for row in ids])
    assert (batched - singles).abs().max() <= 1e-5
    assert (batched - slow).abs().max() <= 1e-5
    assert embed_esm(model, []).shape == (0, 32)


def test_inference_layers_compute_what_transformers_layers_do(tiny, plain):
    model, tokenizer = tiny
    assert type(plain.encoder.layer[0]).__name__ == "EsmLayer"
    assert all(isinstance(layer, EsmInferenceLayer) for layer in model.encoder.layer)
    # q, k and v are one stacked projection holding transformers' three weight matrices.
    ours0, theirs0 = model.encoder.layer[0], plain.encoder.layer[0].attention.self
    assert torch.equal(ours0.qkv.weight, torch.cat([theirs0.query.weight, theirs0.key.weight,
                                                     theirs0.value.weight]))
    ids = tokenize_protein(tokenizer, _proteins([9, 70, 31, 70], seed=4))
    ours = embed_esm(model, ids)
    theirs = torch.stack([_slow_pool(plain, row) for row in ids])
    assert (ours - theirs).abs().max() <= 2e-6
    x = torch.linspace(-6, 6, 10001)  # the two GELUs, value by value
    spelled_out = x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    assert (torch.nn.functional.gelu(x) - spelled_out).abs().max() <= 1e-6


def test_inference_layers_keep_rotary_angles_in_fp32(tiny, plain):
    """The angles are transformers' own; in bf16 the frequencies and tables stay fp32."""
    model, tokenizer = tiny
    cos, sin = rotary_tables(model, 300, torch.device("cpu"))
    ref_cos, ref_sin = plain.rotary_embeddings(torch.zeros(1, dtype=torch.float32),
                                               torch.arange(300)[None])
    assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0])
    half, _ = load_esm(Path(model.name_or_path), dtype=torch.bfloat16)
    assert half.encoder.layer[0].qkv.weight.dtype == torch.bfloat16
    assert half.rotary_embeddings.inv_freq.dtype == torch.float32
    half_cos, half_sin = rotary_tables(half, 300, torch.device("cpu"))
    assert torch.equal(half_cos, cos) and torch.equal(half_sin, sin)
    ids = tokenize_protein(tokenizer, _proteins([40, 12, 40], seed=8))
    cosine = torch.nn.functional.cosine_similarity(embed_esm(half, ids), embed_esm(model, ids))
    assert cosine.min() >= 0.999


def test_pooling_covers_at_most_1024_residues(tiny, plain):
    model, tokenizer = tiny
    long_ids, short_ids = tokenize_protein(tokenizer, _proteins([1100, 20], seed=5))
    got = embed_esm(model, [long_ids, short_ids])
    capped = _slow_pool(plain, long_ids, cap=1024)
    whole = _slow_pool(plain, long_ids, cap=10**6)
    assert (got[0] - capped).abs().max() <= 1e-5
    assert (got[0] - whole).abs().max() > 1e-3  # the cap changes the answer
    assert (got[1] - _slow_pool(plain, short_ids)).abs().max() <= 1e-5


def test_empty_protein_is_rejected(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="at least one residue"):
        embed_esm(model, tokenize_protein(tokenizer, ["MK", ""]))


def test_missing_model_dir_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="nope"):
        load_esm(tmp_path / "nope")


# ------------------------------------------------------------ fair-esm reference
def _fair_esm_checkpoint(path: Path, seed: int = 0):
    """A tiny fair-esm ESM2 with random weights, saved the way fair-esm's .pt files are."""
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4,
                                    alphabet=alphabet, token_dropout=True)
        with torch.no_grad():
            for module in model.modules():
                for name, param in module.named_parameters(recurse=False):
                    base = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0
                    param.copy_(base + 0.3 * torch.randn_like(param))
            for layer in model.layers:
                # ESM-2 was trained in fp16: its stored inv_freq carries fp16 rounding.
                layer.self_attn.rot_emb.inv_freq.copy_(layer.self_attn.rot_emb.inv_freq.half())
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head."):
            continue  # fair-esm ships the contact head in a separate file
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        state[prefix + key] = value
    hparams = argparse.Namespace(encoder_layers=2, encoder_embed_dim=32,
                                 encoder_attention_heads=4, token_dropout=True)
    data = {"model": state, "cfg": {"model": hparams}, "args": copy.copy(hparams)}
    torch.save(data, path)
    # The file must be one fair-esm itself accepts (it warns that the contact head is absent).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref, _ = esm.pretrained.load_model_and_alphabet_core("esm2_t2_tiny", copy.deepcopy(data))
    return ref.eval(), alphabet


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fair")
    reference, alphabet = _fair_esm_checkpoint(tmp / "esm2_t2_tiny.pt", seed=7)
    return tmp / "esm2_t2_tiny.pt", reference, alphabet


def _fair_pool(reference, alphabet, proteins):
    """fair-esm's own batch converter and forward, pooled over residues 1..len."""
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    with torch.no_grad():
        reps = reference(tokens, repr_layers=[2])["representations"][2]
    return torch.stack([reps[i, 1 : len(p) + 1].mean(0) for i, p in enumerate(proteins)])


def test_converted_fair_esm_matches_fair_esm(fair, tmp_path):
    pt_path, reference, alphabet = fair
    out = convert_fair_esm(pt_path, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}
    model, tokenizer = load_esm(out)
    # the fp16-rounded inv_freq is kept, not recomputed
    assert torch.equal(model.rotary_embeddings.inv_freq,
                       reference.layers[0].self_attn.rot_emb.inv_freq)
    proteins = _proteins([3, 60, 17, 120, 1], seed=11)
    ours = embed_esm(model, tokenize_protein(tokenizer, proteins))
    theirs_batched = _fair_pool(reference, alphabet, proteins)
    theirs_single = torch.cat([_fair_pool(reference, alphabet, [p]) for p in proteins])
    assert (ours - theirs_batched).abs().max() <= 1e-5
    assert (ours - theirs_single).abs().max() <= 1e-5


def test_cli_convert_esm(fair, tmp_path, capsys):
    pt_path, reference, alphabet = fair
    out = tmp_path / "converted"
    assert main(["models", "convert-esm", str(pt_path), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model, tokenizer = load_esm(out)
    ours = embed_esm(model, tokenize_protein(tokenizer, ["MKTAYIAK"]))
    assert (ours - _fair_pool(reference, alphabet, ["MKTAYIAK"])).abs().max() <= 1e-5


def test_convert_rejects_a_non_esm_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"decoder.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ModelError, match=r"other\.pt"):
        convert_fair_esm(path, tmp_path / "out")
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match="not a fair-esm checkpoint"):
        convert_fair_esm(path, tmp_path / "out")
