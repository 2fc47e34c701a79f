"""The projection layer's 3D UNets (``model.voxel_unet``): the reference's, and the compact one.

``fixtures/reference_unet3d.safetensors`` holds the reference's own output: its ``UNet3DModel``
(``/tmp/ref/viewdiff/model/custom_unet_3d.py``, built with the arguments of
``model/projection/layer.py:74-88`` at num_3d_layers=5, dim_3d_latent=16) given the weights of
``closed_form_weights`` and a random grid, in float64, written by
``fixtures/make_reference_unet3d.py`` (run it with a checkout of the reference; it imports the
reference's module, nothing of it is copied here). The fixture also records the names and shapes
of the reference's state dict.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from viewdiff.config import ModelConfig
from viewdiff.model import MultiViewUNet
from viewdiff.model.voxel_unet import UNet3D, UNet3DResnet, VoxelUNet, make_voxel_unet
from viewdiff.tiny import build_unet, unet_config

FIXTURE = Path(__file__).parent / "fixtures" / "reference_unet3d.safetensors"


def closed_form_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights without a random generator (the same on every machine and torch version): a sine
    wave per tensor, its phase the tensor's rank in the sorted state-dict names, scaled by
    1/sqrt(fan in) for matrices and kernels."""
    weights = {}
    for index, (name, tensor) in enumerate(sorted(model.state_dict().items())):
        wave = torch.sin(0.7 * torch.arange(tensor.numel(), dtype=torch.float64) + index)
        fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
        weights[name] = (wave / math.sqrt(fan_in)).reshape(tensor.shape)
    return weights


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_reference_unet_has_the_reference_parameter_count():
    # The reference's UNet3DModel at dim_3d_latent=16 (custom_unet_3d.py; layer.py:74-88),
    # counted from its code: time embedding 16 -> 64 -> 64, every conv with a bias, a resnet
    # = norm1, conv1 3^3, time_emb_proj, norm2, conv2 3^3, a 1x1 conv_shortcut if i != o.
    def conv(i: int, o: int, k: int = 3) -> int:
        return i * o * k**3 + o

    def resnet(i: int, o: int) -> int:
        return (
            2 * i
            + conv(i, o)
            + (64 * o + o)
            + 2 * o
            + conv(o, o)
            + (conv(i, o, 1) if i != o else 0)
        )

    time_embedding = (16 * 64 + 64) + (64 * 64 + 64)
    down = resnet(16, 16) + conv(16, 16) + resnet(16, 32)  # level 0 + its downsampler, level 1
    mid = resnet(32, 32)
    up = resnet(32 + 32, 32) + resnet(32 + 16, 32) + conv(32, 32)  # level 1 + its upsampler
    up += resnet(32 + 16, 16) + resnet(16 + 16, 16)  # level 0
    ends = conv(16, 16) + 2 * 16 + conv(16, 16)  # conv_in, conv_norm_out, conv_out
    reference = time_embedding + down + mid + up + ends
    assert reference == 382_944  # as counted on the reference's module itself, imported on CPU
    assert parameter_count(UNet3D(16)) == reference
    assert parameter_count(VoxelUNet(16)) == 287_520  # compact: 5 resnets, 2 skips


def test_the_reference_unet_has_the_reference_state_dict_names_and_shapes():
    with safe_open(FIXTURE, "pt") as f:
        reference = json.loads(f.metadata()["state_dict_shapes"])
    ours = {name: list(t.shape) for name, t in UNet3D(16).state_dict().items()}
    assert ours == reference


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_reference_unet_computes_what_the_reference_computes(dtype, atol):
    with safe_open(FIXTURE, "pt") as f:
        grid, timesteps, expected = (f.get_tensor(k) for k in ("grid", "timesteps", "output"))
    unet = UNet3D(16).to(dtype)
    unet.load_state_dict(closed_form_weights(unet))
    with torch.no_grad():
        out = unet(grid.to(dtype), timesteps)
    assert expected.abs().amax() > 1.0  # the comparison is not one of near-zero outputs
    torch.testing.assert_close(out.double(), expected, rtol=0.0, atol=atol)


