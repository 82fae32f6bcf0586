"""Synthetic teacher checkpoints in the layouts of the public releases (docs/cache.md, "Teachers"); images: ``tests.images``."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision

from cache_builder.checkpoints import tf_resnet50_name


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter and BN statistic seeded random values (running_var in U(0.5, 1.5))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


def resnet50_reference(seed: int = 0) -> torch.nn.Module:
    """A plain torchvision resnet50 with random weights (fc intact)."""
    return randomize_(torchvision.models.resnet50(), seed)


def backbone(sd: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, v) for k, v in sd.items() if not k.startswith("fc."))


def stride0_resnet_state_dict(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Wide-ResNet weights that stay small: each tensor a seeded vector over dim 0 expanded to the full
    shape (stride 0), so a width-4 file is a few MB. Keys: torchvision names incl. fc."""
    from cache_builder.teachers import build_meta, get_teacher_spec

    meta = build_meta(get_teacher_spec(f"simclr_r50x{width}" if width in (1, 2, 4) else "swav_r50w5"))
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, v in meta.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        else:
            vec = torch.rand(v.shape[0], generator=g) + 0.5
            sd[k] = vec.view(-1, *([1] * (v.dim() - 1))).expand(v.shape)
    sd["fc.weight"] = torch.randn(1, 2048 * width, generator=g).expand(1000, 2048 * width)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


# ---- one builder per release layout (docs/cache.md, "Teachers") -----------------------------

def simclr_tonylins(sd):
    return {"state_dict": OrderedDict(sd)}


def simclr_tf(sd):
    return {"state_dict": OrderedDict((tf_resnet50_name(k), v) for k, v in sd.items())}


def moco_released(sd, v2=True):
    g = torch.Generator().manual_seed(7)
    state = OrderedDict(("module.encoder_q." + k, v) for k, v in backbone(sd).items())
    if v2:
        state["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048, generator=g)
        state["module.encoder_q.fc.0.bias"] = torch.randn(2048, generator=g)
        state["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048, generator=g)
        state["module.encoder_q.fc.2.bias"] = torch.randn(128, generator=g)
    else:
        state["module.encoder_q.fc.weight"] = torch.randn(128, 2048, generator=g)
        state["module.encoder_q.fc.bias"] = torch.randn(128, generator=g)
    return {"epoch": 200, "arch": "resnet50", "state_dict": state}


def moco_full(sd, other_sd):
    """Full training checkpoint: encoder_k with *different* values, queue, optimizer."""
    ckpt = moco_released(sd, v2=True)
    state = OrderedDict()
    q = torch.nn.functional.normalize(torch.randn(128, 4096), dim=0)
    state["module.queue"] = q
    state["module.queue_ptr"] = torch.tensor([0])
    state.update(ckpt["state_dict"])
    for k, v in backbone(other_sd).items():
        state["module.encoder_k." + k] = v
    for k in ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"):
        state["module.encoder_k." + k] = state["module.encoder_q." + k].clone()
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    opt = torch.optim.SGD(params, lr=0.03, momentum=0.9)
    params[0].grad = torch.ones(3)
    opt.step()
    return {"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": opt.state_dict()}


def swav(sd):
    g = torch.Generator().manual_seed(8)
    state = OrderedDict(("module." + k, v) for k, v in backbone(sd).items())
    head = {
        "projection_head.0.weight": torch.randn(2048, 2048, generator=g), "projection_head.0.bias": torch.randn(2048, generator=g),
        "projection_head.1.weight": torch.rand(2048, generator=g), "projection_head.1.bias": torch.randn(2048, generator=g),
        "projection_head.1.running_mean": torch.randn(2048, generator=g), "projection_head.1.running_var": torch.rand(2048, generator=g) + 0.5,
        "projection_head.1.num_batches_tracked": torch.tensor(0), "projection_head.3.weight": torch.randn(128, 2048, generator=g),
        "projection_head.3.bias": torch.randn(128, generator=g),
        "prototypes.weight": torch.nn.functional.normalize(torch.randn(3000, 128, generator=g), dim=1),
    }
    state.update(("module." + k, v) for k, v in head.items())
    return dict(state)


def flat_backbone(sd):
    """Barlow Twins / DINO / VICReg resnet50.pth."""
    return dict(backbone(sd))


def byol(sd):
    """Plain dict, 267 keys: with fc, without num_batches_tracked."""
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def dino_full(sd):
    teacher = {"backbone." + k: v for k, v in backbone(sd).items()}
    teacher["head.mlp.0.weight"] = torch.randn(16, 2048)
    return {"student": {"module." + k: v * 0 for k, v in teacher.items()}, "teacher": teacher, "epoch": 100}


def barlow_full(sd):
    model = {"module.backbone." + k: v for k, v in backbone(sd).items()}
    model["module.projector.0.weight"] = torch.randn(64, 2048)
    model["module.bn.running_mean"] = torch.zeros(64)
    return {"epoch": 1000, "model": model, "optimizer": {"state": {}, "param_groups": []}}


def save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path
