"""Teacher network builders: torchvision-layout ResNet-50 of any width, MobileNetV2, and any
torchvision model, each returning a headless module that maps ``(B, 3, H, W)`` to ``(B, D)``.

Wide ResNet-50s (SimCLR x2/x4, SwAV w2/w4/w5) multiply *every* channel count, stem included,
by the width ``w`` (unlike torchvision's ``wide_resnet50_2``, which widens only the 3x3 convs).
Key names are torchvision's, so one checkpoint remapping serves every width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from storage.errors import UsageError, unknown_name


class WideResNet50(nn.Module):
    """ResNet-50 v1.5 with width multiplier ``width``; pooled features of dim ``2048 * width``.

    Module names equal torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1``..``layer4``,
    ``fc``); ``fc`` is an ``Identity`` so ``forward`` maps ``(B, 3, H, W)`` to ``(B, 2048w)``.
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        if width < 1:
            raise UsageError(f"width must be a positive integer, got {width}")
        self.width = width
        base = 64 * width
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = base
        self.layer1 = self._make_layer(base, 3, stride=1)
        self.layer2 = self._make_layer(base * 2, 4, stride=2)
        self.layer3 = self._make_layer(base * 4, 6, stride=2)
        self.layer4 = self._make_layer(base * 8, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        expansion = tv_resnet.Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * expansion),
            )
        layers = [tv_resnet.Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * expansion
        layers += [tv_resnet.Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float -> ``(B, 2048 * width)`` pooled features (not normalised)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_width(width: int) -> nn.Module:
    """Headless width-``width`` ResNet-50 (see ``WideResNet50``)."""
    return WideResNet50(width)


def mobilenet_v2_headless() -> nn.Module:
    """torchvision MobileNetV2 with ``classifier`` replaced by ``Identity``: ``(B,3,H,W)`` -> ``(B,1280)``."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None)
    model.classifier = nn.Identity()
    return model


class _LayerEmbedding(nn.Module):
    """Runs ``model`` and returns the output of its submodule ``layer`` (4-D maps are
    average-pooled), captured with a forward hook. State-dict keys stay the model's own."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self._captured: list[torch.Tensor] = []
        model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: self._captured.append(out))

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.model(x)
        out = self._captured.pop()
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return torch.flatten(out, 1)


HEAD_ATTRIBUTES = ("fc", "head", "heads", "classifier")


def torchvision_headless(arch: str, embed_layer: str | None = None, *, penultimate: bool = False) -> tuple[nn.Module, tuple[str, ...]]:
    """Any torchvision classification model without its classifier (randomly initialised).

    The one head stripping of the product: teachers (``custom``), students and exports use it.

    Args:
        arch: a name accepted by ``torchvision.models.get_model`` (e.g. ``resnet18``).
        embed_layer: a submodule name (``layer3``, ``features.12``) whose output is the
            embedding; 4-D outputs are global-average-pooled. The whole network keeps its keys.
        penultimate: when the head (``fc``/``head``/``heads``/``classifier``, first found) is an
            ``nn.Sequential`` ending in a ``Linear``, drop only that last layer (AlexNet's fc7 form,
            ``classifier.0``-``5`` kept); otherwise the head is replaced by ``Identity``.
    Returns:
        ``(module, dropped_prefixes)``: the module maps ``(B, 3, H, W)`` to ``(B, D)``;
        ``dropped_prefixes`` are the state-dict key prefixes of the removed head
        (``("fc.",)``, ``("classifier.6.",)``; ``()`` with ``embed_layer``).
    Raises:
        UsageError: unknown architecture (with close names), no head attribute, or unknown layer.
    """
    import torchvision

    known = sorted(torchvision.models.list_models(module=torchvision.models))
    if arch not in known:
        raise UsageError(f"--arch: {unknown_name('torchvision classification model', arch, known)}")
    model = torchvision.models.get_model(arch, weights=None)
    if embed_layer is not None:
        names = [n for n, _ in model.named_modules() if n]
        if embed_layer not in names:
            raise UsageError(f"--embed-layer {embed_layer!r} is not a module of {arch}; modules: {', '.join(names[:60])}, ...")
        return _LayerEmbedding(model, embed_layer), ()
    for head in HEAD_ATTRIBUTES:
        module = getattr(model, head, None)
        if not isinstance(module, nn.Module):
            continue
        if penultimate and isinstance(module, nn.Sequential) and len(module) > 1 and isinstance(module[-1], nn.Linear):
            last = str(len(module) - 1)
            setattr(model, head, nn.Sequential(*list(module.children())[:-1]))
            return model, (f"{head}.{last}.",)
        setattr(model, head, nn.Identity())
        return model, (head + ".",)
    raise UsageError(f"{arch}: no classifier attribute ({'/'.join(HEAD_ATTRIBUTES)}) found; pass --embed-layer")


def headless_dim(arch: str, embed_layer: str | None = None, *, penultimate: bool = False, input_size: int = 224) -> int:
    """Embedding dimension D of ``torchvision_headless(arch, embed_layer, penultimate=...)``,
    from one forward on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model, _ = torchvision_headless(arch, embed_layer, penultimate=penultimate)
    return embedding_dim(model, input_size)


def embedding_dim(model: nn.Module, input_size: int = 224) -> int:
    """D of a headless ``model`` ``(B, 3, H, W) -> (B, D)``: one forward of a single image on the
    model's device (build it on the meta device to allocate nothing)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return int(model.eval()(torch.empty(1, 3, input_size, input_size, device=device)).shape[-1])


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (elements) of ``model`` (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, input_size: int = 224) -> float:
    """Forward GFLOPs (2 x multiply-adds) for one ``(1, 3, input_size, input_size)`` image,
    counted with ``torch.utils.flop_counter``; works on a model built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.empty(1, 3, input_size, input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9
