"""int8 for the edge: every Linear, Conv1d and attention projection of a model gets int8
per-channel weights, with torch.ao's dynamic quantization (activations quantized on the fly).

Dynamic quantization covers `nn.Linear` only, so the model is first rewritten into an
equivalent form whose weights all live in plain Linears (the "edge form"):
- `nn.Conv1d` (stride 1, no dilation, one group) becomes `UnfoldConv1d`: pad, unfold the
  sequence into kernel-wide patches and apply a Linear to each patch (the same sums);
- `nn.TransformerEncoder` becomes `PlainEncoder`, whose layers compute attention with separate
  q/k/v/out Linears (nn.MultiheadAttention keeps its q/k/v weights in one `in_proj_weight`
  parameter and the encoder's fused fast path reads `linear.weight` as a tensor, so neither is
  quantizable in place).
The rewrite changes no number (a test checks fp32 outputs of both forms); the result traces to
TorchScript that `torch.jit.load` runs on CPU (server and edge agent).

torch.ao.quantization is deprecated in favour of torchao, but torchao's CPU int8 dynamic path
needs a newer toolchain than the edge images; torch.ao still runs in 2.x."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional


class UnfoldConv1d(nn.Module):
    """A Conv1d (stride 1, dilation 1, groups 1, zero padding) as a Linear over its patches."""

    def __init__(self, conv: nn.Conv1d, left: int, right: int):
        super().__init__()
        out_channels, in_channels, kernel = conv.weight.shape
        self.kernel = int(kernel)
        self.left, self.right = left, right
        self.linear = nn.Linear(in_channels * kernel, out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            # weight[o, c, j] multiplies input channel c at offset j: the patch layout below.
            self.linear.weight.copy_(conv.weight.reshape(out_channels, in_channels * kernel))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = functional.pad(x, (self.left, self.right))
        # [B, C, L'] -> [B, C, L', k] -> [B, L', C, k] -> [B, L', C*k]
        patches = padded.unfold(2, self.kernel, 1).permute(0, 2, 1, 3).flatten(2)
        out: torch.Tensor = self.linear(patches).transpose(1, 2)
        return out


class PlainSelfAttention(nn.Module):
    """nn.MultiheadAttention's self-attention (no mask, eval) with one Linear per projection."""

    def __init__(self, attention: nn.MultiheadAttention, batch_first: bool):
        super().__init__()
        dim = attention.embed_dim
        self.heads = attention.num_heads
        self.head_dim = dim // self.heads
        self.batch_first = batch_first
        bias = attention.in_proj_bias
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=bias is not None) for _ in range(3))
        with torch.no_grad():
            weights = attention.in_proj_weight.chunk(3)
            biases = bias.chunk(3) if bias is not None else (None, None, None)
            for linear, weight, b in zip((self.q, self.k, self.v), weights, biases, strict=True):
                linear.weight.copy_(weight)
                if b is not None:
                    linear.bias.copy_(b)
        self.out = nn.Linear(dim, dim, bias=attention.out_proj.bias is not None)
        self.out.load_state_dict(attention.out_proj.state_dict())

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # [B, L, E] -> [B, H, L, D]
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out: torch.Tensor = self.out((weights @ v).transpose(1, 2).flatten(2))
        return out if self.batch_first else out.transpose(0, 1)


class PlainEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer (eval, no mask) built from PlainSelfAttention and Linears."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.attention = PlainSelfAttention(layer.self_attn, layer.self_attn.batch_first)
        self.linear1, self.linear2 = copy.deepcopy(layer.linear1), copy.deepcopy(layer.linear2)
        self.norm1, self.norm2 = copy.deepcopy(layer.norm1), copy.deepcopy(layer.norm2)
        self.norm_first = bool(layer.norm_first)
        self.gelu = layer.activation_relu_or_gelu == 2

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear1(x)
        hidden = functional.gelu(hidden) if self.gelu else functional.relu(hidden)
        out: torch.Tensor = self.linear2(hidden)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attention(self.norm1(x))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self.attention(x))
        out: torch.Tensor = self.norm2(x + self._feed_forward(x))
        return out


class PlainEncoder(nn.Module):
    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        self.layers = nn.ModuleList(PlainEncoderLayer(layer) for layer in encoder.layers)
        self.norm = copy.deepcopy(encoder.norm) if encoder.norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.norm(x)
        return out


def _conv_padding(conv: nn.Conv1d) -> tuple[int, int] | None:
    """(left, right) zero padding of a Conv1d the unfold form reproduces, or None."""
    if conv.stride != (1,) or conv.dilation != (1,) or conv.groups != 1:
        return None
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = conv.kernel_size[0] - 1
        return total // 2, total - total // 2
    assert isinstance(conv.padding, tuple)
    return conv.padding[0], conv.padding[0]


def _plain_layer_supported(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.TransformerEncoderLayer):
        return False
    attention = layer.self_attn
    return (
        attention._qkv_same_embed_dim
        and attention.bias_k is None
        and not attention.add_zero_attn
        and layer.activation_relu_or_gelu in (1, 2)
    )


def _edge_replacement(child: nn.Module) -> nn.Module | None:
    if isinstance(child, nn.Conv1d):
        padding = _conv_padding(child)
        return UnfoldConv1d(child, *padding) if padding is not None else None
    if isinstance(child, nn.TransformerEncoder) and all(
        _plain_layer_supported(layer) for layer in child.layers
    ):
        return PlainEncoder(child)
    return None


def _replace_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        replacement = _edge_replacement(child)
        if replacement is not None:
            setattr(module, name, replacement)
        else:
            _replace_children(child)


def edge_form(module: nn.Module) -> nn.Module:
    """A CPU eval-mode copy of `module` computing the same function with its Conv1d and
    TransformerEncoder weights in plain Linears; what cannot be rewritten stays as it is."""
    model = copy.deepcopy(module).cpu().eval()
    _replace_children(model)
    return model


@dataclass(frozen=True)
class QuantizedModel:
    module: nn.Module
    int8_layers: list[str] = field(default_factory=list)
    # Weighted layers left fp32 (a custom model's layer kinds the edge form does not rewrite).
    fp32_layers: list[str] = field(default_factory=list)


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention, nn.LSTM, nn.GRU)


def quantize_int8(module: nn.Module) -> QuantizedModel:
    """int8 per-channel weights for every Linear of the edge form of `module` (input untouched)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = edge_form(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
    int8: list[str] = []
    fp32: list[str] = []
    for name, child in quantized.named_modules():
        if isinstance(child, DynamicLinear):
            int8.append(name)
        elif isinstance(child, _WEIGHTED) and not any(
            name.startswith(f"{inner}.") for inner in fp32
        ):
            fp32.append(name)
    return QuantizedModel(quantized, int8, fp32)
