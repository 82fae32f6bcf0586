"""Loading ViT / foundation-model teacher checkpoints into timm models, strictly.

Steps (docs/cache.md, "ViT and foundation-model teachers", lists the layouts):

1. ``read_weights(path)``: a ``.safetensors`` file (``safetensors.torch.load_file``), a torch file
   (``torch.load(weights_only=True)``; ``argparse.Namespace``, which DINO's full training
   checkpoints hold under ``'args'``, is the one allow-listed class), or a timm / HF-hub style
   directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` /
   ``open_clip_pytorch_model.bin``). Local files only: nothing here touches the network.
2. ``unwrap(obj)``: the state dict inside the file (top level, or ``'teacher'``, ``'state_dict'``,
   ``'model'``, ``'student'``, ``'module'``), a ``module.`` prefix stripped, and for training
   checkpoints (``backbone.*`` beside heads) the backbone kept and the heads (DINO ``head.*``,
   DINOv2 ``dino_head.*`` / ``ibot_head.*``) dropped and reported.
3. ``detect_layout(keys, accepted)``: which public key grammar the file uses (``LAYOUTS``).
4. ``load_vit_strict(model, ...)``: key conversion to timm's names and position-embedding
   resampling by timm's own ``checkpoint_filter_fn`` of the model's module (OpenAI CLIP,
   DINOv2 with registers and SwiGLU, DINOv3 storage tokens, open_clip ``visual.trunk``), then a
   strict comparison: every model tensor must come from the file with its exact shape, every
   file tensor must be loaded or be a reported head / non-teacher part. A patch-size mismatch is
   refused before timm could silently resample the patch kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cache_builder.checkpoints import CheckpointError, CheckpointKeyError, LoadReport, group_keys, is_state_dict, read_checkpoint


class ViTCheckpointError(CheckpointError):
    """A ViT teacher checkpoint that cannot be read or does not fit the teacher."""


class ViTKeyError(ViTCheckpointError, CheckpointKeyError):
    """Strict loading failed; the message names the first tensor at fault and lists the rest by prefix."""


# where the state dict may sit in a checkpoint's top-level dict, in order of preference
# (DINO / DINOv2 evaluate the 'teacher' of a full training checkpoint)
CONTAINER_KEYS = ("teacher", "state_dict", "model", "student", "module", "model_ema")
HUB_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ViTLayout:
    """A public checkpoint key grammar.

    Attributes:
        name: identifier used in specs and messages.
        description: the releases that use it and their identifying keys.
        markers: the layout matches when all these keys are present.
        patch_key: the file key of the patch-embedding kernel ``(D, 3, p, p)``.
        teacher_prefix: keys outside this prefix are not the image tower (text tower, logit scale):
            they are ignored and reported; ``""`` = every key belongs to the teacher.
    """

    name: str
    description: str
    markers: tuple[str, ...]
    patch_key: str
    teacher_prefix: str = ""

    def matches(self, keys: set[str]) -> bool:
        return all(m in keys for m in self.markers)


LAYOUTS: dict[str, ViTLayout] = {
    lay.name: lay
    for lay in (
        ViTLayout("dinov3", "Meta DINOv3 release (cls_token, storage_tokens, mask_token, rope_embed.periods, "
                  "blocks.N.attn.qkv.bias_mask, blocks.N.ls1.gamma)", ("storage_tokens", "cls_token"),
                  "patch_embed.proj.weight"),
        ViTLayout("dinov2", "Meta DINOv2 release (cls_token, pos_embed at 518 px, mask_token, blocks.N.ls1.gamma; "
                  "register_tokens for *_reg; blocks.N.mlp.w12/w3 SwiGLU for ViT-g)", ("mask_token", "cls_token"),
                  "patch_embed.proj.weight"),
        ViTLayout("openai_clip", "OpenAI CLIP / open_clip native ViT (visual.conv1.weight, visual.class_embedding, "
                  "visual.transformer.resblocks.N.attn.in_proj_weight, visual.proj; text tower ignored)",
                  ("visual.class_embedding", "visual.conv1.weight"), "visual.conv1.weight", "visual."),
        ViTLayout("open_clip_timm", "open_clip model with a timm image trunk (visual.trunk.*, e.g. SigLIP; "
                  "text tower ignored)", ("visual.trunk.patch_embed.proj.weight",),
                  "visual.trunk.patch_embed.proj.weight", "visual.trunk."),
        ViTLayout("dino", "DINO release *_pretrain.pth (cls_token, pos_embed, patch_embed.proj, blocks.N.attn.qkv, "
                  "norm; these are also timm's names)", ("cls_token", "pos_embed", "blocks.0.attn.qkv.weight"),
                  "patch_embed.proj.weight"),
        ViTLayout("timm", "timm's own names (timm / HF-hub model.safetensors, timm.create_model(...).state_dict())",
                  ("patch_embed.proj.weight",), "patch_embed.proj.weight"),
        ViTLayout("timm_any", "timm's own names for any timm model (CNNs included)", (), "patch_embed.proj.weight"),
    )
}


# ---------------------------------------------------------------------------------------------
# reading


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()[:200])


def hub_weights_file(directory: str) -> str:
    """The weights file of a timm / HF-hub style directory (``model.safetensors`` first)."""
    for name in HUB_WEIGHT_FILES:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise ViTCheckpointError(
        f"{directory}: a weights directory must hold one of {', '.join(HUB_WEIGHT_FILES)} (beside config.json); "
        f"it holds {', '.join(sorted(os.listdir(directory))[:12]) or 'nothing'}"
    )


def hub_config(directory: str) -> dict:
    """``config.json`` of a hub-style directory (``{}`` when absent); errors name the file."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ViTCheckpointError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(config, dict):
        raise ViTCheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def read_weights(path: str) -> tuple[object, str]:
    """``(loaded object, file actually read)`` for a file or hub-style directory; CPU tensors."""
    if os.path.isdir(path):
        path = hub_weights_file(path)
    if not os.path.isfile(path):
        raise ViTCheckpointError(f"{path}: no such weights file or directory")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu"), path
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ViTCheckpointError(f"{path}: not a readable safetensors file: {type(e).__name__}: {e}") from None
    if _is_torchscript(path):
        raise ViTCheckpointError(
            f"{path}: is a TorchScript archive (like OpenAI's ViT-B-16.pt), which is not loaded (it is code). "
            f"Save its state dict once: python -c \"import torch; torch.save(torch.jit.load('{path}', "
            "map_location='cpu').state_dict(), 'clip.pth')\" and pass clip.pth"
        )
    return read_checkpoint(path, safe_globals=(argparse.Namespace,)), path


