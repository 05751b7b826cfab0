"""Shared helpers of the model benchmarks (`bench_predict.py`, `gpu_check.py`).

- hardware description and a matmul peak (the denominator of every MFU figure);
- an analytic count of forward FLOPs (see `forward_flops`);
- random models at real sizes, built in memory or written in the real on-disk formats;
- a frame workload: random DNA biased so that chunks keep a frame of full length.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from virnucpro.frames import GENETIC_CODE, Frame, iter_record_frames
from virnucpro.reader import Record
from virnucpro.runtime.batching import token_batches

REPO = Path(__file__).resolve().parents[1]
# The real DNABERT-S tokenizer, kept with the test data (see tests/data/PROVENANCE.md).
TOKENIZER_CANDIDATES = (REPO / "tests" / "data" / "dnabert-s" / "tokenizer.json",)


# ------------------------------------------------------------------ model shapes
@dataclass(frozen=True)
class Shape:
    """The size of a transformer encoder (DNABERT-S: intermediate is the GeGLU half-width)."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int


DNABERT_S = Shape("DNABERT-S 117M", 12, 768, 12, 3072)
DNABERT_TINY = Shape("DNABERT-S tiny", 2, 64, 4, 128)
ESM2_3B = Shape("ESM-2 3B", 36, 2560, 40, 10240)
ESM2_650M = Shape("ESM-2 650M", 33, 1280, 20, 5120)
ESM2_150M = Shape("ESM-2 150M", 30, 640, 20, 2560)
ESM2_TINY = Shape("ESM-2 tiny", 2, 64, 4, 256)


