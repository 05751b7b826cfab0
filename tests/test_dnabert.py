"""DNABERT-S: tokenizer facts, the model against a slow written-out reference, pooling, loading."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from virnucpro.errors import ModelError
from virnucpro.models import dnabert
from virnucpro.models.dnabert import (
    DnaBert,
    DnaBertConfig,
    alibi_slopes,
    embed_dnabert,
    load_dnabert,
    load_dnabert_config,
    load_dnabert_tokenizer,
    tokenize_dna,
)
from virnucpro.testing import make_tiny_dnabert

# SPEC §4: the 12 slopes of DNABERT-S, written out.
SLOPES_12 = [2.0**-e for e in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
SLOPES = {
    4: [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8],
    6: [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3],
    8: [2.0**-e for e in range(1, 9)],
    12: SLOPES_12,
}
REAL_CONFIG = DnaBertConfig(4096, 768, 12, 12, 3072, 2, 1e-12, 0)
# hidden 48 / 12 heads: the non-power-of-two ALiBi rule, on a model small enough to check slowly.
TWELVE_HEADS = DnaBertConfig(4096, 48, 2, 12, 40, 2, 1e-12, 0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_tiny_dnabert(tmp_path_factory.mktemp("dnabert") / "tiny", seed=0,
                             tokenizer=data_dir / "dnabert-s" / "tokenizer.json")


def random_state(model: DnaBert, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        state[key] = 1 + 0.1 * noise if key.lower().endswith("layernorm.weight") else 0.2 * noise
    return state


def random_ids(rng: random.Random, length: int) -> list[int]:
    """[CLS] + `length` ordinary tokens + [SEP]."""
    return [1, *(rng.randrange(5, 4096) for _ in range(length)), 2]


def reference_forward(
    state: dict[str, torch.Tensor], cfg: DnaBertConfig, ids: list[int]
) -> torch.Tensor:
    """One unpadded sequence in float64, head by head, with an explicit ALiBi matrix: [T, H]."""
    sd = {k: v.double() for k, v in state.items()}
    hidden, heads, inter = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
    dh, length, slopes = hidden // heads, len(ids), SLOPES[heads]

    def layer_norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        normed = (x - mean) / torch.sqrt(var + cfg.layer_norm_eps)
        return normed * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        out = x @ sd[prefix + ".weight"].T
        return out + sd[prefix + ".bias"] if prefix + ".bias" in sd else out

    def gelu(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    x = (
        sd["embeddings.word_embeddings.weight"][ids]
        + sd["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        qkv = linear(x, p + "attention.self.Wqkv")
        outs = []
        for h in range(heads):
            q = qkv[:, h * dh : (h + 1) * dh]
            k = qkv[:, hidden + h * dh : hidden + (h + 1) * dh]
            v = qkv[:, 2 * hidden + h * dh : 2 * hidden + (h + 1) * dh]
            alibi = [[-slopes[h] * abs(i - j) for j in range(length)] for i in range(length)]
            scores = q @ k.T / math.sqrt(dh) + torch.tensor(alibi, dtype=torch.float64)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            outs.append((weights / weights.sum(dim=1, keepdim=True)) @ v)
        attn = linear(torch.cat(outs, dim=1), p + "attention.output.dense")
        x = layer_norm(x + attn, p + "attention.output.LayerNorm")
        gated = linear(x, p + "mlp.gated_layers")
        mlp = linear(gelu(gated[:, :inter]) * gated[:, inter:], p + "mlp.wo")
        x = layer_norm(x + mlp, p + "mlp.layernorm")
    return x


# --- tokenizer ---------------------------------------------------------------------------------

KNOWN_IDS = {
    "": [1, 2],
    "A": [1, 5, 2],
    "ACGT": [1, 5, 6, 1049, 2],
    "AAAAAAAAAAAAAAAAAAAA": [1, 1169, 39, 2],
    "ACGTNNACGT": [1, 5, 6, 1049, 0, 0, 5, 6, 1049, 2],  # N is not in the vocabulary: [UNK]
    # The example sequence of the DNABERT-2 README.
    "ACGTAGCATCGGATCTATCTATCGACACTTGGTTATCGATCTACGAGCATCTCGTTAGC": [
        1, 5, 194, 32, 757, 1239, 2092, 294, 24, 359, 88, 93, 32, 75, 77, 19, 2,
    ],
}  # fmt: skip


def test_real_tokenizer_known_ids(data_dir: Path) -> None:
    tokenizer = load_dnabert_tokenizer(data_dir / "dnabert-s")
    assert tokenize_dna(tokenizer, list(KNOWN_IDS)) == list(KNOWN_IDS.values())


def test_tokenize_dna_in_slices_keeps_order_and_ids(data_dir: Path, monkeypatch) -> None:
    # Encoded ENCODE_ROWS at a time (to bound memory): the slices must join up exactly.
    tokenizer = load_dnabert_tokenizer(data_dir / "dnabert-s")
    monkeypatch.setattr(dnabert, "ENCODE_ROWS", 2)
    seqs = [*KNOWN_IDS, "acgt"]  # 6 sequences: 3 slices
    assert tokenize_dna(tokenizer, seqs) == [*KNOWN_IDS.values(), KNOWN_IDS["ACGT"]]
    assert tokenize_dna(tokenizer, []) == []


def test_real_tokenizer_upper_cases_and_does_not_pad_or_truncate(data_dir: Path) -> None:
    tokenizer = load_dnabert_tokenizer(data_dir / "dnabert-s")
    assert tokenizer.encode("acgt").ids == [1, 0, 0, 0, 0, 2]  # why we upper-case first
    rng = random.Random(1)
    long_seq = "".join(rng.choice("ACGT") for _ in range(20000))
    lower, upper, short = tokenize_dna(tokenizer, [long_seq.lower(), long_seq, "ACGT"])
    assert lower == upper
    assert len(upper) > 2000 and upper[0] == 1 and upper[-1] == 2
    assert short == [1, 5, 6, 1049, 2]


def test_real_config(data_dir: Path) -> None:
    assert load_dnabert_config(data_dir / "dnabert-s") == REAL_CONFIG


def test_fallback_tokenizer_without_a_tokenizer_file(tmp_path: Path) -> None:
    # No tokenizer.json given (as in `virnucpro selftest`): a small BPE is trained instead.
    model_dir = make_tiny_dnabert(tmp_path / "tiny")
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 256  # the trained BPE, wherever the package lives
    tokenizer = load_dnabert_tokenizer(model_dir)
    ids = tokenize_dna(tokenizer, ["acgtacgtttgacc", "ACGTACGTTTGACC", "A"])
    assert ids[0] == ids[1] and ids[2] == [1, 5, 2]
    assert ids[0][0] == 1 and ids[0][-1] == 2 and all(5 <= i < 256 for i in ids[0][1:-1])
    assert embed_dnabert(load_dnabert(model_dir), ids).shape == (3, 32)


def test_tiny_model_copies_the_tokenizer_it_is_given(tiny_dir: Path, data_dir: Path) -> None:
    real = data_dir / "dnabert-s" / "tokenizer.json"
    assert (tiny_dir / "tokenizer.json").read_bytes() == real.read_bytes()


# --- architecture ------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", sorted(SLOPES))
def test_alibi_slopes(heads: int) -> None:
    assert alibi_slopes(heads) == pytest.approx(SLOPES[heads], rel=1e-12)


def test_real_config_has_the_checkpoint_keys() -> None:
    with torch.device("meta"):
        keys = set(DnaBert(REAL_CONFIG).state_dict())
    expected = {
        "embeddings.word_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    for n in range(12):
        p = f"encoder.layer.{n}."
        expected |= {p + "mlp.gated_layers.weight"}
        for name in ("attention.self.Wqkv", "attention.output.dense", "attention.output.LayerNorm",
                     "mlp.wo", "mlp.layernorm"):  # fmt: skip
            expected |= {f"{p}{name}.weight", f"{p}{name}.bias"}
    assert keys == expected


def test_tiny_model_matches_reference(tiny_dir: Path) -> None:
    model = load_dnabert(tiny_dir)
    state = torch.load(tiny_dir / "pytorch_model.bin", weights_only=True)
    rng = random.Random(2)
    seqs = [random_ids(rng, n) for n in (0, 7, 30)]
    for ids in seqs:
        got = model(torch.tensor([ids]))[0]
        assert (got.double() - reference_forward(state, model.config, ids)).abs().max() <= 1e-5
    # Batched with padding: real positions are unchanged.
    width = max(map(len, seqs))
    batch = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    out = model(batch, mask)
    for row, ids in enumerate(seqs):
        ref = reference_forward(state, model.config, ids)
        assert (out[row, : len(ids)].double() - ref).abs().max() <= 1e-5


def test_twelve_head_model_matches_reference() -> None:
    model = DnaBert(TWELVE_HEADS).eval()
    state = random_state(model, seed=3)
    model.load_state_dict(state, strict=True)
    rng = random.Random(4)
    for ids in (random_ids(rng, 5), random_ids(rng, 33)):
        with torch.inference_mode():
            got = model(torch.tensor([ids]))[0]
        assert (got.double() - reference_forward(state, TWELVE_HEADS, ids)).abs().max() <= 1e-5


# --- pooling -----------------------------------------------------------------------------------


def test_batched_masked_mean_equals_one_at_a_time(tiny_dir: Path) -> None:
    model = load_dnabert(tiny_dir)
    rng = random.Random(5)
    seqs = [random_ids(rng, n) for n in (40, 1, 12, 0, 25)]
    batched = embed_dnabert(model, seqs)
    assert batched.dtype == torch.float32 and batched.shape == (5, 32)
    for row, ids in enumerate(seqs):
        with torch.inference_mode():
            alone = model(torch.tensor([ids]))[0].mean(dim=0)  # the original: no mask, all tokens
        assert (batched[row] - alone).abs().max() <= 1e-5
        ref = reference_forward(
            torch.load(tiny_dir / "pytorch_model.bin", weights_only=True), model.config, ids
        ).mean(dim=0)
        assert (batched[row].double() - ref).abs().max() <= 1e-5


def test_equal_lengths_and_empty_batch(tiny_dir: Path) -> None:
    model = load_dnabert(tiny_dir)
    rng = random.Random(6)
    seqs = [random_ids(rng, 9), random_ids(rng, 9)]
    together = embed_dnabert(model, seqs)
    apart = torch.cat([embed_dnabert(model, [s]) for s in seqs])
    assert (together - apart).abs().max() <= 1e-5
    assert embed_dnabert(model, []).shape == (0, 32)
    with pytest.raises(ValueError, match="empty token list"):
        embed_dnabert(model, [[1, 2], []])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close(tiny_dir: Path, dtype: torch.dtype) -> None:
    rng = random.Random(7)
    seqs = [random_ids(rng, n) for n in (60, 3, 150)]
    full = embed_dnabert(load_dnabert(tiny_dir), seqs)
    half_model = load_dnabert(tiny_dir, dtype=dtype)
    assert half_model.embeddings.word_embeddings.weight.dtype == dtype
    half = embed_dnabert(half_model, seqs)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert torch.nn.functional.cosine_similarity(full, half).min() >= 0.99
    # Padded positions, even a row with every key masked, stay finite.
    mask = torch.ones(3, 152, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, :] = 0
    with torch.inference_mode():
        hidden = half_model(torch.randint(5, 4096, (3, 152)), mask)
    assert torch.isfinite(hidden).all()


# --- loading -----------------------------------------------------------------------------------


def copy_model(src: Path, dst: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """`src` with its weights replaced by `state` (as pytorch_model.bin) when given."""
    dst.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    if state is None:
        (dst / "pytorch_model.bin").write_bytes((src / "pytorch_model.bin").read_bytes())
    else:
        torch.save(state, dst / "pytorch_model.bin")
    return dst


def tiny_state(tiny_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(tiny_dir / "pytorch_model.bin", weights_only=True)


def test_tiny_model_loads_strictly(tiny_dir: Path) -> None:
    model = load_dnabert(tiny_dir)
    assert not model.training and model.pooler is not None
    assert model.config == DnaBertConfig(4096, 32, 2, 4, 64, 2, 1e-12, 0)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tiny_state(tiny_dir).items())


def test_loads_in_the_asked_dtype_with_nothing_left_unloaded(tiny_dir: Path) -> None:
    """Built on the meta device and filled from the file: every tensor is real, in the asked
    dtype, equal to the file's (rounded); the ALiBi slopes, not in the file, are fp32."""
    model = load_dnabert(tiny_dir, dtype=torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert not any(t.is_meta for t in tensors.values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.alibi_slopes.dtype == torch.float32
    assert model.alibi_slopes.tolist() == pytest.approx(alibi_slopes(4))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v.to(torch.bfloat16)) for k, v in tiny_state(tiny_dir).items())


