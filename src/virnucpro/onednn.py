"""fp32 linear layers through oneDNN on x86 CPUs: the same products, often twice as fast.

PyTorch sends an fp32 `nn.Linear` on the CPU to its BLAS, which is MKL in the official
wheels. On AMD CPUs MKL takes a generic path: on the Zen 5 machine of our benchmarks it
reaches ~205 GFLOP/s on two cores where oneDNN, the kernel library PyTorch also ships (and
that `torch.compile` uses for CPU linears), reaches ~430 GFLOP/s for the same fp32 product.
Both are IEEE fp32 with fp32 accumulation; results differ only by summation order (~1e-6).

Only the kernel changes: weights, names and state dicts stay those of `nn.Linear`. Models
here are for inference only (oneDNN's op has no gradient), so their weights are frozen.
"""

from __future__ import annotations

import platform

import torch
from torch import nn

_X86 = ("x86_64", "amd64", "i686", "x86")
_WORKS: list[bool] = []


class OneDnnLinear(nn.Linear):
    """`nn.Linear` computed by oneDNN's fp32 matmul (the op behind inductor's CPU linears)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def onednn_linear_works() -> bool:
    """Whether this machine should use oneDNN for fp32 linears: an x86 CPU, a PyTorch built
    with oneDNN, and its linear op present and agreeing with `F.linear` on a small product.

    Checked once per process. On other CPUs (ARM) PyTorch's oneDNN build differs, and the
    default path is kept.
    """
    if not _WORKS:
        _WORKS.append(_check())
    return _WORKS[0]


def _check() -> bool:
    if platform.machine().lower() not in _X86 or not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 5, 64), (48, 64), (48,)))
    try:
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except (AttributeError, RuntimeError):  # op missing or renamed in this PyTorch
        return False
    return got.shape == (3, 5, 48) and torch.allclose(got, nn.functional.linear(x, w, b),
                                                      rtol=1e-5, atol=1e-5)


def use_onednn_linears(model: nn.Module) -> int:
    """Run every fp32 CPU `nn.Linear` of `model` through oneDNN, in place; returns how many.

    Does nothing where `onednn_linear_works()` is false. The model's weights are frozen
    (`requires_grad=False`), as the new layers are inference-only.
    """
    if not onednn_linear_works():
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Linear and child.weight.dtype == torch.float32
                    and child.weight.device.type == "cpu"):
                setattr(parent, name, _as_onednn(child))
                swapped += 1
    model.requires_grad_(False)
    return swapped


def _as_onednn(linear: nn.Linear) -> OneDnnLinear:
    """A OneDnnLinear holding the very same parameter tensors as `linear`."""
    new = OneDnnLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       device="meta")
    new.weight = linear.weight
    new.bias = linear.bias
    return new.train(linear.training)
