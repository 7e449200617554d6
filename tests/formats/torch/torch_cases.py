"""Small models covering what the torch formats must round-trip exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn(self.conv(x))))))


class Block(nn.Module):
    """A transformer block with a tied embedding/head and non-persistent buffers."""

    def __init__(self, vocab: int = 32, dim: int = 16, ctx: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage
        self.register_buffer("pos", torch.randn(ctx, dim), persistent=False)
        self.register_buffer(
            "mask", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:n]
        a, _ = self.attn(h, h, h, attn_mask=self.mask[:n, :n], need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.ff(h) * self.scale)
        return self.head(h)


class WithConstants(nn.Module):
    """Plain tensor attributes become lifted tensor constants."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.offset = torch.linspace(-1, 1, 6)
        self.table = torch.arange(12, dtype=torch.int64).reshape(2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.offset + self.table[0].to(x.dtype)


class MixedDtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8).to(torch.bfloat16)
        self.b = nn.Linear(8, 8).to(torch.float16)
        self.c = nn.Linear(8, 8)
        self.register_buffer("q", torch.randint(-100, 100, (8,), dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x.to(torch.bfloat16)).float()
        g = self.b(x.to(torch.float16)).float()
        return self.c(h + g) + self.q.float(), (self.q.to(torch.int32) * 2)


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    example: Callable[[], tuple[Any, ...]]
    #: inputs other than the example, to run both programs on
    probe: Callable[[], tuple[Any, ...]]
    dynamic_shapes: Any = None


def _tokens(b: int, n: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 32, (b, n)),)


CASES = [
    Case("mlp", MLP, lambda: (torch.randn(4, 16),), lambda: (torch.randn(4, 16),)),
    Case(
        "conv_bn",
        lambda: ConvBN().eval(),
        lambda: (torch.randn(2, 3, 12, 12),),
        lambda: (torch.randn(2, 3, 12, 12),),
    ),
    Case("transformer", lambda: Block().eval(), lambda: _tokens(2, 8), lambda: _tokens(2, 8)),
    Case(
        "dynamic",
        MLP,
        lambda: (torch.randn(4, 16),),
        lambda: (torch.randn(9, 16),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=64)},),
    ),
    Case("constants", WithConstants, lambda: (torch.randn(3, 6),), lambda: (torch.randn(3, 6),)),
    Case("mixed_dtypes", MixedDtypes, lambda: (torch.randn(2, 8),), lambda: (torch.randn(2, 8),)),
]


def export(case: Case) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    model = case.build()
    for p in model.parameters():  # non-trivial BatchNorm statistics and the like
        p.data.uniform_(-0.5, 0.5) if p.is_floating_point() else None
    for name, b in model.named_buffers():
        if b.is_floating_point() and "running_var" in name:
            b.uniform_(0.5, 1.5)
        elif b.is_floating_point() and "running_mean" in name:
            b.uniform_(-0.2, 0.2)
    return torch.export.export(model, case.example(), dynamic_shapes=case.dynamic_shapes)


def outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(outputs_equal(x, y) for x, y in zip(a, b))
        )
    return bool(a == b)
