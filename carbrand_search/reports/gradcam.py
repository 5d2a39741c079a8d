"""Grad-CAM overlays (pytorch-grad-cam) on each model's declared target layer."""

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from carbrand_search import models
from carbrand_search.data.augment import Augment


def overlays(
    model: torch.nn.Module,
    model_name: str,
    augment: Augment,
    images: np.ndarray,
    targets: list[int],
) -> list[np.ndarray]:
    """Heat-map overlays (uint8 RGB, the model's input crop) explaining class `targets[i]`."""
    if not len(images):
        return []
    batch = torch.from_numpy(np.ascontiguousarray(images))
    inputs = augment.eval_batch(batch)
    layer = models.entry(model_name).cam_layer(model)
    model.eval()
    with GradCAM(model=model, target_layers=[layer]) as cam:
        masks = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(t) for t in targets])
    size, out = images.shape[1], augment.data.image_size
    top = (size - out) // 2
    crops = images[:, top : top + out, top : top + out, :].astype(np.float32) / 255
    return [
        show_cam_on_image(crop, mask, use_rgb=True)
        for crop, mask in zip(crops, masks, strict=True)
    ]
