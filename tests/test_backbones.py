"""The EfficientNet-Lite0 encoder: its ImageNet weights are sound, and it fits the lesion network."""

from __future__ import annotations

import numpy as np
import torch

from models.backbones import LITE0_CHANNELS, EfficientLiteEncoder, lite0_weights_path
from models.network import LesionNet

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
ROCKET_CLASSES = {657, 744}  # missile, projectile


def _imagenet_top5(net: torch.nn.Module, rgb: np.ndarray) -> set[int]:
    from skimage.transform import resize

    h, w = rgb.shape[:2]
    side = min(h, w)
    square = rgb[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    image = resize(square[..., :3] / 255.0, (224, 224), anti_aliasing=True)
    x = torch.tensor((2.0 * image - 1.0).transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.no_grad():
        return set(net(x)[0].topk(5).indices.tolist())


def test_the_shipped_imagenet_weights_recognise_natural_images() -> None:
    """The TF-to-PyTorch conversion is "not thoroughly tested" by its author: check it on the
    natural photographs scikit-image ships (a cat, an espresso, a rocket)."""
    from efficientnet_lite_pytorch import EfficientNet
    from skimage import data

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(lite0_weights_path(), weights_only=True))
    net.eval()
    assert _imagenet_top5(net, data.chelsea()) & CAT_CLASSES
    assert _imagenet_top5(net, data.coffee()) & COFFEE_CLASSES
    assert _imagenet_top5(net, data.rocket()) & ROCKET_CLASSES
    # a random network does not: the check can fail
    torch.manual_seed(0)
    assert not _imagenet_top5(
        EfficientNet.from_name("efficientnet-lite0").eval(), data.chelsea()
    ) >= {285, 282, 281}


def test_the_encoder_gives_one_map_per_stride_with_the_declared_channels() -> None:
    encoder = EfficientLiteEncoder(3, pretrained=True, act="relu", norm="batch").eval()
    maps = encoder(torch.rand(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == list(LITE0_CHANNELS)
    assert [m.shape[-1] for m in maps] == [64, 32, 16, 8, 4]


def test_a_two_channel_input_keeps_the_pretrained_filters_averaged() -> None:
    rgb = EfficientLiteEncoder(3, pretrained=True, act="relu", norm="batch")
    two = EfficientLiteEncoder(2, pretrained=True, act="relu", norm="batch")
    expected = rgb.stem[0].weight.mean(dim=1, keepdim=True).expand(-1, 2, -1, -1)
    assert torch.allclose(two.stem[0].weight, expected)


def test_the_lesion_network_on_lite0_gives_every_output() -> None:
    net = LesionNet(
        in_channels=3,
        features=(16, 24, 32, 64),
        subunits=1,
        descriptor_classes={"shape": 3},
        encoder="efficientnet-lite0",
    ).eval()
    out = net(torch.rand(2, 3, 96, 96))
    assert out["mask"].shape == (2, 1, 96, 96)
    assert out["malignancy"].shape == (2,)
    assert out["desc_shape"].shape == (2, 3)
