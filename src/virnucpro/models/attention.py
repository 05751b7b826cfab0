"""The attention kernels both encoders may use, pinned so that a run's numbers and its host
cost do not depend on what SDPA would pick on its own.

SDPA may pick cuDNN attention on sm90 with a recent cuDNN. cuDNN builds a graph per (batch,
length) on the host, caches them without bound, and has numerics of its own, so it is left
out. What remains: flash (no mask), memory-efficient (a padding mask or DNABERT-S's ALiBi
bias) and the math fallback; on a CPU, SDPA has flash and math, and picks as it always did.
The choice is recorded in each worker's probe (`virnucpro.runtime.devices.describe_device`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` restricted to `BACKENDS` (q, k, v [B, nh, T, dh])."""
    with sdpa_kernel(list(BACKENDS)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def backend_names() -> list[str]:
    """`BACKENDS` as run.json records them."""
    return [b.name.lower() for b in BACKENDS]
