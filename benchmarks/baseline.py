"""The original VirNucPro's embedding loops: the baseline our speed is measured against.

Used by `bench_predict.py` (CPU, in a process of its own) and `gpu_check.py` (on the GPU,
after the end-to-end run, on the same frames). Everything is fp32, as the original ran it:

- DNABERT-S one sequence at a time: tokenise, forward with no mask, mean over every token
  ([CLS] and [SEP] included). Our own `DnaBert` stands in for the hub's remote code (same
  maths; the hub's unpadding code does more work per call, so the baseline errs fast).
- ESM-2 in fair-esm's greedy batches (`FastaBatchedDataset.get_batch_indices(2048,
  extra_toks_per_seq=1)`: sorted by length, at most 2048 padded tokens), the mean of the
  last layer over residues 1..min(len, 1024). The model is fair-esm's own `ESM2`; where
  fair-esm is not installed, transformers' `EsmModel` with eager attention (what an
  unoptimised HF port runs), and the result says which (`OriginalEsm.backend`).

The loops keep to a deadline (for a GPU run's time budget): they stop after the sequence or
batch that crosses it, and report what they did, so a rate is valid even if a pass is cut.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common as C
import torch

TOKS_PER_BATCH = 2048  # the original's toks_per_batch
MAX_RESIDUES = 1024  # the original's mean covers at most this many residues
CPU = torch.device("cpu")


@dataclass(frozen=True)
class OriginalEsm:
    """ESM-2 as the original ran it, whichever implementation is at hand."""

    backend: str  # "fair-esm" | "transformers (eager attention)"
    tokens: Callable[[list[str]], torch.Tensor]  # proteins -> [B, T] ids: <cls> .. <eos> <pad>
    last_layer: Callable[[torch.Tensor], torch.Tensor]  # [B, T] ids -> [B, T, H]
    linear_weights: int  # of the encoder layers (for MFU)
    hidden: int


# ------------------------------------------------------------------ loading
def load_fair_esm(path: str | Path) -> tuple[Any, Any]:
    """fair-esm's ESM2 from its .pt, built by fair-esm itself (`load_model_and_alphabet_local`
    does the same, but its torch.load predates weights_only and refuses the file's config)."""
    import esm

    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, map_location="cpu")
    model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_random", data, None)
    return model.eval(), alphabet


def fair_esm(model: Any, alphabet: Any) -> OriginalEsm:
    """A loaded fair-esm ESM2 as the baseline runs it."""
    convert = alphabet.get_batch_converter()
    last = model.num_layers
    linear = sum(m.weight.numel() for m in model.layers.modules()
                 if isinstance(m, torch.nn.Linear))
    return OriginalEsm(
        "fair-esm", lambda proteins: convert([(str(i), p) for i, p in enumerate(proteins)])[2],
        lambda toks: model(toks, repr_layers=[last])["representations"][last],
        linear, model.embed_dim)


def original_esm(esm_dir: Path, device: torch.device, backend: str = "auto") -> OriginalEsm:
    """The ESM-2 of an HF directory (as `virnucpro predict` loads it) in fp32 on `device`,
    as fair-esm's ESM2 (`backend` "fair-esm"), transformers' EsmModel with eager attention
    ("transformers"), or the first of these that imports ("auto")."""
    hf = _hf_esm_eager(esm_dir)
    if backend in ("auto", "fair-esm"):
        try:
            import esm
        except ImportError:
            if backend == "fair-esm":
                raise
        else:
            alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
            cfg = hf.config
            with torch.device(device):  # random init on the device: fast even for 3B
                model = esm.model.esm2.ESM2(
                    num_layers=cfg.num_hidden_layers, embed_dim=cfg.hidden_size,
                    attention_heads=cfg.num_attention_heads, alphabet=alphabet,
                    token_dropout=cfg.token_dropout)
            _load_hf_weights(model, hf.state_dict())
            return fair_esm(model.eval(), alphabet)
    return _transformers_esm(hf.to(device), esm_dir)


def _hf_esm_eager(esm_dir: Path) -> Any:
    from transformers import EsmModel

    from virnucpro.models.esm import quiet_transformers

    with quiet_transformers():
        return EsmModel.from_pretrained(esm_dir, add_pooling_layer=False, dtype=torch.float32,
                                        attn_implementation="eager",
                                        local_files_only=True).eval()


def _load_hf_weights(model: Any, hf_state: dict[str, torch.Tensor]) -> None:
    """HF weights into a fair-esm ESM2. Only its unused language-model head keeps its random
    init, and its rotary frequencies their own (the same formula; transformers' are one
    shared buffer or one per layer, by version)."""
    from virnucpro.models.esm import rename_weight

    state = {}
    for name, value in hf_state.items():
        if name.endswith("inv_freq"):
            continue
        fair = rename_weight(name, to_hf=False)
        if fair is None:
            raise KeyError(f"no fair-esm name for ESM-2 weight {name!r}")
        state[fair] = value
    state["lm_head.weight"] = state["embed_tokens.weight"]  # tied in fair-esm
    report = model.load_state_dict(state, strict=False)
    left = [k for k in report.missing_keys
            if not (k.startswith("lm_head.") or k.endswith("rot_emb.inv_freq"))]
    if left or report.unexpected_keys:
        raise KeyError(f"ESM-2 weights do not match fair-esm's ESM2: missing {left}, "
                       f"unexpected {report.unexpected_keys}")


