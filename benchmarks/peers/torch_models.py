"""PyTorch peers: the same models as jaxmodels', written the way a PyTorch user would (fused
QKV projection, `F.scaled_dot_product_attention`, `nn.LSTM`), and one eager train step.

Images arrive NHWC like jaxmodels' and are transposed to NCHW once, before timing. Shapes: B
batch, T positions, D width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Flax's LayerNorm epsilon, so the functions match (PyTorch's default is 1e-5).
LN_EPS = 1e-6


class CNN(nn.Module):
    def __init__(self, filters: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(1, filters, 3, padding=1)
        self.head = nn.Linear(filters * 14 * 14, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ff: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=LN_EPS), nn.LayerNorm(width, eps=LN_EPS)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, ff, bias=False)
        self.down = nn.Linear(ff, width, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, layers: int, width: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, 4 * width, True) for _ in range(layers))
        self.ln = nn.LayerNorm(width, eps=LN_EPS)

    def forward(self, tokens_BxT):
        x = self.embed(tokens_BxT) + self.pos[: tokens_BxT.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.embed.weight.T  # tied output layer


class LSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        # nn.LSTM adds two bias vectors (input and hidden) where one suffices; jaxmodels and Flax
        # have one. The hidden one is frozen at zero: the same function and trainable count.
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens_BxT):
        return self.head(self.lstm(self.embed(tokens_BxT))[0])


class ViT(nn.Module):
    def __init__(self, classes: int, patch: int, layers: int, width: int, heads: int, ff: int):
        super().__init__()
        self.patch = patch
        n = (28 // patch) ** 2
        self.proj = nn.Linear(patch * patch, width)
        self.pos = nn.Parameter(torch.randn(n, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, ff, False) for _ in range(layers))
        self.ln = nn.LayerNorm(width, eps=LN_EPS)
        self.head = nn.Linear(width, classes)

    def forward(self, images_BxCxHxW):
        p = self.patch
        x = F.unfold(images_BxCxHxW, p, stride=p).transpose(1, 2)  # [B, patches, p*p*C]
        x = self.proj(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(dim=1))


def build(family: str, shape: dict, outputs: int) -> nn.Module:
    torch.manual_seed(0)
    if family == "cnn":
        return CNN(shape["filters"], outputs)
    if family == "gpt":
        return GPT(outputs, shape["seq_len"], shape["layers"], shape["width"], shape["heads"])
    if family == "lstm":
        return LSTM(outputs, shape["embed"], shape["hidden"])
    if family == "vit":
        return ViT(outputs, shape["patch"], shape["layers"], shape["width"], shape["heads"], shape["ff"])
    raise ValueError(f"unknown family {family!r}")


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_torch_inputs(family: str, inputs):
    """numpy batch -> tensor: images NHWC -> NCHW float32, tokens -> int64."""
    x = torch.from_numpy(inputs)
    if family in ("cnn", "vit"):
        return x.permute(0, 3, 1, 2).contiguous()
    return x.long()


def optimizer(model: nn.Module, spec: dict, steps: int):
    """The experiment file's optimizer and schedule (weight decay on matrices only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if spec["name"] == "adamw":
        groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": spec["weight_decay"]},
                  {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=spec["learning_rate"], betas=(spec["b1"], spec["b2"]),
                                eps=spec["eps"])
    elif spec["name"] == "adam":
        opt = torch.optim.Adam(params, lr=spec["learning_rate"], betas=(spec["b1"], spec["b2"]),
                               eps=spec["eps"])
    else:
        raise ValueError(f"the PyTorch peer has no optimizer {spec['name']!r}")
    warmup, final = spec["warmup_steps"], spec["final_lr_fraction"]

    def factor(step: int) -> float:
        if spec["schedule"] != "warmup_cosine":
            return 1.0
        if step < warmup:
            return step / max(warmup, 1)
        frac = min(1.0, (step - warmup) / max(steps - warmup, 1))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(model: nn.Module, opt, scheduler, clip: float | None, compiled: bool = False):
    """step(inputs, targets) -> loss tensor. `compiled` wraps the model's forward (and so its
    backward) in torch.compile; the optimizer step stays eager."""
    forward = torch.compile(model) if compiled else model

    def step(inputs, targets):
        logits = forward(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        scheduler.step()
        return loss.detach()

    return step
