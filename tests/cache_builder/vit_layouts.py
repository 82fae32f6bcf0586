"""Synthetic checkpoints in the public layouts of ViT teachers (exact key names, real widths,
reduced depth), in the style of tests/cache_builder/synthetic.py (docs/cache.md lists the layouts). Random weights only.

Key grammars (``D`` = width, ``p`` = patch, ``g`` = grid side of the release's pos_embed,
``H`` = MLP hidden = 4D, ``i`` = block index):

* DINO ``*_pretrain.pth`` (flat dict, timm's names): ``cls_token (1,1,D)``, ``pos_embed (1,1+g*g,D)``
  (g = 224/p), ``patch_embed.proj.{weight (D,3,p,p), bias (D)}``, ``blocks.i.norm1.{weight,bias}``,
  ``blocks.i.attn.qkv.{weight (3D,D), bias (3D)}``, ``blocks.i.attn.proj.{weight (D,D), bias}``,
  ``blocks.i.norm2.*``, ``blocks.i.mlp.fc1.{weight (H,D), bias (H)}``, ``blocks.i.mlp.fc2.{weight (D,H), bias}``,
  ``norm.{weight,bias}``.
* DINO full training checkpoint: ``{'student': {module.backbone.* , module.head.*}, 'teacher':
  {backbone.*, head.*}, 'optimizer', 'epoch', 'args': argparse.Namespace, 'dino_loss': {'center'}}``;
  head = ``head.mlp.{0,2,4}.{weight,bias}``, ``head.last_layer.{weight_g, weight_v}``.
* DINOv2 ``dinov2_vit*14_pretrain.pth``: the DINO keys with g = 37 (518 px) plus ``mask_token (1,D)``,
  ``blocks.i.ls1.gamma (D)``, ``blocks.i.ls2.gamma (D)``; ``*_reg4``: ``register_tokens (1,4,D)``;
  ViT-g (D = 1536): SwiGLU ``blocks.i.mlp.w12.{weight (8192,D), bias}``, ``blocks.i.mlp.w3.{weight (D,4096), bias}``.
* DINOv3 ``dinov3_vit*16_pretrain_lvd1689m-*.pth``: ``cls_token (1,1,D)``, ``storage_tokens (1,4,D)``,
  ``mask_token (1,D)``, ``rope_embed.periods (D/heads/4)``, ``patch_embed.proj.*``, ``blocks.i.norm1.*``,
  ``blocks.i.attn.qkv.{weight (3D,D), bias (3D), bias_mask (3D)}``, ``blocks.i.attn.proj.*``,
  ``blocks.i.ls1.gamma``, ``blocks.i.norm2.*``, ``blocks.i.mlp.fc1/fc2.*``, ``blocks.i.ls2.gamma``, ``norm.*``.
* OpenAI CLIP (state dict of ``ViT-B-16.pt`` / open_clip ``openai``): ``visual.conv1.weight (D,3,p,p)`` (no bias),
  ``visual.class_embedding (D)``, ``visual.positional_embedding (1+g*g, D)``, ``visual.ln_pre.*``,
  ``visual.transformer.resblocks.i.{ln_1, attn.in_proj_weight (3D,D), attn.in_proj_bias, attn.out_proj,
  ln_2, mlp.c_fc (H,D), mlp.c_proj (D,H)}``, ``visual.ln_post.*``, ``visual.proj (D,P)``; text tower
  ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.*``, ``ln_final.*``,
  ``text_projection``, ``logit_scale``. open_clip training checkpoints: ``{'epoch', 'name', 'state_dict': {module.*}}``.
* SigLIP: timm's names (``timm/vit_base_patch16_siglip_224.webli``: ``pos_embed (1,g*g,D)``, no cls token,
  ``attn_pool.{latent, q, kv, proj, norm, mlp}``) or open_clip ``visual.trunk.*`` beside ``text.*``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(g: torch.Generator, *shape: int, scale: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def _norm(g: torch.Generator, prefix: str, d: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + _rand(g, d, scale=0.1), f"{prefix}.bias": _rand(g, d, scale=0.1)}


def _linear(g: torch.Generator, prefix: str, out: int, inp: int, bias: bool = True) -> dict[str, torch.Tensor]:
    sd = {f"{prefix}.weight": _rand(g, out, inp, scale=inp ** -0.5)}
    if bias:
        sd[f"{prefix}.bias"] = _rand(g, out)
    return sd


def dino_released(width: int, patch: int, depth: int = 1, grid: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """DINO ``*_pretrain.pth`` (also DINOv2's core keys); ``grid`` defaults to 224 / patch."""
    g, d = _gen(seed), width
    grid = grid or 224 // patch
    sd = {"cls_token": _rand(g, 1, 1, d), "pos_embed": _rand(g, 1, 1 + grid * grid, d),
          "patch_embed.proj.weight": _rand(g, d, 3, patch, patch, scale=0.05), "patch_embed.proj.bias": _rand(g, d)}
    for i in range(depth):
        b = f"blocks.{i}"
        sd |= _norm(g, f"{b}.norm1", d) | _linear(g, f"{b}.attn.qkv", 3 * d, d) | _linear(g, f"{b}.attn.proj", d, d)
        sd |= _norm(g, f"{b}.norm2", d) | _linear(g, f"{b}.mlp.fc1", 4 * d, d) | _linear(g, f"{b}.mlp.fc2", d, 4 * d)
    return sd | _norm(g, "norm", d)


def dino_head(seed: int = 1, width: int = 384, hidden: int = 64, out: int = 256) -> dict[str, torch.Tensor]:
    """A (shrunken) DINOHead: ``head.mlp.{0,2,4}``, ``head.last_layer.{weight_g, weight_v}``."""
    g = _gen(seed)
    sd = _linear(g, "head.mlp.0", hidden, width) | _linear(g, "head.mlp.2", hidden, hidden) | _linear(g, "head.mlp.4", 32, hidden)
    return sd | {"head.last_layer.weight_g": torch.ones(out, 1), "head.last_layer.weight_v": _rand(g, out, 32)}


def dino_full(backbone: dict[str, torch.Tensor], student_backbone: dict[str, torch.Tensor] | None = None) -> dict:
    """DINO's ``checkpoint.pth``: teacher ``backbone.*``/``head.*``, student under ``module.``, args."""
    width = backbone["cls_token"].shape[-1]
    head = dino_head(width=width)
    student = student_backbone if student_backbone is not None else backbone
    return {
        "student": {f"module.backbone.{k}": v.clone() for k, v in student.items()} | {f"module.{k}": v for k, v in head.items()},
        "teacher": {f"backbone.{k}": v for k, v in backbone.items()} | dict(head),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 256)},
    }


