"""Loading teacher checkpoints: read (``weights_only=True``), find the state dict, detect its
layout, remap keys, drop heads, and load **strictly** with a report of every missing,
unexpected or mis-shaped key grouped by prefix.

Layouts are named key grammars of public releases (docs/cache.md, "Teachers", lists them):
each says which key identifies it (``marker``), which prefix to strip, which parts of the file
belong to something other than the teacher (``ignore``: momentum encoder, queue, projector),
and an optional rename (TF-style SimCLR names). Heads are dropped by the teacher spec.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from storage.errors import CompressError

log = logging.getLogger(__name__)

# where a state dict may sit inside a checkpoint's top-level dict, in order of preference
STATE_DICT_KEYS = ("state_dict", "model", "teacher", "student", "module", "net")


class CheckpointError(CompressError, ValueError):
    """A checkpoint file that cannot be read or does not match the teacher."""


class MissingWeightsError(CompressError, FileNotFoundError):
    """The weights file of a teacher is not where it was looked for."""


class CheckpointKeyError(CheckpointError):
    """Strict loading failed; the message lists the keys at fault grouped by prefix."""


# ---------------------------------------------------------------------------------------------
# layouts


def _resnet50_tf_names() -> dict[str, str]:
    """TF-style SimCLR (CompRess release) module names -> torchvision ResNet-50 module names.

    Conv/BN index ``i`` counts modules in forward order; in the first block of each stage the
    shortcut comes first. ``i = 0`` has no suffix (``conv2d``, ``batch_normalization``).
    """
    order = [("conv1", "bn1")]
    for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        for b in range(blocks):
            if b == 0:
                order.append((f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1"))
            order += [(f"layer{stage}.{b}.conv{j}", f"layer{stage}.{b}.bn{j}") for j in (1, 2, 3)]
    names: dict[str, str] = {}
    for i, (conv, bn) in enumerate(order):
        suffix = "" if i == 0 else f"_{i}"
        names[f"conv2d{suffix}"] = conv
        names[f"batch_normalization{suffix}"] = bn
    return names


_TF_NAMES = _resnet50_tf_names()


def rename_tf_resnet50(key: str) -> str:
    """``conv2d_11.weight`` -> ``layer2.0.downsample.0.weight``; other keys (``fc.*``) unchanged."""
    module, _, param = key.rpartition(".")
    return f"{_TF_NAMES[module]}.{param}" if module in _TF_NAMES else key


def tf_resnet50_name(torchvision_key: str) -> str:
    """Inverse of ``rename_tf_resnet50`` (used to build synthetic TF-style checkpoints)."""
    inverse = {v: k for k, v in _TF_NAMES.items()}
    module, _, param = torchvision_key.rpartition(".")
    return f"{inverse[module]}.{param}" if module in inverse else torchvision_key


@dataclass(frozen=True)
class Layout:
    """A checkpoint key grammar.

    Attributes:
        name: short identifier used in specs and messages.
        description: the public release(s) that use it.
        marker: a key whose presence identifies the layout; ``None`` = any key under ``prefix``.
        prefix: stripped from every teacher key.
        ignore: key prefixes (file names) of parts that are not the teacher; dropped and reported.
        rename: applied to each key after stripping ``prefix``.
    """

    name: str
    description: str
    marker: str | None
    prefix: str = ""
    ignore: tuple[str, ...] = ()
    rename: Callable[[str], str] | None = field(default=None, compare=False)

    def matches(self, keys: list[str]) -> bool:
        if self.marker is not None:
            return self.marker in keys
        return any(k.startswith(self.prefix) and not k.startswith(self.ignore) for k in keys)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("torchvision", "torchvision names, no prefix (torchvision, SimCLR via tonylins/simclr-converter, "
               "Barlow Twins/DINO/VICReg resnet50.pth, converted BYOL)", "conv1.weight"),
        Layout("simclr_tf", "TF-style names conv2d_N / batch_normalization_N (CompRess SimCLR release)",
               "conv2d.weight", rename=rename_tf_resnet50),
        Layout("moco", "module.encoder_q.* (MoCo v1/v2 release or full training checkpoint)",
               "module.encoder_q.conv1.weight", "module.encoder_q.",
               ignore=("module.encoder_k.", "module.queue", "module.queue_ptr")),
        Layout("module", "module.* flat (SwAV release, DataParallel re-saves)", "module.conv1.weight", "module."),
        Layout("module_backbone", "module.backbone.* (Barlow Twins / VICReg full checkpoints)",
               "module.backbone.conv1.weight", "module.backbone.",
               ignore=("module.projector.", "module.bn.", "module.head.")),
        Layout("backbone", "backbone.* (DINO full checkpoint, 'teacher' entry)", "backbone.conv1.weight",
               "backbone.", ignore=("head.",)),
        Layout("mobilenet_v2", "torchvision MobileNetV2 names (features.*, classifier.*)", "features.0.0.weight"),
    )
}


def custom_layout(prefix: str = "") -> Layout:
    """Layout of a ``custom`` teacher: every key under ``prefix`` belongs to the model."""
    return Layout(f"custom(prefix={prefix!r})", "user-declared prefix", None, prefix)


# ---------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str, safe_globals: tuple[type, ...] = ()) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors naming the file;
    ``safe_globals``: classes the file may also hold (e.g. ``argparse.Namespace`` in DINO's
    training checkpoints), allow-listed for this call only."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types; all mean the same to the user
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True): {type(e).__name__}: {e}. "
            "Checkpoints are untrusted; re-save only the state dict (a dict of tensors) to load it."
        ) from None


def is_state_dict(obj: object) -> bool:
    """A non-empty mapping of string keys to tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def find_state_dict(obj: object, path: str = "<checkpoint>") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a checkpoint and where it was found (``"top level"`` or ``"['model']"``).

    A flat dict of tensors is itself the state dict; otherwise the first of ``STATE_DICT_KEYS``
    holding a dict of tensors is used (so ``{'state_dict': ..., 'model': ...}`` files are not
    mis-routed the way CompRess's ``load_weights`` does).
    """
    if is_state_dict(obj):
        return dict(cast(Mapping[str, torch.Tensor], obj)), "top level"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key]), f"[{key!r}]"
        summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12])
        raise CheckpointError(
            f"{path}: no state dict found: expected a dict of tensors at the top level or under one of "
            f"{', '.join(repr(k) for k in STATE_DICT_KEYS)}; the file holds {{{summary}}}"
        )
    raise CheckpointError(f"{path}: expected a dict, found a {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# key reports


def key_group(key: str) -> str:
    """Grouping prefix of a key: ``layer4.2.conv3.weight`` -> ``layer4.2``, ``fc.bias`` -> ``fc``."""
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def group_keys(keys: list[str], examples: int = 3) -> str:
    """Keys grouped by prefix, one line per group: ``  layer4.2.* (15): a, b, c, ...``."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for k in keys:
        groups.setdefault(key_group(k), []).append(k)
    lines = []
    for prefix, members in groups.items():
        more = ", ..." if len(members) > examples else ""
        lines.append(f"  {prefix}.* ({len(members)}): {', '.join(members[:examples])}{more}")
    return "\n".join(lines)


@dataclass(frozen=True)
class LoadReport:
    """What a strict load did: the one report of every teacher load (ResNet layouts here, ViT /
    timm layouts in ``vit_checkpoints``); ``summary()`` is logged and printed by the build.

    Attributes:
        path: the file actually read (a hub directory's ``model.safetensors``).
        location: where the state dict was in it (``top level``, ``['teacher'] backbone.*``).
        layout: the detected layout name.
        loaded: tensors loaded into the model.
        dropped: file keys of heads the teacher does not use.
        ignored: file keys of parts that are not the teacher (momentum encoder, text tower).
        filled: model keys absent from the file and filled (``num_batches_tracked`` = 0).
        resampled: ``"pos_embed (1, 1370, 384) -> (1, 257, 384)"`` for position embeddings
            resampled to the input size.
    """

    path: str
    location: str
    layout: str
    loaded: int
    dropped: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    filled: tuple[str, ...] = ()
    resampled: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: ``loaded 318 tensors from X ['state_dict'] (layout moco); dropped head [...]``."""
        parts = [f"loaded {self.loaded} tensors from {self.path} {self.location} (layout {self.layout})"]
        if self.dropped:
            parts.append(f"dropped head {sorted({key_group(k) for k in self.dropped})} ({len(self.dropped)} keys)")
        if self.ignored:
            parts.append(f"ignored non-teacher {sorted({key_group(k) for k in self.ignored})} ({len(self.ignored)} keys)")
        if self.filled:
            parts.append(f"filled {len(self.filled)} absent num_batches_tracked with 0")
        if self.resampled:
            parts.append("resampled " + ", ".join(self.resampled))
        return "; ".join(parts)


def remap_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layouts: list[Layout],
    drop: tuple[str, ...],
    path: str = "<checkpoint>",
) -> tuple[dict[str, torch.Tensor], Layout, list[str], list[str], list[str]]:
    """Detect the layout and map file keys to model keys.

    Returns:
        ``(remapped, layout, dropped, ignored, stray)``: ``stray`` are file keys outside the
        layout's prefix that nothing explains (reported as unexpected by ``load_strict``).
    """
    keys = list(state_dict)
    layout = next((lay for lay in layouts if lay.matches(keys)), None)
    if layout is None:
        accepted = "\n".join(f"  {lay.name}: {lay.description} (identified by {lay.marker or lay.prefix + '*'})" for lay in layouts)
        raise CheckpointKeyError(
            f"{path}: the state dict matches none of the accepted layouts:\n{accepted}\n"
            f"its {len(keys)} keys are:\n{group_keys(keys)}"
        )
    remapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    ignored: list[str] = []
    stray: list[str] = []
    for key, value in state_dict.items():
        if layout.ignore and key.startswith(layout.ignore):
            ignored.append(key)
            continue
        if not key.startswith(layout.prefix):
            stray.append(key)
            continue
        new = key[len(layout.prefix):]
        if layout.rename is not None:
            new = layout.rename(new)
        if drop and new.startswith(drop):
            dropped.append(key)
            continue
        remapped[new] = value
    return remapped, layout, dropped, ignored, stray


def densify_(model: nn.Module) -> None:
    """Make strided views contiguous once (converters store TF kernels as ``permute(3, 2, 0, 1)``
    views; left as they are, every convolution would re-copy its weight on every forward).
    Broadcast tensors (a zero stride: one vector expanded to the full shape) stay views, since
    materialising them could cost gigabytes."""
    with torch.no_grad():
        for module in model.modules():
            for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if t is not None and not t.is_contiguous() and 0 not in t.stride():
                    dense = t.contiguous()
                    if isinstance(t, nn.Parameter):
                        setattr(module, name, nn.Parameter(dense, requires_grad=t.requires_grad))
                    else:
                        setattr(module, name, dense)


def load_strict(
    model: nn.Module,
    checkpoint: object,
    layouts: list[Layout],
    drop: tuple[str, ...] = (),
    path: str = "<checkpoint>",
) -> LoadReport:
    """Load a checkpoint into ``model`` strictly after remapping.

    Every model key must come from the file (``num_batches_tracked`` alone may be absent: it is
    set to 0 and reported); every file key must be loaded, be a dropped head, or belong to an
    ignored part of the layout. Shapes must match. The model may live on the meta device: the
    tensors are assigned (``assign=True``), never copied into randomly initialised ones.

    Raises:
        CheckpointKeyError: with missing / unexpected / mis-shaped keys grouped by prefix.
    """
    state_dict, location = find_state_dict(checkpoint, path)
    remapped, layout, dropped, ignored, stray = remap_state_dict(state_dict, layouts, drop, path)
    expected = model.state_dict()
    filled = [k for k in expected if k not in remapped and k.endswith("num_batches_tracked")]
    for k in filled:
        remapped[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in remapped]
    unexpected = [k for k in remapped if k not in expected] + stray
    shapes = [
        f"{k}: file {tuple(remapped[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected if k in remapped and tuple(remapped[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{path} {location} (layout {layout.name}) does not fit the model:"]
        if missing:
            parts.append(f"missing {len(missing)} keys the model needs:\n{group_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (neither model weights nor dropped heads {list(drop)}):\n{group_keys(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} keys with the wrong shape (wrong architecture or width?):\n  " + "\n  ".join(shapes[:10]))
        raise CheckpointKeyError("\n".join(parts))
    cast = {k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v) for k, v in remapped.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    densify_(model)
    return LoadReport(path, location, layout.name, len(remapped) - len(filled), tuple(dropped), tuple(ignored), tuple(filled))
