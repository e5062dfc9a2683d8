"""The lesion network: one encoder–decoder with a mask, a malignancy and descriptor heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.layers.factories import Pool
from torch import nn

from models.exceptions import ConfigError
from models.inference import DESCRIPTOR_PREFIX, OUTPUT_MALIGNANCY, OUTPUT_MASK

__all__ = ["OUTPUT_MALIGNANCY", "OUTPUT_MASK", "LesionNet", "descriptor_output", "weights_mb"]


def descriptor_output(head: str) -> str:
    """Name of a descriptor head's output (``desc_<head>``)."""
    return DESCRIPTOR_PREFIX + head


class _UpBlock(nn.Module):
    """Upsample ×2, concatenate the skip connection, fuse with a residual unit."""

    def __init__(
        self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, subunits: int, act, norm
    ) -> None:
        super().__init__()
        self.up = UpSample(
            spatial_dims, in_ch, out_ch, scale_factor=2, mode="deconv", kernel_size=2
        )
        self.fuse = ResidualUnit(
            spatial_dims, out_ch + skip_ch, out_ch, subunits=subunits, act=act, norm=norm
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class LesionNet(nn.Module):
    """Seeded lesion network: mask logits for the crop, a malignancy logit and descriptor logits.

    A residual U-Net (MONAI ``ResidualUnit`` blocks, strided downsampling, transposed-convolution
    upsampling). The malignancy and descriptor heads share one embedding: average- and max-pooled
    bottleneck features plus decoder features averaged inside the predicted mask and along its
    margin band (probabilities detached, so classification does not pull the outline).

    Args:
        spatial_dims: number of spatial dimensions (2 for ultrasound frames).
        in_channels: input channels (context scales plus the seed channel).
        out_channels: mask channels (1).
        features: channels per resolution level; the input size must be divisible by
            ``2 ** (len(features) - 1)``.
        descriptor_classes: classes per descriptor head (head name → count); empty for none.
        act: activation (MONAI factory spec).
        norm: normalisation (MONAI factory spec).
        dropout: dropout before the heads.
        head_hidden: width of the shared head embedding.
        subunits: convolutions per residual unit, one count per level (or one for all).
        encoder: ``residual`` (MONAI residual units, ``features`` wide) or
            ``efficientnet-lite0`` (:class:`models.backbones.EfficientLiteEncoder`, ImageNet
            weights; ``features`` then sets the decoder's widths, one per level below the
            bottleneck, and the input size must be divisible by 16).
        pretrained: load the encoder's ImageNet weights (a fresh network to train).

    Raises:
        ConfigError: fewer than two levels, a head with fewer than two classes, or decoder
            widths that do not match the encoder's levels.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 192),
        descriptor_classes: Mapping[str, int] | None = None,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = "batch",
        dropout: float = 0.2,
        head_hidden: int = 128,
        subunits: int | Sequence[int] = (1, 1, 2, 2, 2),
        encoder: str = "residual",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ConfigError(f"need at least two feature levels, got {features}")
        heads = dict(descriptor_classes or {})
        if any(k < 2 for k in heads.values()):
            raise ConfigError(f"every descriptor head needs at least two classes: {heads}")
        self.spatial_dims = spatial_dims
        self.descriptor_classes = heads
        if encoder == "residual":
            skip = tuple(features)
            widths = skip[:-1]
        elif encoder == "efficientnet-lite0":
            from models.backbones import LITE0_CHANNELS as skip

            widths = tuple(features)
            if len(widths) != len(skip) - 1:
                raise ConfigError(
                    f"features: {encoder} needs {len(skip) - 1} decoder widths, got {features}"
                )
        else:
            raise ConfigError(f"encoder must be residual or efficientnet-lite0, got {encoder!r}")
        # each level's output width: the decoder's levels, then the bottleneck
        self.features = f = (*widths, skip[-1])
        subs = (subunits,) * len(skip) if isinstance(subunits, int) else tuple(subunits)
        if len(subs) != len(skip) or min(subs) < 1:
            raise ConfigError(f"subunits needs one positive count per level, got {subunits}")
        if encoder == "residual":
            self.encoder: nn.Module = nn.ModuleList(
                [
                    ResidualUnit(
                        spatial_dims, in_channels, f[0], subunits=subs[0], act=act, norm=norm
                    )
                ]
                + [
                    ResidualUnit(
                        spatial_dims,
                        f[i - 1],
                        f[i],
                        strides=2,
                        subunits=subs[i],
                        act=act,
                        norm=norm,
                    )
                    for i in range(1, len(f))
                ]
            )
        else:
            from models.backbones import EfficientLiteEncoder

            self.encoder = EfficientLiteEncoder(
                in_channels, pretrained=pretrained, act=act, norm=norm
            )
        self.decoder = nn.ModuleList(
            [
                _UpBlock(spatial_dims, f[i], skip[i - 1], f[i - 1], subs[i - 1], act, norm)
                for i in range(len(f) - 1, 0, -1)
            ]
        )
        self.mask_out = Convolution(spatial_dims, f[0], out_channels, kernel_size=1, conv_only=True)
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=2)
        self.dilate = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=1, padding=1)
        self.pool_level = min(2, len(f) - 2)
        embed_in = 2 * f[-1] + 2 * f[self.pool_level]
        self.embed = nn.Sequential(
            nn.Linear(embed_in, head_hidden), nn.LeakyReLU(0.1, inplace=True), nn.Dropout(dropout)
        )
        self.malignancy = nn.Linear(head_hidden, 1)
        self.descriptors = nn.ModuleDict({k: nn.Linear(head_hidden, n) for k, n in heads.items()})

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not isinstance(self.encoder, nn.ModuleList):
            return self.encoder(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            x: (N, in_channels, S, S) crops.

        Returns:
            ``{"mask": (N, out_channels, S, S) logits, "malignancy": (N,) logits,
            "desc_<head>": (N, classes) logits}``.
        """
        skips = self._encode(x)
        h = bottleneck = skips[-1]
        pooled_features = h
        for i, block in enumerate(self.decoder):
            h = block(h, skips[-2 - i])
            if len(self.features) - 2 - i == self.pool_level:
                pooled_features = h
        mask = self.mask_out(h)
        prob = torch.sigmoid(mask[:, :1].detach())
        while prob.shape[-1] != pooled_features.shape[-1]:
            prob = self.pool(prob)
        ring = self.dilate(prob) + self.dilate(-prob)  # morphological gradient: the margin band
        flat = pooled_features.flatten(2)
        inside = (flat * prob.flatten(2)).sum(-1) / (prob.flatten(2).sum(-1) + 1.0)
        margin = (flat * ring.flatten(2)).sum(-1) / (ring.flatten(2).sum(-1) + 1.0)
        pooled = bottleneck.flatten(2)
        emb = torch.cat([pooled.mean(-1), pooled.amax(-1), inside, margin], dim=1)
        emb = self.embed(emb)
        out = {OUTPUT_MASK: mask, OUTPUT_MALIGNANCY: self.malignancy(emb)[:, 0]}
        for name, head in self.descriptors.items():
            out[descriptor_output(name)] = head(emb)
        return out


def weights_mb(model: nn.Module) -> float:
    """Size of the float32 weights (parameters and buffers) in megabytes (10^6 bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * 4 for t in tensors if t.is_floating_point()) / 1e6
