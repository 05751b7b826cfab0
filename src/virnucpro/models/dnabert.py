"""DNABERT-S (MosaicBERT, the DNABERT-2-117M architecture) in plain PyTorch.

Attribute names equal the checkpoint keys, so the published `pytorch_model.bin` loads with
`strict=True`. Written from SPEC §4 and a reading of MosaicBERT's `bert_layers.py`; we never run
the hub's remote code. Dropout is left out: it is inactive at inference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from virnucpro.errors import ModelError
from virnucpro.models.attention import attention

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
CLS_ID = 1
SEP_ID = 2
ENCODE_ROWS = 256  # sequences per tokenizer call: bounds its working memory (tokenize_dna)


@dataclass(frozen=True)
class DnaBertConfig:
    """The fields of the hub `config.json` that shape the network (`auto_map` is ignored)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes: geometric for 2^k heads; else MosaicBERT's rule (SPEC §4).

    For 12 heads: 2^-1 .. 2^-8 (the 8-head series), then every other slope of the 16-head
    series: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class DnaBertEmbeddings(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Every token is of type 0 and there are no position embeddings (ALiBi instead).
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]  # [B, T, H]
        return self.LayerNorm(x)


class DnaBertSelfAttention(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.Wqkv(x)  # [B, T, 3*H], laid out as (q | k | v), heads contiguous in each
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim)  # [B, T, 3, nh, dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nh, T, dh]
        # softmax(q k^T / sqrt(dh) + bias) v; bias = ALiBi + key padding, [B or 1, nh, T, T]
        out = attention(q, k, v, bias)  # [B, nh, T, dh]; SDPA, cuDNN left out
        return out.transpose(1, 2).reshape(batch, length, hidden)  # [B, T, nh*dh]


class DnaBertSelfOutput(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, attn: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(attn))  # post-LN


