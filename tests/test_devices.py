"""Device choice, precision rules and batch budgets (GPU rules via plain-value functions)."""

from __future__ import annotations

import pytest
import torch

from virnucpro.errors import VirnucproError
from virnucpro.runtime import devices
from virnucpro.runtime.devices import DeviceError, dtype_for, parse_devices

GIB = 1 << 30


# ------------------------------------------------------------------ devices
@pytest.mark.parametrize(("device", "gpus", "n_cuda", "expected"), [
    ("cpu", None, 0, ["cpu"]),
    ("cpu", None, 4, ["cpu"]),
    ("auto", None, 0, ["cpu"]),
    ("auto", None, 1, ["cuda:0"]),
    ("auto", None, 3, ["cuda:0", "cuda:1", "cuda:2"]),
    ("auto", "2,0", 3, ["cuda:2", "cuda:0"]),
    ("AUTO", " 1 ", 2, ["cuda:1"]),
    ("cuda", None, 2, ["cuda:0", "cuda:1"]),
    ("cuda", "1", 2, ["cuda:1"]),
    ("cuda:1", None, 2, ["cuda:1"]),
    ("cuda:0", "", 1, ["cuda:0"]),
])
def test_parse_devices(device: str, gpus: str | None, n_cuda: int, expected: list[str]) -> None:
    assert parse_devices(device, gpus, n_cuda) == expected