def dinov2_meta(width: int, depth: int = 1, registers: int = 0, swiglu_hidden: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 release: pos_embed at 518 px (37 x 37 + 1), mask_token, LayerScale, registers, SwiGLU."""
    g, d = _gen(seed + 100), width
    sd = dino_released(width, 14, depth, grid=37, seed=seed)
    sd["mask_token"] = torch.zeros(1, d)
    if registers:
        sd["register_tokens"] = _rand(g, 1, registers, d)
    for i in range(depth):
        b = f"blocks.{i}"
        sd[f"{b}.ls1.gamma"] = 0.5 + _rand(g, d, scale=0.1)
        sd[f"{b}.ls2.gamma"] = 0.5 + _rand(g, d, scale=0.1)
        if swiglu_hidden:
            for k in [k for k in sd if k.startswith(f"{b}.mlp.")]:
                del sd[k]
            sd |= _linear(g, f"{b}.mlp.w12", 2 * swiglu_hidden, d) | _linear(g, f"{b}.mlp.w3", d, swiglu_hidden)
    return sd


def dinov3_meta(width: int, heads: int, depth: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 release (ViT-S/B/L 16): storage tokens, RoPE periods, masked k bias, LayerScale."""
    g, d = _gen(seed), width
    head_dim = d // heads
    sd = {"cls_token": _rand(g, 1, 1, d), "storage_tokens": _rand(g, 1, 4, d), "mask_token": torch.zeros(1, d),
          "rope_embed.periods": 100.0 ** (2 * torch.arange(head_dim // 4) / (head_dim // 2)),
          "patch_embed.proj.weight": _rand(g, d, 3, 16, 16, scale=0.05), "patch_embed.proj.bias": _rand(g, d)}
    for i in range(depth):
        b = f"blocks.{i}"
        sd |= _norm(g, f"{b}.norm1", d) | _linear(g, f"{b}.attn.qkv", 3 * d, d)
        sd[f"{b}.attn.qkv.bias_mask"] = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])
        sd |= _linear(g, f"{b}.attn.proj", d, d) | {f"{b}.ls1.gamma": 0.5 + _rand(g, d, scale=0.1)}
        sd |= _norm(g, f"{b}.norm2", d) | _linear(g, f"{b}.mlp.fc1", 4 * d, d) | _linear(g, f"{b}.mlp.fc2", d, 4 * d)
        sd[f"{b}.ls2.gamma"] = 0.5 + _rand(g, d, scale=0.1)
    return sd | _norm(g, "norm", d)


def openai_clip(width: int, patch: int, proj: int, grid: int, depth: int = 1, seed: int = 0, text: bool = True) -> dict[str, torch.Tensor]:
    """OpenAI CLIP state dict (image tower ``visual.*`` + a shrunken text tower)."""
    g, d = _gen(seed), width
    sd = {"visual.conv1.weight": _rand(g, d, 3, patch, patch, scale=0.05), "visual.class_embedding": _rand(g, d, scale=0.5),
          "visual.positional_embedding": _rand(g, 1 + grid * grid, d, scale=0.5)}
    sd |= _norm(g, "visual.ln_pre", d)
    for i in range(depth):
        b = f"visual.transformer.resblocks.{i}"
        sd |= _norm(g, f"{b}.ln_1", d)
        sd[f"{b}.attn.in_proj_weight"] = _rand(g, 3 * d, d, scale=d ** -0.5)
        sd[f"{b}.attn.in_proj_bias"] = _rand(g, 3 * d)
        sd |= _linear(g, f"{b}.attn.out_proj", d, d) | _norm(g, f"{b}.ln_2", d)
        sd |= _linear(g, f"{b}.mlp.c_fc", 4 * d, d) | _linear(g, f"{b}.mlp.c_proj", d, 4 * d)
    sd |= _norm(g, "visual.ln_post", d) | {"visual.proj": _rand(g, d, proj, scale=d ** -0.5)}
    if text:
        t = 64
        sd |= {"token_embedding.weight": _rand(g, 100, t), "positional_embedding": _rand(g, 77, t),
               "text_projection": _rand(g, t, proj), "logit_scale": torch.tensor(4.6052)}
        sd |= _norm(g, "transformer.resblocks.0.ln_1", t) | _linear(g, "transformer.resblocks.0.mlp.c_fc", 4 * t, t)
        sd |= _norm(g, "ln_final", t)
    return sd


def open_clip_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """An open_clip training checkpoint around a model state dict (DDP ``module.`` prefix)."""
    return {"epoch": 32, "name": "ViT-B-16", "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}


def open_clip_timm_trunk(trunk: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """open_clip ``CustomTextCLIP`` with a timm image trunk (SigLIP): ``visual.trunk.*`` + ``text.*``."""
    g = _gen(seed)
    return {f"visual.trunk.{k}": v for k, v in trunk.items()} | {
        "text.token_embedding.weight": _rand(g, 100, 64), "text.positional_embedding": _rand(g, 64, 64),
        "logit_scale": torch.tensor(2.3), "logit_bias": torch.tensor(-10.0)}


def randomized(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm model's state dict with every float tensor re-drawn (LayerNorm weights near 1)."""
    g = _gen(seed)
    out = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("weight") and v.dim() == 1:
            out[k] = 1 + _rand(g, *v.shape, scale=0.1)
        else:
            out[k] = _rand(g, *v.shape, scale=(v.shape[-1] ** -0.5 if v.dim() >= 2 else 0.05))
    return out


def save_hub_dir(directory: str, state_dict: dict[str, torch.Tensor], config: dict) -> str:
    """A timm / HF-hub style directory: ``config.json`` + ``model.safetensors``."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(directory, "model.safetensors"))
    return directory


def save(obj: object, path: str) -> str:
    torch.save(obj, path)
    return path
