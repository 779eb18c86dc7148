"""int8 dynamic quantization of a model's Linear layers (weights int8, activations quantized on
the fly), with torch.ao. torch.ao.quantization is deprecated in favour of torchao, but torchao's
CPU int8 dynamic path needs a newer toolchain than the edge images; torch.ao still runs in 2.x."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8(module: nn.Module) -> nn.Module:
    """A quantized copy of `module` (CPU, eval mode); the input is left untouched."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(module).cpu().eval()
    # Linear layers inside nn.TransformerEncoder stay fp32: the encoder's fused fast path reads
    # `linear.weight` as a tensor, which a dynamically quantized Linear does not have.
    targets = {
        name
        for name, child in model.named_modules()
        if isinstance(child, nn.Linear) and ".encoder." not in f".{name}."
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, targets, dtype=torch.qint8
        )
    return quantized
