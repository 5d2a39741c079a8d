"""ImageNet backbones from timm, with weights from a local file or timm's own download."""

import os
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
from safetensors import SafetensorError
from torch import nn

from carbrand_search.core.errors import UserError, first_line
from carbrand_search.models.params import TimmParams

HOW_TO_SUPPLY = (
    "pass a local weights file with --set model.weights=PATH (safetensors or torch state dict), "
    "or train from scratch with --set model.pretrained=false"
)


def build_timm(name: str, num_classes: int, params: TimmParams) -> nn.Module:
    """Create timm model `name` with a new `num_classes` head on pretrained/random weights."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": params.drop_rate}
    if not params.pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if params.weights:
        path = Path(params.weights).expanduser()
        if not path.is_file():
            raise UserError(f"model.weights: no such file {path}")
        try:
            model: Any = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
            _check_all_weights_loaded(model, path)
        # What a file can cause: unreadable (OSError, EOFError), not safetensors or not a
        # tensors-only pickle (SafetensorError, RuntimeError), weights of the wrong shapes.
        except (OSError, EOFError, RuntimeError, SafetensorError, pickle.UnpicklingError) as e:
            raise UserError(
                f"model.weights: {path} does not load into {name}: {first_line(e, 200)}"
            ) from e
    else:
        _check_download_possible(name)
        model = timm.create_model(name, pretrained=True, **kwargs)
    # timm initialises EfficientNet heads with a fan-out range (±1/sqrt(classes)): on 1280
    # pretrained features that gives logits of ±20 and a first loss of 5+ for 5 classes.
    # A fan-in initialised head starts near ln(classes).
    model.reset_classifier(num_classes)
    return model


def _check_all_weights_loaded(model: Any, path: Path) -> None:
    """timm loads a file's weights without `strict`: a file of another network's weights
    would leave this one at its random start with a warning. Every weight but the new head's
    must be in the file."""
    head = model.default_cfg.get("classifier") or ""
    needed = {k for k in model.state_dict() if not k.startswith(f"{head}.")}
    missing = sorted(needed - set(timm.models.load_state_dict(str(path))))
    if missing:
        raise UserError(
            f"model.weights: {path} lacks {len(missing)} of the {len(needed)} weights the model "
            f"needs (first: {missing[0]}); is it this network's?"
        )


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std that `name`'s pretrained weights expect."""
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None, f"timm knows no pretrained config for {name}"
    return cfg.mean, cfg.std


def _check_download_possible(name: str) -> None:
    """Fail in seconds, not after a minute of hub retries, when weights cannot be downloaded."""
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = cfg.hf_hub_id if cfg else None
    if hub_id is None:
        raise UserError(f"timm has no downloadable weights for {name}: {HOW_TO_SUPPLY}")
    cached = try_to_load_from_cache(hub_id, "model.safetensors") or try_to_load_from_cache(
        hub_id, "pytorch_model.bin"
    )
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"HF_HUB_OFFLINE is set and {name} weights are not cached: {HOW_TO_SUPPLY}"
        )
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"cannot download ImageNet weights for {name}: {host}:{port} unreachable ({e}); "
            f"{HOW_TO_SUPPLY}"
        ) from e
