"""A 3D convolution that is fast on CPUs too: depth slices as a batch of 2D convolutions.

On CPU, PyTorch routes a small-batch Conv3d (batch * C * D * H <= 20480 with a 3x3x3 kernel:
a 16-channel 32^3 grid of one object) to its native unfold-based kernel instead of oneDNN's
(ATen ``ConvParams::use_mkldnn``: "for some case, native is faster", tuned for 2D), and keeps that
choice for the backward pass. On the projection layer's grids that kernel is 3-7x slower than
oneDNN in both directions and was most of a training step's time.

A convolution over depth is a sum of 2D convolutions of depth slices: with the input padded by p_d
slices, output slice d = sum_k conv2d(slice s_d * d + k, weight[:, :, k]). All slices go through
one ``conv2d`` as a batch (B * D slices: oneDNN's path), with the kernel's k_d depth taps stacked
as output channels, and are then summed with the right shifts (each tap shifted by a pad, so that
the backward pass copies instead of zero-filling: 10% of a tiny-UNet step with the paper's 3D
settings). Same weights, same result (to float rounding), same parameters and state dict as
``nn.Conv3d``; on CUDA it is ``nn.Conv3d``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3d_by_slices(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> Tensor:
    """conv3d(x, weight, bias, stride, padding) of x (B, C, D, H, W) as one batched conv2d;
    ``stride`` and ``padding`` are (d, h, w), as ``nn.Conv3d``'s."""
    batch, channels, depth = x.shape[:3]
    out_channels, _, taps = weight.shape[:3]
    stride_d, pad_d = stride[0], padding[0]
    out_depth = (depth + 2 * pad_d - taps) // stride_d + 1
    slices = x.transpose(1, 2).reshape(batch * depth, channels, *x.shape[3:])  # (B*D, C, H, W)
    # (O, C, k_d, k_h, k_w) -> (k_d * O, C, k_h, k_w): every depth tap as its own output channels
    stacked = weight.permute(2, 0, 1, 3, 4).reshape(
        taps * out_channels, *weight.shape[1:2], *weight.shape[3:]
    )
    per_tap = F.conv2d(slices, stacked, stride=stride[1:], padding=padding[1:])
    per_tap = per_tap.reshape(batch, depth, taps, out_channels, *per_tap.shape[2:])
    span = stride_d * (out_depth - 1) + 1
    out = None
    for k, tap in enumerate(per_tap.unbind(2)):  # (B, D, O, H', W'): tap k of every slice
        # Output slice d reads input slice stride_d * d + k - pad_d: shift by padding (negative
        # pads crop). Not by slicing a padded tensor: a slice's backward zero-fills all of it.
        front = pad_d - k
        back = span - depth - front
        shifted = F.pad(tap, (0, 0) * 3 + (front, back)) if front or back else tap
        shifted = shifted[:, ::stride_d] if stride_d > 1 else shifted
        out = shifted if out is None else out + shifted  # (B, D', O, H', W')
    assert out is not None  # a kernel has at least one depth tap
    out = out.transpose(1, 2)
    return out if bias is None else out + bias[:, None, None, None]


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs as batched 2D convolutions of depth slices on CPU."""

    def forward(self, x: Tensor) -> Tensor:
        """Convolve x (B, C, D, H, W)."""
        padding = self.padding
        plain = (
            x.device.type != "cpu"
            or self.groups != 1
            or self.dilation != (1, 1, 1)
            or self.padding_mode != "zeros"
        )
        if plain or isinstance(padding, str):
            return super().forward(x)
        return conv3d_by_slices(x, self.weight, self.bias, self.stride, padding)