@dataclass(frozen=True)
class Unwrapped:
    """The teacher's tensors found in a file: ``state_dict`` (prefixes stripped), where they were
    (``"top level"``, ``"['teacher'] backbone.*"``) and the head keys dropped on the way."""

    state_dict: dict[str, torch.Tensor]
    location: str
    dropped: tuple[str, ...]


def unwrap(obj: object, path: str) -> Unwrapped:
    """Find the state dict, strip ``module.``, keep ``backbone.*`` and drop the heads beside it."""
    if is_state_dict(obj):
        sd, location = dict(obj), "top level"  # type: ignore[call-overload]
    elif isinstance(obj, Mapping):
        key = next((k for k in CONTAINER_KEYS if is_state_dict(obj.get(k))), None)
        if key is None:
            summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12])
            raise ViTCheckpointError(
                f"{path}: no state dict found: expected a dict of tensors at the top level or under one of "
                f"{', '.join(repr(k) for k in CONTAINER_KEYS)}; the file holds {{{summary}}}"
            )
        sd, location = dict(obj[key]), f"[{key!r}]"
    else:
        raise ViTCheckpointError(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        location += " module.*"
    dropped: list[str] = []
    if any(k.startswith("backbone.") for k in sd):
        dropped = [k for k in sd if not k.startswith("backbone.")]
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        location += " backbone.*"
    return Unwrapped(sd, location, tuple(dropped))


def detect_layout(keys: set[str], accepted: tuple[str, ...], path: str) -> ViTLayout:
    """The first accepted layout whose marker keys are all present."""
    for name in accepted:
        if LAYOUTS[name].matches(keys):
            return LAYOUTS[name]
    lines = "\n".join(f"  {n}: {LAYOUTS[n].description}" for n in accepted)
    raise ViTKeyError(
        f"{path}: the state dict matches none of the accepted layouts:\n{lines}\n"
        f"its {len(keys)} keys are:\n{group_keys(sorted(keys))}"
    )


# ---------------------------------------------------------------------------------------------
# strict loading


def filter_fn_of(model: nn.Module) -> Callable[..., dict[str, torch.Tensor]] | None:
    """timm's ``checkpoint_filter_fn`` of the module defining ``type(model)`` (``None`` if it has none)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _check_patch_kernel(sd: Mapping[str, torch.Tensor], layout: ViTLayout, model: nn.Module, path: str) -> None:
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if layout.patch_key not in sd or not isinstance(getattr(proj, "weight", None), torch.Tensor):
        return
    got, want = tuple(sd[layout.patch_key].shape), tuple(proj.weight.shape)  # type: ignore[union-attr]
    if len(got) == 4 and got[-2:] != want[-2:]:  # timm would resample the kernel silently
        raise ViTKeyError(
            f"{path}: wrong architecture: tensor {layout.patch_key!r} has shape {got} in the file, "
            f"the teacher needs {want} (patch size {want[-1]}, width {want[0]})"
        )


def _first_mismatch_message(path: str, mismatched: list[tuple[str, tuple, tuple]]) -> str:
    key, got, want = mismatched[0]
    return f"{path}: wrong architecture: first mismatching tensor {key!r}: file {got}, model {want}"


def load_vit_strict(
    model: nn.Module,
    unwrapped: Unwrapped,
    layout: ViTLayout,
    path: str,
    drop: tuple[str, ...] = (),
) -> LoadReport:
    """Convert ``unwrapped.state_dict`` to ``model``'s names and load it strictly (``assign=True``).

    ``drop`` are prefixes of converted keys the teacher does not use (a classifier of a headless
    ``timm:`` model); they are reported, not loaded. Floating tensors are cast to float32.

    Raises:
        ViTKeyError: naming the first mismatching tensor (file and model shapes), then every
            missing / unexpected / mis-shaped key grouped by prefix.
    """
    sd = unwrapped.state_dict
    ignored = [k for k in sd if layout.teacher_prefix and not k.startswith(layout.teacher_prefix)]
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}
    _check_patch_kernel(sd, layout, model, path)
    expected = model.state_dict()
    file_pos = sd.get("pos_embed", sd.get(layout.teacher_prefix + "pos_embed"))
    if layout.name == "openai_clip" and "visual.positional_embedding" in sd:
        file_pos = sd["visual.positional_embedding"].unsqueeze(0)
    filter_fn = filter_fn_of(model)
    converted = dict(sd)
    if filter_fn is not None:
        try:
            converted = filter_fn(dict(sd), model)
        except Exception as e:  # noqa: BLE001 - timm raises RuntimeError / KeyError / IndexError on odd files
            raise ViTKeyError(
                f"{path} (layout {layout.name}): timm's {type(model).__module__}.checkpoint_filter_fn cannot convert "
                f"it for {type(model).__name__} (wrong architecture?): {type(e).__name__}: {e}"
            ) from None
    if layout.name in ("dinov2", "dinov3"):  # pretraining-only tokens the timm filters drop
        ignored += [k for k in sd if k == "mask_token" or k.endswith((".bias_mask", ".periods"))]
    dropped = list(unwrapped.dropped) + [k for k in converted if drop and k.startswith(drop) and k not in expected]
    converted = {k: v for k, v in converted.items() if k not in set(dropped)}
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    mismatched = [(k, tuple(converted[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in converted and tuple(converted[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = [_first_mismatch_message(path, mismatched)] if mismatched else []
        parts.append(f"{path} {unwrapped.location} (layout {layout.name}) does not fit {type(model).__name__}:")
        if missing:
            parts.append(f"missing {len(missing)} tensors the teacher needs:\n{group_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors:\n{group_keys(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} tensors with the wrong shape:\n  "
                         + "\n  ".join(f"{k}: file {g}, model {w}" for k, g, w in mismatched[:10]))
        raise ViTKeyError("\n".join(parts))
    resampled = []
    if file_pos is not None and "pos_embed" in expected and tuple(file_pos.shape) != tuple(expected["pos_embed"].shape):
        resampled.append(f"pos_embed {tuple(file_pos.shape)} -> {tuple(expected['pos_embed'].shape)}")
    cast = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in converted.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    return LoadReport(path, unwrapped.location, layout.name, len(cast), tuple(dropped), tuple(ignored), resampled=tuple(resampled))