@pytest.mark.parametrize(("device", "gpus", "n_cuda", "message"), [
    ("gpu", None, 1, "--device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
    ("cuda:", None, 1, "--device cuda:: '' is not a GPU index"),
    ("cuda:x", None, 1, "--device cuda:x: 'x' is not a GPU index"),
    ("cuda:2", None, 2, "--device cuda:2: GPU 2 does not exist (2 CUDA devices visible)"),
    ("cuda:0", None, 0, "--device cuda:0: GPU 0 does not exist (0 CUDA devices visible)"),
    ("cuda", None, 0, "--device cuda asks for a GPU but no CUDA device is visible"),
    ("auto", "0", 0, "--gpus 0 asks for a GPU but no CUDA device is visible"),
    ("auto", "0,a", 2, "--gpus 0,a: 'a' is not a GPU index"),
    ("auto", "0,-1", 2, "--gpus 0,-1: '-1' is not a GPU index"),
    ("auto", "0,3", 2, "--gpus 0,3: GPU 3 does not exist (2 CUDA devices visible)"),
    ("auto", "1,1", 2, "--gpus 1,1 lists a GPU twice"),
    ("auto", "0,", 2, "--gpus 0,: '' is not a GPU index"),
    ("cpu", "0", 2, "--gpus 0 cannot be combined with --device cpu"),
    ("cuda:1", "0", 2, "--gpus 0 cannot be combined with --device cuda:1"),
])
def test_parse_devices_errors_name_the_value(device: str, gpus: str | None, n_cuda: int,
                                             message: str) -> None:
    with pytest.raises(DeviceError) as info:
        parse_devices(device, gpus, n_cuda)
    assert str(info.value) == message
    assert isinstance(info.value, VirnucproError)  # the CLI turns it into one line


def test_visible_gpus_creates_no_cuda_context() -> None:
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert devices.visible_gpus() == expected
    assert not torch.cuda.is_initialized()


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize(("capability", "precision", "expected"), [
    (None, "auto", "fp32"),
    ((9, 0), "auto", "bf16"),  # H100/H200
    ((8, 0), "auto", "bf16"),  # A100
    ((8, 6), "auto", "bf16"),
    ((7, 5), "auto", "fp16"),  # T4
    ((7, 0), "auto", "fp16"),  # V100
    ((6, 1), "auto", "fp16"),
    (None, "bf16", "bf16"),  # explicit choices are honoured, on a CPU too
    (None, "fp16", "fp16"),
    ((9, 0), "fp32", "fp32"),
    ((7, 0), "bf16", "bf16"),
    ((8, 0), " FP16 ", "fp16"),
])
def test_dtype_for(capability: tuple[int, int] | None, precision: str, expected: str) -> None:
    assert dtype_for(capability, precision) == expected


def test_dtype_for_rejects_unknown_precision() -> None:
    with pytest.raises(DeviceError) as info:
        dtype_for(None, "int8")
    assert str(info.value) == "--precision 'int8' is not one of auto, fp32, bf16, fp16"


@pytest.mark.parametrize(("capabilities", "precision", "expected"), [
    ([None], "auto", "fp32"),
    ([(9, 0), (9, 0)], "auto", "bf16"),
    ([(9, 0), (7, 5)], "auto", "fp16"),  # an H200 beside a T4: the T4 has no bf16
    ([(8, 6), (8, 0)], "auto", "bf16"),
    ([(9, 0), (7, 0)], "fp32", "fp32"),  # an explicit choice is the choice everywhere
    ([(9, 0), (7, 0)], "bf16", "bf16"),
    ([], "auto", "fp32"),
])
def test_one_precision_for_every_device(capabilities, precision, expected) -> None:
    assert devices.common_precision(capabilities, precision) == expected
    assert devices.torch_dtype(expected) == {"fp32": torch.float32, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}[expected]


def test_describe_cpu() -> None:
    info = devices.describe_device(torch.device("cpu"))
    assert set(info) == {"device", "name", "compute_capability", "total_memory", "free_memory",
                         "torch", "cuda", "cudnn", "attention", "compile_missing"}
    assert (info["device"], info["compute_capability"], info["cuda"]) == ("cpu", None, None)
    assert info["torch"] == torch.__version__ and info["cudnn"] is None
    # SDPA's kernels are pinned, cuDNN attention left out; recorded with the plan.
    assert info["attention"] == ["flash_attention", "efficient_attention", "math"]
    if info["total_memory"] is not None:
        assert 0 < info["free_memory"] <= info["total_memory"]


# ------------------------------------------------------------------ budgets
def reference_budget(free: int, itemsize: int, n_params: int, hidden: int = 2560) -> int:
    """The documented rule, spelled out step by step."""
    weights = n_params * itemsize
    usable = (free - weights - GIB) * 8 // 10  # 80 % of what is left after 1 GiB overhead
    per_token = 32 * hidden * itemsize
    tokens = max(usable, 0) // per_token
    tokens -= tokens % 256
    return min(max(tokens, 2048), 65536)


@pytest.mark.parametrize(("free", "itemsize", "n_params", "expected"), [
    (23 * GIB, 2, 2_838_000_000, 65536),  # a 24 GB card in bf16: 87628 -> the ceiling
    (15 * GIB, 4, 2_838_000_000, 8960),  # a 16 GB card in fp32: 8985 -> 8960
    (22 * GIB, 4, 2_838_000_000, 27136),  # a 24 GB card in fp32: 27335 -> 27136
    (12 * GIB, 4, 2_838_000_000, 2048),  # 1121 tokens -> the floor
    (139 * GIB, 2, 2_838_000_000, 65536),  # an H200: the ceiling
    (4 * GIB, 2, 2_838_000_000, 2048),  # does not even hold the weights: the floor
])
def test_esm_token_budget(free: int, itemsize: int, n_params: int, expected: int) -> None:
    assert reference_budget(free, itemsize, n_params) == expected
    assert devices.esm_token_budget_for(free, itemsize, n_params) == expected


def test_esm_token_budget_scales_with_hidden_size() -> None:
    free, n = 10 * GIB, 8_000_000
    assert devices.esm_token_budget_for(free, 4, n, hidden_size=320) == \
        reference_budget(free, 4, n, hidden=320) == 65536
    assert devices.esm_token_budget_for(free, 4, n, hidden_size=5120) == \
        reference_budget(free, 4, n, hidden=5120) == 11520


def test_default_budgets_on_cpu() -> None:
    assert devices.free_memory(torch.device("cpu")) is None  # so a CPU worker proposes:
    assert devices.ESM_BUDGET_CPU == 4096
    assert (devices.DNABERT_BUDGET_DEFAULT, devices.DNABERT_BUDGET_BF16) == (2048, 3072)


def reference_dnabert_budget(free: int, itemsize: int, floor: int, row_tokens: int = 512) -> int:
    """The documented DNABERT-S rule, spelled out: per token, the GeGLU moment of a layer
    (768 + 2 x 3072 + 3072 + 3072 values) and 3 x 12 x T values of attention bias, scores
    and softmax in the compute dtype, plus the bias's float32 copy while it is built."""
    usable = (free - GIB) * 8 // 10
    per_token = itemsize * (768 + 2 * 3072 + 3072 + 3072 + 3 * 12 * row_tokens) \
        + 4 * 12 * row_tokens
    tokens = max(usable, 0) // per_token
    tokens -= tokens % 256
    return min(max(tokens, floor), 65536)


@pytest.mark.parametrize(("free", "itemsize", "floor", "expected"), [
    (133 * GIB, 2, 3072, 65536),  # an H200 in bf16 with both models loaded: the ceiling
    (133 * GIB, 4, 2048, 65536),  # the same in fp32
    (9 * GIB, 2, 3072, 65536),  # a 16 GB card in bf16 (ESM-2 3B 5.7 GB): 78,489 -> ceiling
    (3 * GIB, 4, 2048, 11264),  # a 16 GB card in fp32 (ESM-2 3B 11.4 GB): 11,413 -> 11,264
    (3 * GIB, 2, 3072, 19456),  # 19,622 -> 19,456
    (GIB + (200 << 20), 2, 3072, 3072),  # nearly full: 1,916 tokens -> the bf16 floor
    (GIB + (200 << 20), 4, 2048, 2048),  # the fp32 floor
    (GIB // 2, 4, 2048, 2048),  # less than the overhead: the floor, never negative
])
def test_dnabert_token_budget(free: int, itemsize: int, floor: int, expected: int) -> None:
    assert reference_dnabert_budget(free, itemsize, floor) == expected
    assert devices.dnabert_token_budget_for(free, itemsize, floor) == expected


def test_dnabert_token_budget_scales_with_row_length_and_shape() -> None:
    free = 3 * GIB
    short = devices.dnabert_token_budget_for(free, 4, 2048, row_tokens=128)
    assert short == reference_dnabert_budget(free, 4, 2048, row_tokens=128) == 22272
    assert short > devices.dnabert_token_budget_for(free, 4, 2048)  # T = 512
    # A model twice as wide with twice the heads needs about twice the memory per token.
    wide = devices.dnabert_token_budget_for(free, 4, 2048, hidden_size=1536, heads=24,
                                            intermediate_size=6144)
    assert wide == 5632


def _fake_models(device: str, dtype: str, share: int = 1):
    """What `propose_budgets` reads of a worker's models: device, dtype, configs, share."""
    from types import SimpleNamespace

    from virnucpro.models.dnabert import DnaBertConfig
    from virnucpro.runtime.worker import Settings, WorkerSpec

    dna_cfg = DnaBertConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, type_vocab_size=2,
                            layer_norm_eps=1e-12, pad_token_id=0)
    spec = WorkerSpec("dna", "esm", None, device, 1, share=share)
    return SimpleNamespace(dnabert=SimpleNamespace(config=dna_cfg),
                           esm=SimpleNamespace(config=SimpleNamespace(hidden_size=2560)),
                           device=torch.device(device), spec=spec,
                           settings=Settings(dtype, 0, 0))


@pytest.mark.parametrize(("dtype", "free", "share", "expected"), [
    ("bf16", 133 * GIB, 1, {"dnabert_budget": 65536, "esm_budget": 65536}),
    ("fp32", 3 * GIB, 1, {"dnabert_budget": 11264, "esm_budget": 5120}),
    ("bf16", 6 * GIB, 2, {"dnabert_budget": 19456, "esm_budget": 10240}),  # 3 GiB each
    ("bf16", GIB, 1, {"dnabert_budget": 3072, "esm_budget": 2048}),
    ("fp16", GIB, 1, {"dnabert_budget": 2048, "esm_budget": 2048}),
])
def test_worker_proposes_dnabert_budget_from_free_memory_on_cuda(monkeypatch, dtype, free,
                                                                  share, expected) -> None:
    from virnucpro.runtime import worker

    monkeypatch.setattr(worker, "free_memory", lambda device: free)
    assert worker.propose_budgets(_fake_models("cuda:0", dtype, share)) == expected


@pytest.mark.parametrize(("dtype", "dnabert"), [("fp32", 2048), ("bf16", 3072)])
def test_worker_keeps_fixed_budgets_on_cpu(dtype: str, dnabert: int) -> None:
    from virnucpro.runtime import worker

    assert worker.propose_budgets(_fake_models("cpu", dtype)) == \
        {"dnabert_budget": dnabert, "esm_budget": 4096}