# ------------------------------------------------------------------ hardware
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "device": str(device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "compute_capability": f"{props.major}.{props.minor}",
                 "cuda": torch.version.cuda,
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_kernels(device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    """The square-matmul kernels the models can use on `device`, by name.

    On a CUDA GPU: `torch.mm` (cuBLAS). On a CPU also oneDNN's linear op, which our CPU
    workers use for fp32 (`virnucpro.runtime.cpu`): MKL, behind `torch.mm`, is not the fastest
    kernel on every CPU, so a peak taken from `torch.mm` alone could understate the machine.
    """
    from virnucpro.runtime.cpu import onednn_linear_works

    kernels: dict[str, Callable[..., torch.Tensor]] = {"torch.mm": torch.mm}
    if device.type == "cpu" and onednn_linear_works():
        kernels["oneDNN"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(
            a, b, None, "none", [], "")  # a @ b.T: the same 2 n^3 FLOPs
    return kernels


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: Sequence[int],
                repeats: int = 6, max_seconds: float = 10.0) -> dict[str, Any]:
    """Best achieved FLOP/s of a square matmul (2 n^3 FLOPs) over kernels x `sizes` x `repeats`.

    This is the denominator of MFU: the best this machine reaches on an ideal shape with any
    kernel available to the models (see `matmul_kernels`), not the datasheet figure (which we
    also cannot know for a CPU slice of a VM). `kernels` has each kernel's own best.
    """
    best: dict[str, Any] = {"flops": 0.0}
    per_kernel: dict[str, float] = {}
    stop = time.perf_counter() + max_seconds
    for name, mm in matmul_kernels(device).items():
        for n in sizes:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            for _ in range(2):  # warm up the library, clocks and caches
                mm(a, b)
            sync(device)
            for _ in range(repeats):
                t0 = time.perf_counter()
                mm(a, b)
                sync(device)
                rate = 2 * n**3 / (time.perf_counter() - t0)
                per_kernel[name] = max(per_kernel.get(name, 0.0), rate)
                if rate > best["flops"]:
                    best = {"flops": rate, "size": n, "kernel": name}
                if time.perf_counter() > stop:
                    break
            del a, b
    return best | {"dtype": str(dtype).removeprefix("torch."), "kernels": per_kernel}


def sustained_matmul(device: torch.device, dtype: torch.dtype, n: int, seconds: float,
                     kernel: str = "torch.mm") -> float:
    """Median FLOP/s of back-to-back square matmuls over `seconds`: what a long run gets
    (clocks settle lower than in a burst; on a shared machine, neighbours take their share)."""
    mm = matmul_kernels(device)[kernel]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    rates = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(rates) < 3:
        t0 = time.perf_counter()
        mm(a, b)
        sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return float(np.median(rates))


class OtherLoad:
    """How much CPU other processes used while a phase ran (a shared machine's noise).

    From /proc/stat: all CPUs' busy time minus the CPU time of this process (all threads)
    and of the child processes it waited for (a command run as a subprocess, its workers),
    per second of wall time, in cores; `steal` is time the hypervisor gave to other VMs.
    Both should be ~0 for the figures of a phase to mean anything. Zero where /proc/stat
    does not exist.
    """

    def __enter__(self) -> OtherLoad:
        self._start = (_proc_stat(), _own_cpu(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        (busy0, steal0), own0, t0 = self._start
        busy1, steal1 = _proc_stat()
        wall = max(time.perf_counter() - t0, 1e-9)
        self.cores = max(0.0, (busy1 - busy0) - (_own_cpu() - own0)) / wall
        self.steal = (steal1 - steal0) / wall

    def as_dict(self) -> dict[str, float]:
        return {"other_cores": round(self.cores, 3), "steal_cores": round(self.steal, 3)}


def _own_cpu() -> float:
    """CPU seconds of this process and of its finished (waited-for) children."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all CPUs since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(x) for x in fields] + [0] * 10
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


# ------------------------------------------------------------------ FLOP count
def encoder_linear_weights(model: nn.Module) -> int:
    """Weights of the `nn.Linear` layers of `model.encoder` (biases, norms and the unused
    pooler / contact head are left out)."""
    return sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, nn.Linear))


def forward_flops(lengths: Sequence[int], linear_weights: int, layers: int, hidden: int) -> float:
    """Useful forward FLOPs of an encoder over sequences of these token lengths.

    Per sequence of T tokens: 2 * W * T for the linear layers (W = encoder linear weights,
    one multiply-add per weight per token) plus 4 * L * T^2 * d for attention (q k^T and
    attn @ v: 2 T^2 d each per layer, summed over heads). Embedding lookups, norms,
    activations and softmax are left out (< 1%). Padding is not counted: MFU here means
    useful work, so padding waste shows up as a lower MFU.
    """
    t = np.asarray(lengths, dtype=np.float64)
    return float(2.0 * linear_weights * t.sum() + 4.0 * layers * hidden * (t**2).sum())


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


# ------------------------------------------------------------------ timing
def embed_throughput(embed: Callable[[list[list[int]]], torch.Tensor],
                     token_ids: Sequence[Sequence[int]], budget: int, device: torch.device,
                     min_seconds: float = 0.0, max_seconds: float = float("inf"),
                     deadline: float | None = None, keep: bool = False) -> dict[str, Any]:
    """Time `embed` over token-budget batches (the worker's batching), after one warm-up batch.

    Goes through every batch once, and round again while under `min_seconds` (so a fast
    device is timed long enough); stops after the batch that crosses `max_seconds` or
    `deadline` even mid-pass. The device is synchronised only at the end, so host work
    overlaps device work as it does in a run. With `keep`, the first pass's embeddings come
    back in input order under "embeddings". On a CPU (where nothing is asynchronous) each
    batch's time is also kept, under "pieces", for a median rate robust to other load.
    """
    batches = token_batches([len(t) for t in token_ids], budget)
    embed([list(token_ids[i]) for i in batches[0]])  # warm-up: kernels, allocator, threads
    sync(device)
    lengths: list[int] = []
    kept: list[tuple[list[int], torch.Tensor]] = []
    pieces: list[tuple[float, list[int]]] = []
    padded, done = 0, 0
    t0 = last = time.perf_counter()
    while True:
        batch = batches[done % len(batches)]
        rows = [list(token_ids[i]) for i in batch]
        out = embed(rows)
        if device.type == "cpu":
            now = time.perf_counter()
            pieces.append((now - last, [len(r) for r in rows]))
            last = now
        if keep and done < len(batches):
            kept.append((batch, out))
        lengths.extend(map(len, rows))
        padded += len(rows) * max(map(len, rows))
        done += 1
        now = time.perf_counter()
        elapsed = now - t0
        if elapsed >= max_seconds or (deadline is not None and now > deadline):
            break
        if done % len(batches) == 0 and elapsed >= min_seconds:
            break
    sync(device)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "sequences": len(lengths), "tokens": sum(lengths),
              "padded_tokens": padded, "batches_per_pass": len(batches), "batches": done,
              "lengths": lengths, "pieces": pieces}
    if keep:
        result["embeddings"] = _in_order(kept, len(token_ids))
    return result


def _in_order(pieces: list[tuple[list[int], torch.Tensor]], n: int) -> torch.Tensor:
    out = torch.zeros(n, pieces[0][1].shape[1], device=pieces[0][1].device)
    for idx, emb in pieces:
        out[torch.tensor(idx, device=emb.device)] = emb.float()
    return out


def throughput_row(timing: dict[str, Any], linear_weights: int, shape: Shape,
                   peak: float) -> dict[str, Any]:
    """tokens/s, FLOP/s and MFU from an `embed_throughput` result.

    With per-batch times ("pieces"), also the median batch's FLOP/s and MFU, and
    `robust_seconds` = all FLOPs at that median rate: on a shared machine, a burst of
    someone else's work slows a few batches, which moves the total but not the median.
    """
    flops = forward_flops(timing["lengths"], linear_weights, shape.layers, shape.hidden)
    secs = timing["seconds"]
    robust: dict[str, Any] = {}
    if timing.get("pieces"):
        rates = [forward_flops(lens, linear_weights, shape.layers, shape.hidden) / t
                 for t, lens in timing["pieces"]]
        median = float(np.median(rates))
        robust = {"flops_per_s_median": median, "mfu_median": median / peak if peak else None,
                  "robust_seconds": round(flops / median, 3), "n_pieces": len(rates)}
    return {"seconds": round(secs, 3), "sequences": timing["sequences"],
            "tokens": timing["tokens"], "tokens_per_s": round(timing["tokens"] / secs, 1),
            "sequences_per_s": round(timing["sequences"] / secs, 2),
            "flops_per_s": flops / secs, "mfu": flops / secs / peak if peak else None,
            "padding_efficiency": round(timing["tokens"] / max(timing["padded_tokens"], 1), 3),
            "mean_tokens": round(timing["tokens"] / max(timing["sequences"], 1), 1), **robust}


def fmt_flops(x: float | None) -> str:
    if x is None:
        return "n/a"
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x / 1e6:.1f} MFLOP/s"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def to_json(obj: Any) -> Any:
    """JSON-safe copy: drops per-sequence lists and tensors, turns paths into strings."""
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()
                if k not in ("lengths", "embeddings", "pieces")
                and not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj


def agreement(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How close two [n, d] embedding sets are, row by row.

    `centered_min_cosine` subtracts the reference's mean row from both first: random-weight
    models give embeddings with a large common component, which alone makes plain cosines
    look good; the centred cosine measures agreement on what differs between sequences.
    """
    ref, other = ref.double().cpu(), other.double().cpu()
    cos = torch.nn.functional.cosine_similarity(ref, other, dim=1)
    mean = ref.mean(dim=0, keepdim=True)
    centred = torch.nn.functional.cosine_similarity(ref - mean, other - mean, dim=1)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "centered_min_cosine": float(centred.min()),
            "max_abs_diff": float((ref - other).abs().max()),
            "ref_abs_max": float(ref.abs().max())}
