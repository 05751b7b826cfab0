"""ESM-2 protein embeddings via `transformers.EsmModel` (SDPA attention), pooled as VirNucPro does.

Also converts a fair-esm checkpoint (`esm2_*.pt`) into a local Hugging Face model directory,
reading it with the restricted unpickler of `virnucpro.models.safeload`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import ModelError
from virnucpro.models.attention import attention
from virnucpro.models.safeload import load_pickle

# The original averaged at most this many residues (fair-esm's `truncation_seq_length`).
POOL_MAX_RESIDUES = 1024

# The ESM-1b/ESM-2 alphabet (fair-esm `Alphabet.from_architecture("ESM-1b")`), in id order.
ESM_VOCAB = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W",
    "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
_PAD_ID = ESM_VOCAB.index("<pad>")
_MASK_ID = ESM_VOCAB.index("<mask>")


@dataclass(frozen=True)
class EsmInfo:
    """What `config.json` says about an ESM-2 directory (read without importing torch models)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    position_embedding_type: str
    token_dropout: bool


def load_esm_config(model_dir: Path) -> EsmInfo:
    """Read and check `model_dir/config.json` of an ESM-2 model."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read ESM-2 config ({exc})") from None
    if cfg.get("model_type") != "esm":
        raise ModelError(f"{path}: model_type is {cfg.get('model_type')!r}, expected 'esm'")
    try:
        return EsmInfo(
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            position_embedding_type=str(cfg.get("position_embedding_type", "absolute")),
            token_dropout=bool(cfg.get("token_dropout", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: incomplete ESM-2 config ({exc})") from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports; we check the report ourselves."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_esm(model_dir: Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a local ESM-2 directory as `(EsmModel, EsmTokenizer)`, in eval mode, without pooler."""
    import transformers
    from transformers import EsmModel, EsmTokenizer

    model_dir = Path(model_dir)
    if int(transformers.__version__.split(".")[0]) < 5:
        # The module layout (rotary tables at the model, `encoder.layer`) is transformers 5's.
        raise ModelError(f"ESM-2 needs transformers>=5 (found {transformers.__version__})")
    load_esm_config(model_dir)  # a clear error before transformers' own
    try:
        with quiet_transformers():
            # Safe by construction: a local directory only; model code is transformers' own
            # (never remote code); weights come from model.safetensors, or from a .bin read
            # through torch's weights-only unpickler when no safetensors file exists.
            model, report = EsmModel.from_pretrained(
                model_dir, add_pooling_layer=False, attn_implementation="sdpa", dtype=dtype,
                local_files_only=True, trust_remote_code=False, weights_only=True,
                output_loading_info=True)
            tokenizer = EsmTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{model_dir}: cannot load ESM-2 model ({exc})") from None
    # contact_head is never used; anything else missing would be silently random.
    missing = sorted(k for k in report["missing_keys"] if not k.startswith("contact_head."))
    if missing:
        raise ModelError(f"{model_dir}: ESM-2 weights missing: {', '.join(missing)}")
    # On the device first: q, k and v are then stacked there, not in host memory.
    return use_inference_layers(model.to(device).eval()), tokenizer


