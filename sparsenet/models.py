"""LeNet and its sparse twin.

`SparseConv2d` / `SparseLinear` are drop-in replacements for `nn.Conv2d` / `nn.Linear` that
carry a boolean ``mask`` buffer per weight (and ``bias_mask`` per bias).  The forward pass uses
the masked weight and :meth:`apply_mask` keeps the stored weight at exact zero where masked, so
``module.weight`` always shows the true zeros and an optimizer step can never revive a pruned
weight (:func:`enforce_masks_after_steps` re-applies the masks after every step).

Plain PyTorch: ``model(x)`` runs only torch operators, so a model exports to ONNX, traces and
compiles like any other.  Training's own forward pass (compiled conv blocks, fixed-order sums)
is :mod:`sparsenet.training_forward`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sparsenet.options import LAYER_NAMES  # noqa: F401 (the layer names, with the model they name)

# Widths of the classic LeNet: conv1 filters, conv2 filters, fc1 units, fc2 units.
LENET_WIDTHS: tuple[int, int, int, int] = (6, 16, 120, 84)
KERNEL_SIZE = 5


class _MaskedMixin:
    """Shared mask handling for the sparse layers."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    mask: torch.Tensor
    bias_mask: torch.Tensor

    def _init_masks(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        bias = self.bias if self.bias is not None else torch.empty(0)
        self.register_buffer("bias_mask", torch.ones_like(bias, dtype=torch.bool))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def masked_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias * self.bias_mask

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, bias_mask: torch.Tensor | None = None) -> None:
        """Replace the masks (they may only lose entries) and zero the pruned weights."""
        mask = mask.to(device=self.mask.device, dtype=torch.bool)
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.mask.shape)}")
        self.mask.copy_(mask & self.mask)
        if bias_mask is not None and self.bias is not None:
            self.bias_mask.copy_(bias_mask.to(self.bias_mask.device, torch.bool) & self.bias_mask)
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Write exact zeros (+0.0, never -0.0) into the stored weight (and bias) wherever the mask is off."""
        self.weight.masked_fill_(~self.mask, 0.0)
        if self.bias is not None:
            self.bias.masked_fill_(~self.bias_mask, 0.0)


class SparseConv2d(_MaskedMixin, nn.Conv2d):
    """`nn.Conv2d` (zero padding) whose weight is multiplied by a fixed boolean mask."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d pads with zeros only, not {self.padding_mode!r}")
        self._init_masks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.masked_bias(), self.stride, self.padding, self.dilation,
                        self.groups)


class SparseLinear(_MaskedMixin, nn.Linear):
    """`nn.Linear` whose weight is multiplied by a fixed boolean mask."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_masks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.masked_bias())


SPARSE_LAYER_TYPES = (SparseConv2d, SparseLinear)


def used_parameters(layer: nn.Conv2d | nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) as the layer's forward pass uses them: a sparse layer's masked ones."""
    if isinstance(layer, SPARSE_LAYER_TYPES):
        return layer.masked_weight(), layer.masked_bias()
    return layer.weight, layer.bias


class LeNet(nn.Module):
    """conv(3→6, k5) ReLU maxpool2 → conv(6→16, k5) ReLU maxpool2 → FC 120 → FC 84 → classes.

    The flatten size is derived from ``image_size``: 16·13·13 for 64×64 input.
    """

    conv_type: type[nn.Conv2d] = nn.Conv2d
    linear_type: type[nn.Linear] = nn.Linear

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 64,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = LENET_WIDTHS,
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = widths
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels
        self.widths = tuple(widths)
        self.conv1 = self.conv_type(in_channels, c1, KERNEL_SIZE)
        self.conv2 = self.conv_type(c1, c2, KERNEL_SIZE)
        side = feature_side(image_size)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for LeNet (needs at least 16)")
        self.flat_side = side
        self.fc1 = self.linear_type(c2 * side * side, f1)
        self.fc2 = self.linear_type(f1, f2)
        self.fc3 = self.linear_type(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(max_pool_2x2(self.conv1(x)))
        x = F.relu(max_pool_2x2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``, computed as two element-wise maxima when no gradient is needed.

    Same values bit for bit.  On CPU, channels-last max-pooling of a few channels (conv1's 6, or
    3 after pruning) takes a slow path: 8 ms per 256 images here, against 1 ms for the maxima.
    Where a gradient is needed it stays ``max_pool2d``, which sends each window's gradient to one
    element, not split among ties.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor mode, like max_pool2d
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def feature_side(image_size: int) -> int:
    """Side of conv2's pooled feature map for a square input (64 → 13)."""
    side = image_size
    for _ in range(2):
        side = (side - KERNEL_SIZE + 1) // 2
    return side


class SparseNet(LeNet):
    """LeNet built from `SparseConv2d` and `SparseLinear`."""

    conv_type = SparseConv2d
    linear_type = SparseLinear

    @classmethod
    def from_dense(cls, dense: LeNet) -> "SparseNet":
        """A SparseNet with the dense model's weights and all-ones masks."""
        net = cls(dense.num_classes, dense.image_size, dense.in_channels, dense.widths)
        net.load_dense_state_dict(dense.state_dict())
        return net.to(next(dense.parameters()).device)

    def load_dense_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a dense LeNet's weights; masks keep their current values."""
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(("mask", "bias_mask"))]
        if missing or result.unexpected_keys:
            raise ValueError(f"not a LeNet state dict: missing {missing}, unexpected {result.unexpected_keys}")
        self.apply_masks()

    def sparse_layers(self) -> Iterator[tuple[str, SparseConv2d | SparseLinear]]:
        """(name, module) of every sparse layer, input to output."""
        return sparse_layers(self)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for _, layer in self.sparse_layers():
            layer.apply_mask()

    @torch.no_grad()
    def rewind(self, state: dict[str, torch.Tensor]) -> None:
        """Reset every weight and bias to ``state``'s value, keeping the masks (lottery tickets)."""
        for name, param in self.named_parameters():
            param.copy_(state[name].to(param.device))
        self.apply_masks()


def initial_state(model: LeNet, seed: int) -> dict[str, torch.Tensor]:
    """Weights and biases of a freshly initialised LeNet shaped like ``model``, drawn by ``seed``.

    PyTorch's default initialisation (what ``train_dense`` starts from), from a generator of its
    own: the global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = LeNet(model.num_classes, model.image_size, model.in_channels, model.widths)
    return {name: param.detach() for name, param in fresh.named_parameters()}


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseConv2d | SparseLinear]]:
    """(name, module) of every sparse layer of any model, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, SPARSE_LAYER_TYPES):
            yield name, module


def enforce_masks_after_steps(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Re-apply every sparse layer's mask after each ``optimizer.step()``.

    Adam's running moments would otherwise move a weight pruned after training started.
    """
    layers = [layer for _, layer in sparse_layers(model)]

    def reapply_masks(*_) -> None:
        for layer in layers:
            layer.apply_mask()

    if layers:
        optimizer.register_step_post_hook(reapply_masks)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