class DnaBertAttention(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.self = DnaBertSelfAttention(cfg)
        self.output = DnaBertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class DnaBertGatedMlp(nn.Module):
    """GeGLU: the first half of `gated_layers` goes through exact GELU and gates the second."""

    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gated_layers(x)  # [B, T, 2*I]
        gate, value = h[..., : self.intermediate_size], h[..., self.intermediate_size :]
        h = F.gelu(gate, approximate="none") * value  # [B, T, I]
        return self.layernorm(x + self.wo(h))  # post-LN


class DnaBertLayer(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.attention = DnaBertAttention(cfg)
        self.mlp = DnaBertGatedMlp(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, bias))


class DnaBertEncoder(nn.Module):
    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(DnaBertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class DnaBertPooler(nn.Module):
    """Loaded so that the checkpoint matches strictly; VirNucPro never uses it."""

    def __init__(self, cfg: DnaBertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class DnaBert(nn.Module):
    """The DNABERT-S encoder: token ids -> last hidden layer. No final LayerNorm."""

    def __init__(self, config: DnaBertConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = DnaBertEmbeddings(config)
        self.encoder = DnaBertEncoder(config)
        # DNABERT-2's masked-LM checkpoint has no pooler; DNABERT-S's has one.
        self.pooler = DnaBertPooler(config) if add_pooler else None
        slopes = torch.tensor(alibi_slopes(config.num_attention_heads), dtype=torch.float32)
        self.register_buffer("alibi_slopes", slopes, persistent=False)  # [nh]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T] token ids (and a [B, T] mask, 1 = real token) -> [B, T, H] last hidden layer."""
        x = self.embeddings(input_ids)  # [B, T, H]
        bias = self.attention_bias(input_ids.shape[1], attention_mask, x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    def attention_bias(
        self, length: int, attention_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Symmetric ALiBi `-slope_h * |i - j|` with padded keys blanked out, in one float bias.

        The original adds -10000 for padded keys; any value that makes their weight exactly 0
        gives the same result. We use half the dtype's lowest finite value: it cannot overflow
        when SDPA adds the scores, and a row with every key masked stays finite (no NaN).
        """
        pos = torch.arange(length, device=self.alibi_slopes.device)
        distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)  # [T, T]
        # Slopes are rounded to the model dtype by `.to(dtype)`; the bias is rounded anyway.
        slopes = self.alibi_slopes.to(torch.float32).view(-1, 1, 1)  # [nh, 1, 1]
        bias = (-slopes * distance).unsqueeze(0)  # [1, nh, T, T]
        if attention_mask is not None:
            keep = attention_mask.to(torch.bool)[:, None, None, :]  # [B, 1, 1, T]
            bias = bias.masked_fill(~keep, torch.finfo(dtype).min / 2)  # [B, nh, T, T]
        return bias.to(dtype)


def load_dnabert_config(model_dir: Path) -> DnaBertConfig:
    """Read the network shape from `model_dir/config.json`."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir}: DNABERT-S config.json is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read DNABERT-S config: {_first_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: DNABERT-S config is not a JSON object")
    names = [f.name for f in fields(DnaBertConfig)]
    missing = [name for name in names if name not in raw]
    if missing:
        raise ModelError(f"{path}: DNABERT-S config lacks {', '.join(missing)}")
    try:
        cfg = DnaBertConfig(**{n: (float if n == "layer_norm_eps" else int)(raw[n]) for n in names})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: bad value in DNABERT-S config: {_first_line(exc)}") from exc
    if cfg.num_attention_heads < 1 or cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(
            f"{path}: hidden_size {cfg.hidden_size} is not a multiple of "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    return cfg


def load_dnabert(
    model_dir: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DnaBert:
    """Build DNABERT-S from a local directory (config.json + weights), strictly, in eval mode.

    The weights are read straight onto `device` and cast there; the network is built without
    weights of its own (on the meta device), so nothing is initialised only to be replaced
    and no full fp32 copy is made in host memory for a GPU run."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: DNABERT-S model directory not found")
    cfg = load_dnabert_config(model_dir)
    device = torch.device(device)
    path, state = _read_weights(model_dir, device)
    state = _strip_mlm_wrapper(state)
    with torch.device("meta"):
        model = DnaBert(cfg, add_pooler=any(k.startswith("pooler.") for k in state))
    _check_keys(model, state, path)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # Not in the checkpoint: made afresh on the device (fp32, as attention_bias wants them).
    model.alibi_slopes = torch.tensor(alibi_slopes(cfg.num_attention_heads),
                                      dtype=torch.float32, device=device)
    return model.eval()


def _read_weights(model_dir: Path, device: torch.device) -> tuple[Path, dict[str, torch.Tensor]]:
    """Prefer safetensors; the hub's pickle is read with `weights_only=True` (no code runs).
    The tensors are put on `device` as they are read."""
    for path in (model_dir / SAFETENSORS_FILE, model_dir / TORCH_FILE):
        if path.is_file():
            break
    else:
        raise ModelError(f"{model_dir}: no DNABERT-S weights ({SAFETENSORS_FILE} or {TORCH_FILE})")
    try:
        if path.name == SAFETENSORS_FILE:
            from safetensors.torch import load_file

            state = load_file(path, device=str(device))
        else:
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a corrupt file, or a pickle that is not a plain state dict
        raise ModelError(f"{path}: cannot read DNABERT-S weights: {_first_line(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a plain state dict of tensors")
    return path, state


def _strip_mlm_wrapper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept DNABERT-2-style `BertForMaskedLM` checkpoints: drop `bert.` and the `cls.*` head."""
    return {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("cls.")}


def _check_keys(model: DnaBert, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a one-line ModelError for missing, unexpected or mis-shaped checkpoint keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = ", ..." if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label} keys ({', '.join(keys[:3])}{more})")
    if problems:
        raise ModelError(f"{path}: not a DNABERT-S checkpoint: {'; '.join(problems)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelError(
                f"{path}: {key} has shape {tuple(value.shape)}, config.json implies "
                f"{tuple(expected[key].shape)}"
            )


def load_dnabert_tokenizer(model_dir: Path) -> Tokenizer:
    """The BPE tokenizer from `tokenizer.json`, with its baked-in padding/truncation (2000) off."""
    path = Path(model_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir}: DNABERT-S tokenizer.json is missing")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read tokenizer: {_first_line(exc)}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    # DNA has no spaces, so each read is one new "word" to the BPE and its word cache (10,000
    # words) never hits; it only fragments the heap, which grew ~0.3 MiB per 256-frame unit.
    if hasattr(tokenizer.model, "_resize_cache"):
        tokenizer.model._resize_cache(0)
    ids = tokenizer.encode("A").ids
    if ids[:1] != [CLS_ID] or ids[-1:] != [SEP_ID]:
        raise ModelError(f"{path}: tokenizer does not wrap sequences as [CLS] ... [SEP]")
    return tokenizer


def tokenize_dna(tokenizer: Tokenizer, seqs: Sequence[str]) -> list[list[int]]:
    """Token ids `[CLS] ... [SEP]` per sequence. Upper-cased first: lower case maps to [UNK].

    Encoded ENCODE_ROWS sequences at a time: an `Encoding` holds ~160 bytes a token besides
    its ids (token strings, offsets, masks), 17-25 KB for a 500 bp chunk, so one call over a
    whole work unit (which holds whole records: thousands of frames for a long contig) made
    the worker's peak grow with the largest unit of the input."""
    ids: list[list[int]] = []
    for start in range(0, len(seqs), ENCODE_ROWS):
        batch = [s.upper() for s in seqs[start:start + ENCODE_ROWS]]
        ids.extend(enc.ids for enc in tokenizer.encode_batch(batch))
    return ids


def embed_dnabert(model: DnaBert, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, H] float32 on the model's device: mean of the last layer over all real tokens.

    `[CLS]` and `[SEP]` count, as in the original (one sequence at a time, no mask). Padding is
    masked out, so a batch gives each sequence the same vector. Never waits on the device.
    """
    device = next(model.parameters()).device
    if not token_ids:
        return torch.zeros(0, model.config.hidden_size, device=device)
    lengths = [len(ids) for ids in token_ids]
    if min(lengths) == 0:
        raise ValueError("embed_dnabert: an empty token list (tokenize_dna adds [CLS] and [SEP])")
    width, pad = max(lengths), model.config.pad_token_id
    ids = torch.tensor([list(row) + [pad] * (width - len(row)) for row in token_ids])  # [B, T]
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [B, T] bool
    if device.type == "cuda":
        ids, mask = ids.pin_memory(), mask.pin_memory()
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    with torch.inference_mode():
        # Equal lengths need no mask; the smaller [1, nh, T, T] bias is then shared by the batch.
        hidden = model(ids, None if min(lengths) == width else mask)  # [B, T, H]
        hidden = hidden.to(torch.float32).masked_fill(~mask[:, :, None], 0.0)  # [B, T, H]
        return hidden.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(torch.float32)  # [B, H]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