class EsmInferenceLayer(nn.Module):
    """One ESM-2 encoder layer for inference, computing what transformers' `EsmLayer` does:
    pre-LayerNorm self-attention with rotary q/k, then a pre-LayerNorm GELU feed-forward, each
    added to the residual stream. Made from a loaded `EsmLayer` (`from_hf`), with its weights.

    What differs is how, not what:
    - q, k and v come from one GEMM (`qkv`, the three weight matrices stacked) instead of three;
    - the rotary angles come in as fp32 tables and q/k are rotated in fp32, as transformers
      does, but with fp32 rather than compute-dtype cos/sin (in fp32 runs they are the same);
    - the exact (erf) GELU is one `F.gelu` instead of transformers' five-pass spelled-out form
      (equal to within float rounding; ~20% of ESM-2's CPU time);
    - a padding mask is `[B, 1, 1, T]` (broadcast) and goes straight to SDPA; without padding
      there is no mask, so SDPA may pick its fastest (flash) kernel.
    It takes plain tensors only, so each layer can be compiled on its own (`runtime/compile.py`).
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)

    @classmethod
    def from_hf(cls, layer: Any) -> EsmInferenceLayer:
        """The same layer, holding `layer`'s weights (q/k/v stacked into one new tensor)."""
        attn = layer.attention.self
        hidden = attn.query.in_features
        with torch.device("meta"):  # no weights of its own: they are layer's
            new = cls(hidden, attn.num_attention_heads, layer.intermediate.dense.out_features,
                      layer.LayerNorm.eps)
        new.attn_norm = layer.attention.LayerNorm
        new.attn_out = layer.attention.output.dense
        new.ffn_norm = layer.LayerNorm
        new.ffn_in = layer.intermediate.dense
        new.ffn_out = layer.output.dense
        projections = (attn.query, attn.key, attn.value)
        new.qkv = nn.Linear(hidden, 3 * hidden, device="meta")
        with torch.no_grad():
            new.qkv.weight = nn.Parameter(torch.cat([p.weight for p in projections]),
                                          requires_grad=False)
            new.qkv.bias = nn.Parameter(torch.cat([p.bias for p in projections]),
                                        requires_grad=False)
        return new.train(layer.training)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, H]; keys: [B, 1, 1, T] True for real tokens, or None; cos/sin [T, dh] fp32."""
        batch, width, hidden = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, width, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nh, T, dh]
        # ESM scales q before the rotation (as fair-esm and transformers do), then SDPA by 1.
        q = _rotate(q * self.head_dim**-0.5, cos, sin)
        k = _rotate(k, cos, sin)
        attn = attention(q, k, v, keys, scale=1.0)  # SDPA, cuDNN left out
        x = x + self.attn_out(attn.transpose(1, 2).reshape(batch, width, hidden))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, nh, T, dh] with fp32 tables [T, dh], computed in fp32."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def use_inference_layers(model: Any) -> Any:
    """Replace each `EsmLayer` of `model` by an `EsmInferenceLayer` holding its weights (in
    place). `embed_esm` runs the layers itself, so the model's own `forward` is not used after
    this (its layers no longer take transformers' arguments)."""
    layers = model.encoder.layer
    for i, layer in enumerate(layers):
        if not isinstance(layer, EsmInferenceLayer):
            layers[i] = EsmInferenceLayer.from_hf(layer)
    return model


def rotary_tables(model: Any, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """fp32 cos and sin [T, dh] of ESM-2's rotary angles for positions 0..T-1.

    The frequencies are the model's own `inv_freq` buffer, not recomputed: the published
    checkpoints store it with fp16 rounding, and fair-esm uses it as stored. It stays fp32 when
    the model loads in bf16, and the angles are computed in fp32 whatever the model's dtype."""
    inv_freq = model.rotary_embeddings.inv_freq.to(device=device, dtype=torch.float32)
    angles = torch.arange(width, dtype=torch.float32, device=device)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)  # [T, dh]
    return angles.cos(), angles.sin()


def tokenize_protein(tokenizer: Any, proteins: Sequence[str]) -> list[list[int]]:
    """Token ids `<cls> residues <eos>` per protein, one token per character.

    Same ids as fair-esm's batch converter for amino-acid strings; characters outside the
    vocabulary become `<unk>`. (Unlike fair-esm, a literal "<mask>" text is not one token:
    translated proteins never contain "<".)
    """
    vocab = tokenizer.get_vocab()
    cls_id, eos_id, unk_id = tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    return [[cls_id, *(vocab.get(c, unk_id) for c in protein), eos_id] for protein in proteins]


def _pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """CPU tensors: ids [B,T], attention mask [B,T], pooling weights [B,T], residue counts [B]."""
    lengths = [len(ids) for ids in token_ids]
    if min(lengths) < 3:
        raise ValueError("every protein needs at least one residue between <cls> and <eos>")
    width = max(lengths)
    ids = torch.tensor([[*row, *([pad_id] * (width - len(row)))] for row in token_ids])
    positions = torch.arange(width)
    n_res = torch.tensor(lengths) - 2
    mask = positions[None, :] < torch.tensor(lengths)[:, None]
    # Quirk of the original (SPEC §4): the whole protein goes through the model, untruncated,
    # but the mean covers only residues 1..min(len, 1024) (its truncation_seq_length=1024 was
    # applied when pooling, not when tokenising).
    counts = n_res.clamp(max=POOL_MAX_RESIDUES)
    weights = (positions[None, :] >= 1) & (positions[None, :] <= counts[:, None])
    return ids, mask.long(), weights.float(), counts.float()


def embed_esm(model: Any, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean last-layer ESM-2 embedding per protein, `[B, hidden]` float32 on the model's device.

    Padding is masked, so a batch gives the same vectors as one protein at a time. Nothing here
    waits for the device (inputs are built on the host and copied without blocking).
    """
    device = next(model.parameters()).device
    if not token_ids:
        return torch.empty((0, model.config.hidden_size), device=device)
    ids, mask, weights, counts = _pad_batch(token_ids, model.config.pad_token_id)
    if device.type == "cuda":
        ids, mask, weights, counts = (t.pin_memory() for t in (ids, mask, weights, counts))
    ids, mask, weights, counts = (t.to(device, non_blocking=True)
                                  for t in (ids, mask, weights, counts))
    padded = len({len(row) for row in token_ids}) > 1
    with torch.inference_mode():
        hidden = _last_hidden(model, ids, mask if padded else None).float()  # [B, T, H]
        summed = (hidden * weights.unsqueeze(-1)).sum(dim=1)  # [B, H]; pooled in fp32
        return summed / counts.unsqueeze(-1)


def _last_hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The last layer's output [B, T, H] (after ESM-2's final LayerNorm); `mask` [B, T] marks
    real tokens (None: no padding). The embedding layer sees the 2D mask: it zeroes padding and
    scales token dropout as transformers' forward does."""
    hidden = model.embeddings(input_ids=ids, attention_mask=mask)  # [B, T, H]
    cos, sin = rotary_tables(model, ids.shape[1], ids.device)
    keys = None if mask is None else mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    for layer in model.encoder.layer:
        hidden = layer(hidden, keys, cos, sin)
    return model.encoder.emb_layer_norm_after(hidden)


# ------------------------------------------------------------------ fair-esm conversion
# fair-esm ESM2 weight names and transformers' EsmModel names, as prefixes; "{}" is the layer.
FAIR_HF_NAMES = (
    ("embed_tokens.", "embeddings.word_embeddings."),
    ("layers.{}.self_attn.q_proj.", "encoder.layer.{}.attention.self.query."),
    ("layers.{}.self_attn.k_proj.", "encoder.layer.{}.attention.self.key."),
    ("layers.{}.self_attn.v_proj.", "encoder.layer.{}.attention.self.value."),
    ("layers.{}.self_attn.out_proj.", "encoder.layer.{}.attention.output.dense."),
    ("layers.{}.self_attn.rot_emb.inv_freq",
     "encoder.layer.{}.attention.self.rotary_embeddings.inv_freq"),
    ("layers.{}.self_attn_layer_norm.", "encoder.layer.{}.attention.LayerNorm."),
    ("layers.{}.fc1.", "encoder.layer.{}.intermediate.dense."),
    ("layers.{}.fc2.", "encoder.layer.{}.output.dense."),
    ("layers.{}.final_layer_norm.", "encoder.layer.{}.LayerNorm."),
    ("emb_layer_norm_after.", "encoder.emb_layer_norm_after."),
    ("contact_head.regression.", "contact_head.regression."),
)
_DROPPED = re.compile(r"lm_head\.|.*\.version$")  # the language-model head is not used


def rename_weight(name: str, to_hf: bool = True) -> str | None:
    """A weight's name on the other side of `FAIR_HF_NAMES` (fair-esm -> transformers, or the
    reverse with `to_hf=False`); None when no entry covers it."""
    for fair, hf in FAIR_HF_NAMES:
        source, target = (fair, hf) if to_hf else (hf, fair)
        found = re.match(re.escape(source).replace(r"\{\}", r"(\d+)"), name)
        if found:
            return target.format(*found.groups()) + name[found.end():]
    return None


def _hf_name(fair_name: str) -> str | None:
    """HF EsmModel key for a fair-esm ESM2 key (None: dropped; "": unknown)."""
    name = re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", fair_name)
    hf = rename_weight(name)
    if hf is not None:
        return hf
    return None if _DROPPED.match(name) else ""


def _fair_hparams(ckpt: dict, state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Layer count and width from the weights; heads and token dropout from cfg/args."""
    cfg = ckpt.get("cfg")
    source = cfg.get("model") if isinstance(cfg, dict) else None
    source = source if source is not None else ckpt.get("args")
    fields = vars(source) if isinstance(source, argparse.Namespace) else dict(source or {})
    heads = fields.get("encoder_attention_heads", fields.get("attention_heads"))
    if heads is None:
        raise ModelError(f"{path}: no encoder_attention_heads in the checkpoint's cfg/args")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
    if vocab_size != len(ESM_VOCAB):
        raise ModelError(f"{path}: {vocab_size} token embeddings, expected {len(ESM_VOCAB)}")
    return {"num_hidden_layers": len(layers), "hidden_size": int(hidden),
            "num_attention_heads": int(heads),
            "token_dropout": bool(fields.get("token_dropout", True))}


def _fair_state(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ESM2 weights under HF EsmModel names."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ModelError(f"{path}: not a fair-esm checkpoint (no 'model' state dict)")
    state: dict[str, torch.Tensor] = {}
    for key, value in ckpt["model"].items():
        name = _hf_name(key)
        if name == "":
            raise ModelError(f"{path}: unexpected weight {key!r} (only ESM-2 checkpoints convert)")
        if name is not None:
            state[name] = value.detach().contiguous()
    if "embeddings.word_embeddings.weight" not in state or not any("inv_freq" in k for k in state):
        raise ModelError(f"{path}: not an ESM-2 checkpoint (no token embeddings or rotary weights)")
    return state


def convert_fair_esm(pt_path: Path, out_dir: Path) -> Path:
    """Write a fair-esm ESM-2 checkpoint as an HF EsmModel directory (safetensors + vocab)."""
    from safetensors.torch import save_file
    from transformers import EsmConfig, EsmTokenizer

    pt_path, out_dir = Path(pt_path), Path(out_dir)
    ckpt = load_pickle(pt_path, allowed=[(argparse.Namespace, "argparse.Namespace")])
    state = _fair_state(ckpt, pt_path)
    hp = _fair_hparams(ckpt, state, pt_path)
    if "contact_head.regression.weight" not in state:
        # fair-esm ships the contact head in a separate file; we never use it, and zeros keep
        # the directory complete so loading it reports no missing weights.
        width = hp["num_hidden_layers"] * hp["num_attention_heads"]
        state["contact_head.regression.weight"] = torch.zeros(1, width)
        state["contact_head.regression.bias"] = torch.zeros(1)
    config = EsmConfig(
        vocab_size=len(ESM_VOCAB), pad_token_id=_PAD_ID, mask_token_id=_MASK_ID,
        intermediate_size=4 * hp["hidden_size"],  # fixed in ESM-2
        max_position_embeddings=1026, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, position_embedding_type="rotary",
        emb_layer_norm_before=False, architectures=["EsmModel"], **hp)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.to_json_file(out_dir / "config.json", use_diff=False)
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    vocab = out_dir / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(out_dir)
    return out_dir
