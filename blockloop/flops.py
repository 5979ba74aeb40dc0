"""FLOP counting that sees every matmul, including attention on the CPU.

``torch.utils.flop_counter.FlopCounterMode`` counts linear layers, convolutions and the CUDA
attention kernels, but not the CPU kernel ``aten._scaled_dot_product_flash_attention_for_cpu``
(measured on torch 2.14: a U-ViT block's QK^T and AV matmuls went uncounted). :func:`flop_counter`
registers that op with torch's own SDPA formula. Conventions: FLOPs = 2 x multiply-adds of
matmuls and convolutions; element-wise ops, norms and softmax are not counted (as in
FlopCounterMode, fvcore and the U-ViT/DeeDiff papers' GFLOPs).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

__all__ = ["count_flops", "flop_counter"]

_aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    mapping = {}
    op = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flop
    return mapping


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` under :func:`flop_counter`; return (FLOPs, result)."""
    with flop_counter() as fc:
        out = fn(*args, **kwargs)
    return fc.get_total_flops(), out