def test_the_reference_unet_takes_four_skips_in_seven_resnets():
    unet = UNet3D(16)
    resnets = [m for m in unet.modules() if isinstance(m, UNet3DResnet)]
    assert len(resnets) == 7  # down 1 + 1, mid 1, up 2 + 2
    up = [r for block in unet.up_blocks for r in block.resnets]
    # channels in = previous output + the skip taken: 32+32, 32+16 | 32+16, 16+16
    assert [r.conv1.in_channels for r in up] == [64, 48, 48, 32]
    assert [r.conv1.out_channels for r in up] == [32, 32, 16, 16]
    norms = [m for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 15 and {(m.num_groups, m.eps) for m in norms} == {(16, 1e-5)}
    left = []  # the skips left at the entry of each up block, and at the end
    for block in unet.up_blocks:
        block.register_forward_pre_hook(lambda _, args: left.append(len(args[1])))
    unet.up_blocks[-1].register_forward_hook(lambda _, args, out: left.append(len(args[1])))
    unet(torch.randn(1, 16, 4, 4, 4), torch.tensor([10]))
    assert left == [4, 2, 0]  # conv_in, down 0's resnet and downsampling, down 1's resnet


@pytest.mark.parametrize("name", ["reference", "compact"])
def test_output_shape_and_timestep_dependence(name):
    torch.manual_seed(0)
    unet = make_voxel_unet(name, 8)
    grid = torch.randn(1, 8, 6, 6, 6).expand(3, -1, -1, -1, -1)
    with torch.no_grad():
        out = unet(grid, torch.tensor([5, 5, 900]))
    assert out.shape == (3, 8, 6, 6, 6)
    torch.testing.assert_close(out[0], out[1])
    if name == "reference":
        assert (out[0] - out[2]).abs().amax() > 1e-3
    else:
        # The compact UNet's GroupNorms have one channel per group (gcd(32, C) groups for C' = 8
        # or 16): norm2 removes the per-channel time shift added just before it, in every resnet.
        torch.testing.assert_close(out[0], out[2])
    with pytest.raises(ValueError, match="grid size"):
        unet(torch.randn(1, 8, 5, 5, 5), torch.tensor([5]))


def test_unknown_variants_and_channels_are_refused():
    with pytest.raises(ValueError, match="model.voxel_unet must be one of"):
        make_voxel_unet("wide", 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        UNet3D(48)  # GroupNorm(32, 48): the reference builds none either
    assert parameter_count(UNet3D(64)) > 0 and parameter_count(VoxelUNet(48)) > 0


def test_the_compact_unet_is_unchanged():
    # Recorded from VoxelUNet before the reference variant was added (seed-0 init, torch 2.13).
    torch.manual_seed(0)
    unet = VoxelUNet(8)
    grid = torch.randn(2, 8, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = unet(grid, torch.tensor([3, 700])).double()
    assert parameter_count(unet) == 72_208
    assert out.sum().item() == pytest.approx(-25.175477633834817, abs=1e-5)
    assert out.abs().sum().item() == pytest.approx(792.4485264910618, abs=1e-5)
    assert next(iter(unet.state_dict())) == "time_embedding.linear_1.weight"
    assert "up0.shortcut.weight" in unet.state_dict()  # the names the shipped toy prior has


@pytest.mark.parametrize("name,kind", [("reference", UNet3D), ("compact", VoxelUNet)])
def test_the_multiview_unet_builds_the_configured_variant(name, kind):
    config = ModelConfig(
        pretrained_model="tiny",
        pose_lora_rank=4,
        projection_channels=8,
        voxel_grid_size=8,
        render_samples=8,
        voxel_unet=name,
    )
    model = MultiViewUNet(build_unet(unet_config("tiny"), seed=0), config)
    assert model.projection_layers
    assert all(type(layer.voxel_unet) is kind for layer in model.projection_layers.values())
