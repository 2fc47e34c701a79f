"""The volume renderer's field: the rays its direction encoder sees, and its initialisation."""

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import ConfigError, ModelConfig
from viewdiff.model import MultiViewUNet
from viewdiff.model.projection import ProjectionLayer
from viewdiff.model.volume_render import OPACITY_INIT_BIAS, VolumeRenderer
from viewdiff.tiny import build_unet, unet_config

HEIGHT, WIDTH = 5, 7  # a feature map that is not square, to catch u/v mix-ups


def reference_rays(K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """The reference's rays (its get_rays_for_view): R^T K^-1 (u, v, 1), u = 0..W-1 and
    v = 0..H-1 row by row, never normalised. K (N, 3, 3), w2c (N, 4, 4) -> (N, H*W, 3)."""
    v, u = torch.meshgrid(torch.arange(float(HEIGHT)), torch.arange(float(WIDTH)), indexing="ij")
    pixels = torch.stack([u.flatten(), v.flatten(), torch.ones(HEIGHT * WIDTH)])  # (3, H*W)
    rays = w2c[:, :3, :3].transpose(1, 2) @ torch.linalg.inv(K) @ pixels  # (N, 3, H*W)
    return rays.transpose(1, 2)


def encoder_inputs(renderer: VolumeRenderer, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """What the ray encoder sees (1, R, 3) when the renderer renders a grid into views K, w2c."""
    seen = []
    hook = renderer.ray_encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    grid = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    renderer(grid, K[None], w2c[None], HEIGHT, WIDTH)
    hook.remove()
    (inputs,) = seen
    return inputs


@pytest.mark.parametrize("background", [False, True])
def test_the_ray_encoder_sees_the_references_rays_unnormalised_or_unit_vectors(background):
    views = 3
    K = intrinsics_from_fov(60.0, HEIGHT, WIDTH).expand(views, 3, 3)
    w2c = orbit(views, elevation_deg=30.0, radius=3.0)
    expected = reference_rays(K, w2c).reshape(1, views * HEIGHT * WIDTH, 3)
    unnormalised = VolumeRenderer(8, 4, background, ray_directions="unnormalised")
    seen = encoder_inputs(unnormalised, K, w2c)
    torch.testing.assert_close(seen, expected)
    # Unit camera depth: longer than 1 off the optical axis (the corner rays here by ~16%).
    assert seen.norm(dim=-1).amin() >= 1.0 - 1e-6 and seen.norm(dim=-1).amax() > 1.15
    normalised = VolumeRenderer(8, 4, background, ray_directions="normalised")
    torch.testing.assert_close(encoder_inputs(normalised, K, w2c), F.normalize(expected, dim=-1))


def test_the_normalised_field_is_the_one_the_shipped_models_were_trained_with():
    torch.manual_seed(0)
    renderer = VolumeRenderer(8, 4, False, ray_directions="normalised")
    features, directions = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 3) * 3
    density, feature = renderer.field(features, directions)
    hidden = renderer.hidden(features)
    ray = renderer.ray_encoder(F.normalize(directions, dim=-1))[:, :, None, :]
    expected = torch.sigmoid(renderer.feature(F.relu(renderer.feature_hidden(hidden) + ray)))
    torch.testing.assert_close(feature, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        density, F.softplus(renderer.density(hidden)[..., 0]), rtol=0, atol=0
    )


def assert_uniform(weight: torch.Tensor, bound: float, name: str) -> None:
    """Within +-bound and spread over it (a draw from U(-bound, bound), not a narrower one)."""
    largest = weight.abs().amax().item()
    assert 0.9 * bound < largest <= bound, (name, largest, bound)


@pytest.mark.parametrize("channels", [8, 64])
def test_a_new_renderer_is_initialised_as_the_references(channels):
    torch.manual_seed(0)
    renderer = VolumeRenderer(channels, 4, True)
    xavier = math.sqrt(6.0 / (2 * channels))
    for name in ("hidden.0", "hidden.2", "feature_hidden"):  # fastplane's mlp_weights[0..2]
        layer = renderer.get_submodule(name)
        assert_uniform(layer.weight, xavier, name)
        assert not layer.bias.any(), name
    assert_uniform(renderer.density.weight, 1.0 / math.sqrt(channels), "density")
    assert renderer.density.bias.item() == OPACITY_INIT_BIAS == -5.0
    # Xavier of the reference's feature matrix, padded to at least 16 outputs by its kernel.
    assert_uniform(renderer.feature.weight, math.sqrt(6.0 / (channels + max(channels, 16))), "f")
    assert not renderer.feature.bias.any()
    assert_uniform(renderer.ray_encoder.weight, math.sqrt(6.0 / (3 + channels)), "ray_encoder")
    assert not renderer.ray_encoder.bias.any()


def test_ray_directions_reach_every_renderer_and_bad_values_are_refused():
    unet = build_unet(unet_config("tiny"), seed=0)
    base = dict(pretrained_model="tiny", projection_channels=8, voxel_grid_size=8)
    for mode in ("unnormalised", "normalised"):
        model = MultiViewUNet(copy.deepcopy(unet), ModelConfig(**base, ray_directions=mode))
        modes = {layer.renderer.ray_directions for layer in model.projection_layers.values()}
        assert len(model.projection_layers) > 0 and modes == {mode}
    assert ProjectionLayer(12, 8, 8, 8, True, 16).renderer.ray_directions == "unnormalised"
    with pytest.raises(ValueError, match="model.ray_directions must be"):
        VolumeRenderer(8, 4, True, ray_directions="unit")  # type: ignore[arg-type]


def test_the_opacity_init_bias_reaches_every_new_renderer_and_must_be_finite():
    unet = build_unet(unet_config("tiny"), seed=0)
    config = ModelConfig(pretrained_model="tiny", projection_channels=8, voxel_grid_size=8,
                         opacity_init_bias=-1.0)  # fmt: skip
    model = MultiViewUNet(copy.deepcopy(unet), config)
    biases = {layer.renderer.density.bias.item() for layer in model.projection_layers.values()}
    assert len(model.projection_layers) > 0 and biases == {-1.0}
    with pytest.raises(ValueError, match="model.opacity_init_bias must be finite"):
        VolumeRenderer(8, 4, True, opacity_init_bias=math.nan)
    with pytest.raises(ConfigError, match="model.opacity_init_bias must be finite"):
        ModelConfig(pretrained_model="tiny", opacity_init_bias=math.inf).check()
