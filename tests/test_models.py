"""The model registry: every model trains a step; weights load from a file or fail clearly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from huggingface_hub import constants as hf_constants

from carbrand_search import models
from carbrand_search.core.errors import UserError
from carbrand_search.core.fields import field_types
from carbrand_search.models.params import HEAD_CLASSES, ResNetParams, SmallCNNParams

LITE0 = SHARED / "weights" / "tf_efficientnet_lite0_timm.safetensors"


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_forward_backward_shape_no_nan(name: str) -> None:
    entry = models.entry(name)
    params = {"pretrained": False} if "pretrained" in field_types(entry.params) else {}
    model = models.create(name, 5, **params)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()
    layer = models.entry(name).cam_layer(model)
    assert any(m is layer for m in model.modules())


@pytest.mark.parametrize("batch_norm", [False, True])
def test_small_cnn_blocks_follow_params(batch_norm: bool) -> None:
    model = models.create(
        "small_cnn", 33, filters=[16, 32, 64, 128], kernel_sizes=[7, 5, 3], batch_norm=batch_norm
    )
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 3, 3]
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn is batch_norm


@pytest.mark.parametrize(
    ("block", "convs_per_block", "stem_stride"), [("basic", 2, 4), ("bottleneck", 3, 2)]
)
def test_resnet_stages_follow_params(block: str, convs_per_block: int, stem_stride: int) -> None:
    model = models.create(
        "resnet",
        7,
        block=block,
        layers=[1, 2, 1, 1],
        channels=[8, 16, 32, 32],
        stem_stride=stem_stride,
        attention="se",
    )
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(stage) for stage in stages] == [1, 2, 1, 1]
    expansion = 4 if block == "bottleneck" else 1  # timm's Bottleneck widens its output 4x
    assert model.num_features == 32 * expansion
    first = stages[0][0]
    convs = [m for m in first.children() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == convs_per_block
    assert all(blk.se is not None for stage in stages for blk in stage)  # attention in every block
    assert models.entry("resnet").cam_layer(model) is model.layer4
    # Stride 4 = timm's conv + max-pool; stride 2 keeps twice the resolution into stage 1.
    features = model.maxpool(model.act1(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert features.shape[-1] == 32 // stem_stride
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_bad_params_are_named() -> None:
    with pytest.raises(UserError, match=r"model\.kernel_sizes needs 1 to 2 entries"):
        models.create("small_cnn", 3, filters=[8, 16], kernel_sizes=[3, 3, 3])
    with pytest.raises(UserError, match=r"unknown key model\.width"):
        models.create("small_cnn", 3, width=2)
    with pytest.raises(UserError, match=r"unknown model 'resnet9000'.*small_cnn"):
        models.create("resnet9000", 3)


@pytest.mark.skipif(not LITE0.is_file(), reason="shared ImageNet weights not present")
def test_local_weights_file_loads() -> None:
    model = models.create("tf_efficientnet_lite0", 4, weights=str(LITE0))
    from safetensors.torch import load_file

    stored = load_file(str(LITE0))
    assert torch.equal(model.state_dict()["conv_stem.weight"], stored["conv_stem.weight"])
    assert model.get_classifier().out_features == 4


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model.weights: no such file .*nope\.safetensors"):
        models.create("efficientnet_b0", 4, weights=str(tmp_path / "nope.safetensors"))


def test_garbage_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"junk\.safetensors does not load into efficientnet_b0"):
        models.create("efficientnet_b0", 4, weights=str(junk))


def test_another_networks_weights_are_refused_not_ignored(tmp_path: Path) -> None:
    """timm loads a weights file without `strict`: a file with none of the network's weights
    left it at its random start, with only a warning."""
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(UserError, match=r"other\.safetensors lacks \d+ of the \d+ weights"):
        models.create("efficientnet_b0", 4, weights=str(other))
    pickled = tmp_path / "other.pth"
    pickled.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match=r"other\.pth does not load into efficientnet_b0"):
        models.create("efficientnet_b0", 4, weights=str(pickled))


def test_unreachable_hub_without_file_says_how_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UserError, match=r"cannot download ImageNet weights.*model.weights=PATH"):
        models.create("efficientnet_b0", 4)


def test_hf_offline_without_file_says_how_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE is set.*model.pretrained=false"):
        models.create("efficientnet_b0", 4)


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_gradcam_runs_on_every_models_declared_layer(name: str) -> None:
    from carbrand_search.core.config import DataConfig
    from carbrand_search.data.augment import Augment
    from carbrand_search.reports.gradcam import overlays

    entry = models.entry(name)
    params = {"pretrained": False} if "pretrained" in field_types(entry.params) else {}
    model = models.create(name, 3, **params)
    augment = Augment(DataConfig(cache_size=64, image_size=64), *entry.normalization())
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    pictures = overlays(model, name, augment, images, [0, 2])
    assert [p.shape for p in pictures] == [(64, 64, 3)] * 2
    assert all(p.dtype == np.uint8 for p in pictures)


@pytest.mark.parametrize(
    "params",
    [
        SmallCNNParams(),
        SmallCNNParams(filters=(64, 128, 256, 512), kernel_sizes=(7, 5, 3), batch_norm=True),
        ResNetParams(),
        ResNetParams(layers=(1, 1, 1, 1), stem="deep", attention="se"),
        ResNetParams(block="bottleneck", layers=(3, 4, 6, 3), channels=(64, 128, 256, 512)),
    ],
)
def test_the_size_estimate_bounds_the_real_count(params: SmallCNNParams | ResNetParams) -> None:
    """The estimate that refuses a model before it is built is an upper bound, and a close one."""
    name = "small_cnn" if isinstance(params, SmallCNNParams) else "resnet"
    model = models.create(name, HEAD_CLASSES, **params.__dict__)
    real = sum(p.numel() for p in model.parameters())
    assert real <= params.parameters() <= 1.3 * real


def test_a_model_too_heavy_to_build_is_refused_before_it_is_built() -> None:
    """filters [4096, 4096, 4096] with 31×31 kernels asked for 64 GB at the first conv."""
    with pytest.raises(ValueError, match=r"about 32,2\d\d M parameters .* at most 100 M"):
        SmallCNNParams(filters=(4096, 4096, 4096), kernel_sizes=(31,))
    with pytest.raises(ValueError, match="at most 100 M"):
        ResNetParams(layers=(8, 8, 8, 8), channels=(2048, 2048, 2048, 2048))
