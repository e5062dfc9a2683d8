"""Training losses: Dice + BCE for the mask (the BCE optionally weighted towards the outline),
weighted BCE/focal for malignancy, masked CE for descriptors, and the FedProx proximal term."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from models.data import IGNORE_INDEX
from models.exceptions import ConfigError
from models.network import OUTPUT_MALIGNANCY, OUTPUT_MASK, descriptor_output

__all__ = [
    "LesionLoss",
    "boundary_band",
    "malignancy_loss",
    "masked_cross_entropy",
    "proximal_term",
    "weighted_mask_bce",
]

BOUNDARY_RADIUS = 2
"""Half-width (crop pixels) of the band around the true outline that ``boundary_weight``
up-weights: about 3 % of a 64-pixel crop framed at twice the lesion's extent."""


def malignancy_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: float = 1.0, gamma: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy with a positive-class weight, optionally focal.

    Args:
        logits: (N,) malignancy logits.
        labels: (N,) 0/1 labels (float).
        pos_weight: weight of malignant cases (``n_benign / n_malignant`` balances the classes).
        gamma: focal exponent; 0 is plain weighted BCE.

    Returns:
        scalar mean loss.
    """
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight, reduction="none")
    if gamma > 0:
        prob = torch.sigmoid(logits)
        p_true = torch.where(labels > 0.5, prob, 1.0 - prob)
        bce = bce * (1.0 - p_true).pow(gamma)
    return bce.mean()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled rows only (target -1 = unlabelled); 0 when none is labelled.

    Args:
        logits: (N, K) logits.
        targets: (N,) class indices or -1.

    Returns:
        scalar mean over labelled rows.
    """
    count = (targets != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count.clamp(min=1)


def boundary_band(target: torch.Tensor, radius: int = BOUNDARY_RADIUS) -> torch.Tensor:
    """Pixels within ``radius`` (chessboard) of the mask's outline, on either side, as 0/1.

    Args:
        target: (N, 1, S, S) 0/1 masks.
        radius: half-width of the band in pixels.

    Returns:
        (N, 1, S, S) float band (empty for an all-background or all-lesion crop).
    """
    size = 2 * radius + 1
    dilated = F.max_pool2d(target, size, stride=1, padding=radius)
    eroded = -F.max_pool2d(-target, size, stride=1, padding=radius)
    return dilated - eroded


def weighted_mask_bce(
    logits: torch.Tensor, target: torch.Tensor, boundary_weight: float = 0.0
) -> torch.Tensor:
    """BCE of the mask, each pixel weighted ``1 + boundary_weight`` in the outline's band.

    The weights are normalised to mean 1 per batch, so the loss keeps plain BCE's scale and only
    its emphasis moves to the outline, where Dice is won or lost.
    """
    if boundary_weight <= 0:
        return F.binary_cross_entropy_with_logits(logits, target)
    weights = 1.0 + boundary_weight * boundary_band(target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weights).sum() / weights.sum()


def proximal_term(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FedProx term ``||w - w_global||^2 / 2`` over the trainable parameters (times mu outside).

    Args:
        model: the local network.
        reference: global parameters by name (buffers are ignored).

    Returns:
        scalar tensor.
    """
    total = torch.zeros(())
    for name, param in model.named_parameters():
        if param.requires_grad and name in reference:
            total = total + (param - reference[name]).pow(2).sum()
    return 0.5 * total


class LesionLoss(nn.Module):
    """Weighted sum of the mask, malignancy and descriptor losses.

    Args:
        heads: descriptor head names, in the order of the batch's ``descriptors`` columns.
        mask_weight: weight of Dice + BCE on the mask.
        malignancy_weight: weight of the malignancy loss.
        descriptor_weight: weight of the summed descriptor losses (divided by the head count).
        pos_weight: positive-class weight of the malignancy BCE.
        focal_gamma: focal exponent of the malignancy loss (0 = BCE).
        boundary_weight: extra BCE weight of the pixels near the true outline
            (:func:`weighted_mask_bce`; 0 = plain BCE).

    Raises:
        ConfigError: a negative weight.
    """

    def __init__(
        self,
        heads: Sequence[str] = (),
        mask_weight: float = 1.0,
        malignancy_weight: float = 1.0,
        descriptor_weight: float = 0.3,
        pos_weight: float = 1.0,
        focal_gamma: float = 0.0,
        boundary_weight: float = 0.0,
    ) -> None:
        super().__init__()
        weights = (mask_weight, malignancy_weight, descriptor_weight, pos_weight, focal_gamma)
        if min(*weights, boundary_weight) < 0:
            raise ConfigError(
                "loss weights, pos_weight, focal_gamma and boundary_weight must be non-negative"
            )
        self.heads = tuple(heads)
        self.mask_weight = mask_weight
        self.malignancy_weight = malignancy_weight
        self.descriptor_weight = descriptor_weight
        self.pos_weight = pos_weight
        self.focal_gamma = focal_gamma
        self.boundary_weight = boundary_weight
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            outputs: the network's outputs.
            batch: ``mask`` (N, 1, S, S), ``label`` (N,), ``descriptors`` (N, heads).

        Returns:
            ``total`` plus the components ``mask``, ``malignancy``, ``descriptors``.
        """
        mask_logits = outputs[OUTPUT_MASK]
        target = batch["mask"]
        mask = self.dice(mask_logits, target) + weighted_mask_bce(
            mask_logits, target, self.boundary_weight
        )
        malig = malignancy_loss(
            outputs[OUTPUT_MALIGNANCY], batch["label"], self.pos_weight, self.focal_gamma
        )
        desc = torch.zeros((), dtype=mask.dtype)
        if self.heads:
            cols = batch["descriptors"]
            for i, head in enumerate(self.heads):
                desc = desc + masked_cross_entropy(outputs[descriptor_output(head)], cols[:, i])
            desc = desc / len(self.heads)
        total = (
            self.mask_weight * mask + self.malignancy_weight * malig + self.descriptor_weight * desc
        )
        return {"total": total, "mask": mask, "malignancy": malig, "descriptors": desc}
