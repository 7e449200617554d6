"""Real architectures from torchvision, timm and transformers, built from configs.

Random weights (seeded), small configurations, nothing downloaded. Each entry
says which formats the model goes through: ``exported_program`` (torch.export),
``torchscript`` (``"script"`` or ``"trace"``), ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    #: A tuple of positional arguments, or a dict of keyword arguments.
    inputs: Callable[[], Any]
    torchscript: str | None  # "script", "trace", or None where neither works
    dynamic_shapes: Callable[[], Any] | None = None
    #: Other inputs the exported program must also run (dynamic dimensions).
    other_inputs: Callable[[], tuple[Any, ...]] | None = None
    slow: bool = False
    marks: tuple[Any, ...] = field(default=())


def _image(n: int = 2, size: int = 32) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randn(n, 3, size, size),)


def _tokens(n: int, seq: int, vocab: int = 100) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq))


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def _resnet50_small() -> nn.Module:
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16)


def _mobilenet_v3_small() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v3_small(num_classes=10)


def _vit_small() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )


def _efficientnet_b0() -> nn.Module:
    import torchvision

    return torchvision.models.efficientnet_b0(num_classes=10)


def _swin() -> nn.Module:
    import timm

    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=56,
        window_size=7,
        embed_dim=24,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=10,
    )


def _convnext_small() -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        return_dict=False,
    )
    return BertModel(cfg)


def _bert_dims() -> Any:
    batch = torch.export.Dim("batch", min=1, max=16)
    seq = torch.export.Dim("seq", min=2, max=64)
    return ({0: batch, 1: seq},)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=100,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        use_cache=False,
    )
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    return model


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        use_cache=False,
    )
    return LlamaForCausalLM(cfg)


def _t5() -> nn.Module:
    from transformers import T5Config, T5Model

    cfg = T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        use_cache=False,
    )
    return T5Model(cfg)


def _whisper_encoder() -> nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=16,
        max_source_positions=32,
        return_dict=False,
    )
    return WhisperEncoder(cfg)


class MixedPrecision(nn.Module):
    """bf16, fp16 and fp32 layers, int8/bool/int64 buffers, a BatchNorm counter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8).to(torch.bfloat16)
        self.b = nn.Linear(8, 8).to(torch.float16)
        self.bn = nn.BatchNorm1d(8)
        self.register_buffer("scale_i8", torch.randint(-128, 127, (8,), dtype=torch.int8))
        self.register_buffer("mask", torch.rand(8) > 0.5)
        self.register_buffer("index", torch.randperm(8))
        self.register_buffer("step", torch.tensor(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x.to(torch.bfloat16)).float()
        y = self.b(y.half()).float()
        y = self.bn(y) * self.scale_i8.float()
        y = torch.where(self.mask, y, -y)
        return y[:, self.index] + self.step


CASES = [
    Case("resnet18", _resnet18, _image(), "script", slow=True),
    Case("resnet50_small", _resnet50_small, _image(), "script"),
    Case("mobilenet_v3_small", _mobilenet_v3_small, _image(), "script", slow=True),
    Case("vit_small", _vit_small, _image(), "script"),
    Case("efficientnet_b0", _efficientnet_b0, _image(), "script", slow=True),
    Case("swin_timm", _swin, _image(2, 56), "trace"),
    Case("convnext_timm", _convnext_small, _image(), "trace"),
    Case(
        "bert",
        _bert,
        lambda: (_tokens(2, 8),),
        "trace",
        dynamic_shapes=_bert_dims,
        other_inputs=lambda: (_tokens(3, 13),),
    ),
    Case("gpt2", _gpt2, lambda: (_tokens(2, 8),), "trace"),
    Case("llama_tiny", _llama, lambda: (_tokens(2, 8),), "trace"),
    Case(
        "t5_small",
        _t5,
        lambda: {
            "input_ids": _tokens(2, 8),
            "decoder_input_ids": torch.zeros(2, 4, dtype=torch.long),
        },
        "trace",
    ),
    Case("whisper_encoder", _whisper_encoder, lambda: (torch.randn(1, 16, 64),), "trace"),
    Case("mixed_precision", MixedPrecision, lambda: (torch.randn(4, 8),), "script"),
]