def _transformers_esm(model: Any, esm_dir: Path) -> OriginalEsm:
    from transformers import EsmTokenizer

    tok = EsmTokenizer.from_pretrained(esm_dir, local_files_only=True)

    def last_layer(toks: torch.Tensor) -> torch.Tensor:
        mask = toks != tok.pad_token_id
        return model(input_ids=toks, attention_mask=mask).last_hidden_state

    return OriginalEsm(
        "transformers (eager attention)",
        lambda proteins: tok(proteins, padding=True, return_tensors="pt")["input_ids"],
        last_layer, C.encoder_linear_weights(model), model.config.hidden_size)


# ------------------------------------------------------------------ the loops
def original_batches(proteins: Sequence[str], toks_per_batch: int = TOKS_PER_BATCH,
                     extra_toks_per_seq: int = 1) -> list[list[int]]:
    """fair-esm's `FastaBatchedDataset.get_batch_indices`, spelled out (so that the
    transformers fallback batches as the original did): shortest first, a new batch when
    (longest + extra) x rows would pass `toks_per_batch`."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for size, i in sorted((len(p), i) for i, p in enumerate(proteins)):
        size += extra_toks_per_seq
        if current and max(size, longest) * (len(current) + 1) > toks_per_batch:
            batches.append(current)
            current, longest = [], 0
        longest = max(longest, size)
        current.append(i)
    if current:
        batches.append(current)
    return batches


def baseline_dnabert(model: Any, tok: Any, frames: Sequence[Any],
                     device: torch.device = CPU,
                     deadline: float | None = None) -> dict[str, Any]:
    """The original: tokenise and run one sequence at a time, no mask, mean over all tokens."""
    seqs = [f.nucleotide for f in frames]
    with torch.inference_mode():
        model(torch.tensor([tok.encode(seqs[0]).ids], device=device))  # warm-up
        C.sync(device)
        embs, lengths, pieces = [], [], []
        t0 = time.perf_counter()
        for s in seqs:
            t1 = time.perf_counter()
            ids = torch.tensor([tok.encode(s).ids], device=device)  # [1, T]
            embs.append(model(ids)[0].mean(dim=0))  # [H]
            lengths.append(ids.shape[1])
            pieces.append((time.perf_counter() - t1, [ids.shape[1]]))
            if deadline is not None and time.perf_counter() > deadline:
                break
        C.sync(device)
        secs = time.perf_counter() - t0
    return _result(secs, lengths, pieces, device, C.encoder_linear_weights(model),
                   torch.stack(embs))


def baseline_esm(esm: OriginalEsm, frames: Sequence[Any],
                 device: torch.device = CPU,
                 deadline: float | None = None) -> dict[str, Any]:
    """The original: ESM-2 in fair-esm's batches of <= 2048 tokens, fp32, mean over residues
    1..min(len, 1024). Rows past the deadline are left zero (`sequences` says how many ran)."""
    proteins = [f.protein for f in frames]
    batches = original_batches(proteins)
    embs = torch.zeros(len(proteins), esm.hidden, device=device)
    lengths, pieces = [], []
    with torch.no_grad():
        esm.last_layer(esm.tokens(proteins[:1]).to(device))  # warm-up
        C.sync(device)
        t0 = time.perf_counter()
        for batch in batches:
            t1 = time.perf_counter()
            reps = esm.last_layer(esm.tokens([proteins[i] for i in batch]).to(device))
            for row, i in enumerate(batch):  # reps: [B, T, H]
                embs[i] = reps[row, 1: min(len(proteins[i]), MAX_RESIDUES) + 1].mean(dim=0)
            lengths += [len(proteins[i]) + 2 for i in batch]
            pieces.append((time.perf_counter() - t1, lengths[-len(batch):]))
            if deadline is not None and time.perf_counter() > deadline:
                break
        C.sync(device)
        secs = time.perf_counter() - t0
    out = _result(secs, lengths, pieces, device, esm.linear_weights, embs)
    return out | {"batches": len(pieces), "backend": esm.backend}


def _result(secs: float, lengths: list[int], pieces: list, device: torch.device,
            linear_weights: int, embeddings: torch.Tensor) -> dict[str, Any]:
    """What `C.throughput_row` reads, plus the embeddings. Per-call times ("pieces") only on
    a CPU: on a GPU they would time the host's queueing (only `seconds` is synchronised)."""
    return {"seconds": secs, "sequences": len(lengths), "tokens": sum(lengths),
            "padded_tokens": sum(lengths), "lengths": lengths,
            "pieces": pieces if device.type == "cpu" else [],
            "linear_weights": linear_weights, "embeddings": embeddings}
