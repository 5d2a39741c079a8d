"""Model registry: `create(name, num_classes, **params)` and what each model declares.

A family's module, and timm with it, is imported only when one of its models is built or its
normalisation is asked for: checking a study file costs no torch, and a small_cnn worker never
loads timm, torchvision or torch._dynamo (bench/RESULTS.md, start-up)."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carbrand_search.core.errors import UserError
from carbrand_search.core.fields import DataclassInstance, build
from carbrand_search.models.params import ResNetParams, SmallCNNParams, TimmParams

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class ModelEntry:
    """How to build one model and what it tells the rest of the system."""

    params: type[DataclassInstance]
    builder: str  # "module:callable", called as (num_classes, params), or (name, …) for timm
    cam_layer: Callable[["nn.Module"], "nn.Module"]
    timm_name: str = ""  # a timm backbone: its builder's first argument and normalisation

    def build(self, num_classes: int, params: Any) -> "nn.Module":
        builder = _resolve(self.builder)
        if self.timm_name:
            return builder(self.timm_name, num_classes, params)  # type: ignore[no-any-return]
        return builder(num_classes, params)  # type: ignore[no-any-return]

    def normalization(self) -> Normalization:
        """The (mean, std) the model's inputs are normalised with."""
        if self.timm_name:
            normalization = _resolve("carbrand_search.models.timm_backbone:normalization")
            return normalization(self.timm_name)  # type: ignore[no-any-return]
        return IMAGENET_MEAN, IMAGENET_STD


def _resolve(path: str) -> Callable[..., Any]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _efficientnet_cam(model: Any) -> "nn.Module":
    return model.bn2  # the last 1280-channel map, after its activation


def _small_cnn_cam(model: Any) -> "nn.Module":
    return model.features[-1].act


def _convnext_cam(model: Any) -> "nn.Module":
    return model.stages[-1]


def _last_stage(model: Any) -> "nn.Module":
    """A timm ResNet's last residual stage."""
    return model.get_submodule(model.feature_info[-1]["module"])  # type: ignore[no-any-return]


def _timm_entry(name: str, cam_layer: Callable[[Any], "nn.Module"]) -> ModelEntry:
    builder = "carbrand_search.models.timm_backbone:build_timm"
    return ModelEntry(TimmParams, builder, cam_layer, name)


REGISTRY: dict[str, ModelEntry] = {
    "small_cnn": ModelEntry(
        SmallCNNParams, "carbrand_search.models.small_cnn:SmallCNN", _small_cnn_cam
    ),
    "resnet": ModelEntry(ResNetParams, "carbrand_search.models.resnet:build_resnet", _last_stage),
    "efficientnet_b0": _timm_entry("efficientnet_b0", _efficientnet_cam),
    "efficientnet_b2": _timm_entry("efficientnet_b2", _efficientnet_cam),
    "efficientnet_b3": _timm_entry("efficientnet_b3", _efficientnet_cam),
    "tf_efficientnet_lite0": _timm_entry("tf_efficientnet_lite0", _efficientnet_cam),
    "convnext_tiny": _timm_entry("convnext_tiny", _convnext_cam),
}


def entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or an error listing the models there are."""
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r} (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def create(name: str, num_classes: int, **params: Any) -> "nn.Module":
    """Build model `name` with `num_classes` outputs; `params` are type-checked."""
    model_entry = entry(name)
    try:
        typed = build(model_entry.params, params, "model")
    except ValueError as e:
        raise UserError(str(e)) from e
    return model_entry.build(num_classes, typed)