def test_dnabert2_style_checkpoint_loads(tiny_dir: Path, tmp_path: Path) -> None:
    # BertForMaskedLM: `bert.` prefix, an MLM head under `cls.`, and no pooler.
    state = {f"bert.{k}": v for k, v in tiny_state(tiny_dir).items() if not k.startswith("pooler.")}
    state["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    state["cls.predictions.decoder.bias"] = torch.zeros(4096)
    model = load_dnabert(copy_model(tiny_dir, tmp_path / "mlm", state))
    assert model.pooler is None
    ids = [[1, 5, 6, 1049, 2]]
    assert torch.equal(embed_dnabert(model, ids), embed_dnabert(load_dnabert(tiny_dir), ids))


def test_safetensors_is_preferred(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_dir, tmp_path / "st")
    other = random_state(DnaBert(load_dnabert_config(tiny_dir)), seed=9)
    save_file(other, model_dir / "model.safetensors")
    sd = load_dnabert(model_dir).state_dict()
    assert all(torch.equal(sd[k], v) for k, v in other.items())
    (model_dir / "pytorch_model.bin").unlink()
    assert torch.equal(
        load_dnabert(model_dir).state_dict()["pooler.dense.bias"], other["pooler.dense.bias"]
    )


def test_missing_key_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    state = tiny_state(tiny_dir)
    del state["encoder.layer.1.mlp.wo.bias"]
    model_dir = copy_model(tiny_dir, tmp_path / "m", state)
    with pytest.raises(
        ModelError, match=r"pytorch_model\.bin.*1 missing keys \(encoder\.layer\.1\.mlp\.wo\.bias\)"
    ):
        load_dnabert(model_dir)


def test_unexpected_keys_are_named(tiny_dir: Path, tmp_path: Path) -> None:
    state = tiny_state(tiny_dir)
    for n in range(5):
        state[f"encoder.layer.{n + 2}.mlp.wo.bias"] = torch.zeros(32)
    model_dir = copy_model(tiny_dir, tmp_path / "u", state)
    with pytest.raises(
        ModelError, match=r"5 unexpected keys \(encoder\.layer\.2\.mlp\.wo\.bias, .*, \.\.\.\)$"
    ):
        load_dnabert(model_dir)


def test_shape_mismatch_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_dir, tmp_path / "s")
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 16
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelError, match=r"encoder\.layer\.0\.mlp\.gated_layers\.weight has shape \(128, 32\)"
    ):
        load_dnabert(model_dir)


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no dir", r"nowhere: DNABERT-S model directory not found"),
        ("no config", r"config\.json is missing"),
        ("no field", r"config\.json: DNABERT-S config lacks num_attention_heads"),
        ("no weights", r"no DNABERT-S weights \(model\.safetensors or pytorch_model\.bin\)"),
        ("garbage weights", r"pytorch_model\.bin: cannot read DNABERT-S weights"),
        ("pickled object", r"pytorch_model\.bin: cannot read DNABERT-S weights"),
        ("garbage safetensors", r"model\.safetensors: cannot read DNABERT-S weights"),
    ],
)
def test_bad_model_dirs(tiny_dir: Path, tmp_path: Path, damage: str, message: str) -> None:
    model_dir = copy_model(tiny_dir, tmp_path / "bad")
    if damage == "no dir":
        model_dir = tmp_path / "nowhere"
    elif damage == "no config":
        (model_dir / "config.json").unlink()
    elif damage == "no field":
        config = json.loads((model_dir / "config.json").read_text())
        del config["num_attention_heads"]
        (model_dir / "config.json").write_text(json.dumps(config))
    elif damage == "no weights":
        (model_dir / "pytorch_model.bin").unlink()
    elif damage == "garbage weights":
        (model_dir / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    elif damage == "pickled object":  # weights_only=True refuses to build arbitrary objects
        torch.save({"x": NotATensor()}, model_dir / "pytorch_model.bin")
    else:
        (model_dir / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ModelError, match=message) as info:
        load_dnabert(model_dir)
    assert "\n" not in str(info.value)


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"tokenizer\.json is missing"):
        load_dnabert_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match=r"tokenizer\.json: cannot read tokenizer"):
        load_dnabert_tokenizer(tmp_path)
