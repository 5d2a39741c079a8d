"""Model registry: `create(name, num_classes, **params)` and what each model declares."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import timm
from torch import nn

from carbrand_search.core.errors import UserError
from carbrand_search.core.fields import DataclassInstance, build
from carbrand_search.models.resnet import ResNetParams, build_resnet, last_stage
from carbrand_search.models.small_cnn import SmallCNN, SmallCNNParams
from carbrand_search.models.timm_backbone import TimmParams, build_timm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    """How to build one model and what it tells the rest of the system."""

    build: Callable[[int, Any], nn.Module]
    params: type[DataclassInstance]
    cam_layer: Callable[[nn.Module], nn.Module]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _timm_entry(name: str, cam_layer: Callable[[nn.Module], nn.Module]) -> ModelEntry:
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None, f"timm knows no pretrained config for {name}"
    return ModelEntry(partial(build_timm, name), TimmParams, cam_layer, cfg.mean, cfg.std)


def _efficientnet_cam(model: Any) -> nn.Module:
    return model.bn2  # the last 1280-channel map, after its activation


def _small_cnn_cam(model: Any) -> nn.Module:
    return model.features[-1].act


def _convnext_cam(model: Any) -> nn.Module:
    return model.stages[-1]


REGISTRY: dict[str, ModelEntry] = {
    "small_cnn": ModelEntry(SmallCNN, SmallCNNParams, _small_cnn_cam, IMAGENET_MEAN, IMAGENET_STD),
    "resnet": ModelEntry(build_resnet, ResNetParams, last_stage, IMAGENET_MEAN, IMAGENET_STD),
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


def create(name: str, num_classes: int, **params: Any) -> nn.Module:
    """Build model `name` with `num_classes` outputs; `params` are type-checked."""
    model_entry = entry(name)
    try:
        typed = build(model_entry.params, params, "model")
    except ValueError as e:
        raise UserError(str(e)) from e
    return model_entry.build(num_classes, typed)
