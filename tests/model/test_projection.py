"""The projection layer: grid geometry, unprojection, rendering, and the layer as a whole."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from viewdiff.cameras.conventions import pixel_rays, project, resize_intrinsics
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.model.aggregate import (
    AddSharedELU,
    IBRNetAggregator,
    mean_var_by_autograd,
    weighted_mean_var,
)
from viewdiff.model.conv3d import Conv3d
from viewdiff.model.projection import ProjectionLayer
from viewdiff.model.volume_render import box_ray_bounds, composite, render_grid
from viewdiff.model.voxel_grid import (
    contract,
    grid_world_points,
    uncontract,
    unproject,
    voxel_centres,
)

SIZE = 16  # feature maps of SIZE x SIZE pixels


def cameras(n_views: int = 3, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """K (N, 3, 3), w2c (N, 4, 4): an orbit around the object box, radius 3."""
    w2c = orbit(n_views, elevation_deg=20.0, radius=3.0)
    return intrinsics_from_fov(50.0, size, size).expand(n_views, 3, 3), w2c


def test_voxel_centres_are_at_half_voxel_offsets():
    centres = voxel_centres(4, torch.float32, "cpu")
    assert centres.shape == (64, 3)
    torch.testing.assert_close(centres[0], torch.tensor([-0.75, -0.75, -0.75]))
    torch.testing.assert_close(centres[1], torch.tensor([-0.25, -0.75, -0.75]))  # x fastest
    torch.testing.assert_close(centres[4 * 4], torch.tensor([-0.75, -0.75, -0.25]))  # z slowest


def test_contraction_keeps_the_box_and_inverts():
    inside = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(contract(inside), inside * 0.5)
    outside = torch.randn(100, 3) * 10
    contracted = contract(outside)
    assert contracted.abs().amax() < 1.0
    torch.testing.assert_close(uncontract(contracted), outside, rtol=1e-4, atol=1e-4)
    # Every usable voxel of the background grid maps back onto itself.
    points, usable = grid_world_points(8, background=True, dtype=torch.float64, device="cpu")
    centres = voxel_centres(8, torch.float64, "cpu")
    torch.testing.assert_close(contract(points[usable]), centres[usable])
    assert 0 < usable.sum() < usable.numel()  # corners beyond two faces hold nothing


def test_unprojection_puts_pixels_on_their_rays():
    K, w2c = cameras(1)
    features = torch.zeros(1, 1, 1, SIZE, SIZE)
    features[..., 5, 9] = 1.0  # pixel (u=9, v=5)
    origins, directions = pixel_rays(K, w2c, SIZE, SIZE, normalize=False)
    on_ray = origins[0, 5, 9] + torch.tensor([2.5, 3.0, 3.5])[:, None] * directions[0, 5, 9]
    behind = origins[0, 5, 9] - directions[0, 5, 9]
    points = torch.cat([on_ray, behind[None]])
    sampled, valid, depth, view_dirs = unproject(features, K[None], w2c[None], points)
    assert sampled.shape == (1, 1, 1, 4) and view_dirs.shape == (3, 1, 1, 4)  # channels first
    torch.testing.assert_close(sampled[0, 0, 0, :3], torch.ones(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(depth[0, 0, 0, :3], torch.tensor([2.5, 3.0, 3.5]))
    assert valid[0, 0, 0, :3].all() and not valid[0, 0, 0, 3] and sampled[0, 0, 0, 3] == 0
    torch.testing.assert_close(
        view_dirs[:, 0, 0, 0], torch.nn.functional.normalize(directions[0, 5, 9], dim=0)
    )


def test_compositing_matches_the_closed_form():
    depths = torch.linspace(1.0, 3.0, 64)
    density, delta = 0.7, depths[1] - depths[0]
    features = torch.full((64, 2), 0.25)
    rendered, opacity, _ = composite(torch.full((64,), density), features, depths)
    expected = 1 - torch.exp(-density * delta * 64)  # 64 intervals of delta (the first repeats)
    torch.testing.assert_close(opacity, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rendered, 0.25 * expected.expand(2), rtol=1e-4, atol=1e-5)
    empty, zero, _ = composite(torch.zeros(64), features, depths)
    assert zero == 0 and empty.abs().amax() == 0


def test_rays_enter_and_leave_the_box():
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 5.0, -3.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = box_ray_bounds(origins, directions)
    torch.testing.assert_close(near[0], torch.tensor(2.0))
    torch.testing.assert_close(far[0], torch.tensor(4.0))
    assert far[1] == near[1]  # a miss: empty interval


def fixed_field(threshold: float):
    """Identity features, density only where the aggregated feature exceeds ``threshold``."""

    def field(features, directions):
        return 200.0 * torch.relu(features[..., 0] - threshold), features

    return field


def lift_and_render(features, K, w2c, used_views, threshold, grid_size=32):
    """unproject -> weighted mean over the used views -> render into every view (fixed weights)."""
    points, _ = grid_world_points(grid_size, background=False, dtype=torch.float32, device="cpu")
    sampled, valid, _, _ = unproject(features[None], K[None], w2c[None], points)
    weights = valid * used_views[:, None]  # (1, 1, N, P)
    grid, _ = weighted_mean_var(sampled, weights, dim=2)  # (C, 1, 1, P)
    grid = grid.reshape(1, -1, grid_size, grid_size, grid_size)
    origins, directions = pixel_rays(K, w2c, SIZE, SIZE, normalize=False)
    rendered, opacity, _ = render_grid(
        grid,
        origins.reshape(1, -1, 3),
        directions.reshape(1, -1, 3),
        96,
        False,
        fixed_field(threshold),
    )
    return rendered.reshape(len(K), SIZE, SIZE, -1), opacity.reshape(len(K), SIZE, SIZE)


def blob_at(uv: torch.Tensor) -> torch.Tensor:
    """A (1, SIZE, SIZE) feature map with a 3x3 blob of ones around pixel uv."""
    image = torch.zeros(1, SIZE, SIZE)
    u, v = uv.round().long().tolist()
    image[:, v - 1 : v + 2, u - 1 : u + 2] = 1.0
    return image


def test_a_point_seen_in_one_view_renders_at_its_projection_in_another():
    K, w2c = cameras(3)
    point = torch.tensor([[0.3, -0.2, 0.25]])
    uv = project(point, K, w2c)[0][:, 0]  # (N, 2)
    features = torch.stack([blob_at(uv[0]), torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE)])
    # Only view 0 is lifted: its pixel's ray is filled; view 2 sees that ray as its epipolar line,
    # which passes through the point's projection.
    _, opacity = lift_and_render(features, K, w2c, torch.tensor([1.0, 0.0, 0.0]), threshold=0.5)
    u, v = uv[2].round().long().tolist()
    assert opacity[2, v, u] > 0.5
    assert opacity[2].amin() < 1e-3  # not everything is covered


def test_two_views_localise_the_point_in_a_third():
    K, w2c = cameras(3)
    point = torch.tensor([[0.3, -0.2, 0.25]])
    uv = project(point, K, w2c)[0][:, 0]
    features = torch.stack([blob_at(uv[0]), blob_at(uv[1]), torch.zeros(1, SIZE, SIZE)])
    # Mean over views 0 and 1: only where both blobs' rays meet (around the point) is it ~1.
    rendered, opacity = lift_and_render(
        features, K, w2c, torch.tensor([1.0, 1.0, 0.0]), threshold=0.75
    )
    v, u = divmod(int(opacity[2].argmax()), SIZE)
    assert abs(u - uv[2, 0].item()) <= 1.0 and abs(v - uv[2, 1].item()) <= 1.0
    assert rendered[2, v, u, 0] > 0.5
    far_away = torch.ones(SIZE, SIZE, dtype=torch.bool)
    ui, vi = uv[2].round().long().tolist()
    far_away[max(vi - 3, 0) : vi + 4, max(ui - 3, 0) : ui + 4] = False
    assert opacity[2][far_away].amax() < 0.05


def make_layer(
    background: bool = True, checkpointing: bool = False, seed: int = 0, density_noise: float = 0.0
) -> ProjectionLayer:
    torch.manual_seed(seed)
    return ProjectionLayer(
        channels=12,
        grid_channels=8,
        grid_size=8,
        num_samples=8,
        background=background,
        temb_dim=16,
        checkpointing=checkpointing,
        density_noise=density_noise,
    )


def layer_inputs(objects: int = 2, n_views: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    K, w2c = cameras(n_views, size=64)
    rows = objects * n_views
    return dict(
        features=torch.randn(rows, 12, 8, 8, generator=generator),
        K=K.repeat(objects, 1, 1),
        w2c=w2c.repeat(objects, 1, 1),
        image_size_hw=(64, 64),
        temb=torch.randn(rows, 16, generator=generator),
        timesteps=torch.randint(0, 1000, (rows,), generator=generator),
        n_views=n_views,
    )


def activate(layer: ProjectionLayer) -> None:
    """Perturb the zero-initialised output layer and fill the almost empty grid, so that the
    layer's output depends on its input."""
    torch.manual_seed(5)
    torch.nn.init.normal_(layer.expand[-1].weight, std=0.5)
    torch.nn.init.normal_(layer.expand[-1].bias, std=0.5)
    torch.nn.init.constant_(layer.renderer.density.bias, 0.0)


@pytest.mark.parametrize("background", [True, False])
def test_layer_contributes_zero_at_initialisation(background):
    layer, inputs = make_layer(background), layer_inputs()
    out = layer(**inputs)
    assert out.shape == inputs["features"].shape and out.abs().amax() == 0
    activate(layer)
    assert layer(**inputs).abs().amax() > 1e-3


def test_layer_is_equivariant_to_view_order_and_keeps_objects_apart():
    layer, inputs = make_layer(), layer_inputs()
    activate(layer)
    out = layer(**inputs)
    order = torch.tensor([2, 0, 1, 3, 5, 4])  # permute the views within each object
    permuted = {k: v[order] if torch.is_tensor(v) else v for k, v in inputs.items()}
    torch.testing.assert_close(layer(**permuted), out[order], rtol=1e-5, atol=1e-5)
    changed = dict(inputs, features=inputs["features"].clone())
    changed["features"][3:] += torch.randn(3, 12, 8, 8)  # the second object
    out_changed = layer(**changed)
    torch.testing.assert_close(out_changed[:3], out[:3], rtol=0, atol=0)
    assert (out_changed[3:] - out[3:]).abs().amax() > 1e-4


def test_views_left_out_of_the_grid_do_not_shape_it():
    layer, inputs = make_layer(), layer_inputs()
    activate(layer)
    unprojected = torch.tensor([True, True, False, True, True, False])  # the last view of each
    out = layer(**inputs, unprojected=unprojected)
    changed = dict(inputs, features=inputs["features"].clone())
    changed["features"][[2, 5]] = torch.randn(2, 12, 8, 8)
    torch.testing.assert_close(layer(**changed, unprojected=unprojected), out, rtol=0, atol=1e-6)
    changed["features"][0] += torch.randn(12, 8, 8)  # a lifted view does shape it
    assert (layer(**changed, unprojected=unprojected) - out).abs().amax() > 1e-4


def test_activation_checkpointing_gives_the_same_gradients():
    plain, checkpointed = make_layer(), make_layer(checkpointing=True)
    activate(plain)
    activate(checkpointed)
    inputs = layer_inputs(objects=1)
    for layer in (plain, checkpointed):
        layer(**inputs).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_layer_runs_in_bfloat16_with_float32_geometry():
    layer = make_layer()
    activate(layer)
    layer = layer.to(torch.bfloat16)
    inputs = layer_inputs(objects=1)
    inputs.update(features=inputs["features"].bfloat16(), temb=inputs["temb"].bfloat16())
    out = layer(**inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="voxel_grid_size must be even"):
        ProjectionLayer(12, 8, 7, 8, True, 16)
    with pytest.raises(ValueError, match="render_samples"):
        ProjectionLayer(12, 8, 8, 1, True, 16)
    with pytest.raises(ValueError, match="not whole objects of 4 views"):
        make_layer()(**dict(layer_inputs(), n_views=4))
    with pytest.raises(ValueError, match="density_noise must be >= 0"):
        make_layer(density_noise=-1.0)


# The fast path (usable voxels only, base_fc's shared half once per voxel, 3D convolutions as
# batched 2D ones on CPU) against the dense path it replaced.


def test_mean_var_backward_is_the_derivative():
    torch.manual_seed(0)
    features = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: weighted_mean_var(f, w, 2), (features, weights))
    # Voxels no view sees (all weights zero; finite differences cannot step there): as autograd.
    unseen = weights.detach().clone()
    unseen[:, 0, :, 1] = 0.0
    unseen.requires_grad_()
    grads = [torch.randn(3, 2, 1, 5, dtype=torch.float64) for _ in range(2)]
    got = torch.autograd.grad(weighted_mean_var(features, unseen, 2), [features, unseen], grads)
    want = torch.autograd.grad(mean_var_by_autograd(features, unseen, 2), [features, unseen], grads)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_add_shared_elu_backward_is_the_derivative():
    torch.manual_seed(0)
    x = torch.randn(3, 2 * 4 * 5, dtype=torch.float64, requires_grad=True)
    shared = torch.randn(3, 2, 1, 5, dtype=torch.float64, requires_grad=True)

    def fused(x, shared):
        return AddSharedELU.apply(x.clone(), shared, 0.7)  # overwrites a fresh tensor

    assert torch.autograd.gradcheck(fused, (x, shared))
    expected = F.elu(x.reshape(3, 2, 4, 5) + shared, 0.7).reshape(3, -1)
    torch.testing.assert_close(fused(x, shared), expected)


def dense_aggregate(agg: IBRNetAggregator, features, valid, depth, directions, temb):
    """IBRNet aggregation as written first: channels last, every voxel, (mean, var) per view."""
    views = features.shape[1]
    features = features + agg.ray_depth_encoder(torch.cat([directions, depth], dim=-1))
    features = features + agg.temb_encoder(temb)[:, :, None, :]
    weight = valid / (valid.sum(dim=1, keepdim=True) + 1e-8)
    mean, var = mean_var_by_autograd(features, valid)
    global_features = torch.cat([mean, var], dim=-1).expand(-1, views, -1, -1)
    x = agg.base_fc(torch.cat([global_features, features], dim=-1))
    x_res, visibility = agg.vis_fc(x * weight).split([x.shape[-1], 1], dim=-1)
    visibility = torch.sigmoid(visibility) * valid
    x = x + x_res
    visibility = agg.vis_fc2(x * visibility) * valid
    mean, var = mean_var_by_autograd(x, visibility)
    weight = visibility / (visibility.sum(dim=1, keepdim=True) + 1e-8)
    return agg.statistics_out(torch.cat([mean[:, 0], var[:, 0], weight.mean(dim=1)], dim=-1))


def dense_layer(layer: ProjectionLayer, features, K, w2c, image_size_hw, temb, timesteps, n_views,
                unprojected=None):  # fmt: skip
    """The projection layer's forward as written first: all G^3 voxels, nn.Conv3d's kernels."""
    rows, _, height, width = features.shape
    objects = rows // n_views

    def per_object(x):
        return x.reshape(objects, n_views, *x.shape[1:])

    compressed = layer.compress(layer.norm(features))
    channels = compressed.shape[1]
    K = per_object(resize_intrinsics(K.float(), image_size_hw, (height, width)))
    w2c = per_object(w2c.float())
    points, usable = grid_world_points(layer.grid_size, layer.background, torch.float32, "cpu")
    lifted = unproject(per_object(compressed), K, w2c, points)
    sampled, valid, depth, directions = (x.permute(1, 2, 3, 0) for x in lifted)  # (B, N, P, C)
    valid = valid * usable[:, None].float()
    if unprojected is not None:
        valid = valid * per_object(unprojected.float())[:, :, None, None]
    grid = dense_aggregate(layer.aggregator, sampled * valid, valid, depth, directions,
                           per_object(temb))  # fmt: skip
    size = layer.grid_size
    grid = grid.transpose(1, 2).reshape(objects, channels, size, size, size)
    grid = layer.voxel_unet(grid, per_object(timesteps).amax(dim=1))
    rendered = layer.renderer(grid, K, w2c, height, width)
    return layer.expand(rendered.reshape(rows, channels + 1, height, width))


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("left_out", [False, True])
def test_fast_layer_equals_the_dense_one_with_gradients(background, left_out, monkeypatch):
    torch.manual_seed(0)
    layer = ProjectionLayer(12, 8, 8, 8, background, 16)
    activate(layer)
    inputs = layer_inputs(objects=2, n_views=3)
    inputs["features"].requires_grad_()
    if left_out:
        inputs["unprojected"] = torch.tensor([True, True, False, True, False, True])
    out = layer(**inputs)
    grads = torch.autograd.grad(out.square().sum(), [inputs["features"], *layer.parameters()])
    monkeypatch.setattr(Conv3d, "forward", nn.Conv3d.forward)  # ATen's own 3D convolution
    expected = dense_layer(layer, **inputs)
    expected_grads = torch.autograd.grad(
        expected.square().sum(), [inputs["features"], *layer.parameters()]
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    names = ["features"] + [name for name, _ in layer.named_parameters()]
    largest = max(want.abs().amax() for want in expected_grads)
    for name, got, want in zip(names, grads, expected_grads, strict=True):
        # float32 sums in another order: within 1e-4 of the gradient's largest entry, or 1e-8 of
        # the layer's largest gradient (gradients that are zero but for rounding, as a bias
        # before a GroupNorm's; the reference's renderer init scales them all 3-6x)
        error = (got - want).abs().amax()
        assert error <= 1e-4 * want.abs().amax() + 1e-8 * largest, (name, error)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(3, 1, 1), (3, 2, 1), (3, 2, 0), (5, 1, 1), (1, 1, 0), ((1, 3, 5), (2, 1, 2), (0, 1, 2))],
)
def test_conv3d_by_slices_equals_aten_conv3d(kernel, stride, padding):
    torch.manual_seed(0)
    conv = Conv3d(5, 7, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 5, 9, 8, 10, requires_grad=True)
    out = conv(x)
    expected = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, conv.bias])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight, conv.bias])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert nn.Conv3d(5, 7, 3).state_dict().keys() == conv.state_dict().keys()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_density_noise_only_in_training_mode_and_seeded():
    noisy, clean = make_layer(density_noise=1.0), make_layer()
    for layer in (noisy, clean):
        activate(layer)
    inputs = layer_inputs()
    reference = clean(**inputs)
    first = noisy(**inputs, noise_generator=seeded(1))
    torch.testing.assert_close(noisy(**inputs, noise_generator=seeded(1)), first, rtol=0, atol=0)
    assert (noisy(**inputs, noise_generator=seeded(2)) - first).abs().amax() > 1e-3
    assert (first - reference).abs().amax() > 1e-3
    noisy.eval()
    torch.testing.assert_close(noisy(**inputs, noise_generator=seeded(1)), reference)


def test_density_noise_is_added_before_the_softplus():
    renderer = make_layer().renderer
    features, directions = torch.randn(2, 5, 16, 8), torch.randn(2, 5, 3)
    noise = torch.randn(2, 5, 16)
    density, feature = renderer.field(features, directions, noise)
    pre = renderer.density(renderer.hidden(features))[..., 0]
    torch.testing.assert_close(density, F.softplus(pre + noise))
    torch.testing.assert_close(feature, renderer.field(features, directions)[1])
    with pytest.raises(ValueError, match="density_noise has shape"):
        K, w2c = cameras(2)
        grid = torch.randn(1, 8, 8, 8, 8)
        renderer(grid, K[None], w2c[None], 4, 4, torch.zeros(1, 32, 3))


def test_density_noise_under_checkpointing_gives_the_same_gradients():
    plain = make_layer(density_noise=1.0)
    checkpointed = make_layer(checkpointing=True, density_noise=1.0)
    inputs = layer_inputs(objects=1)
    for layer in (plain, checkpointed):
        activate(layer)
        layer(**inputs, noise_generator=seeded(3)).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("voxel_unet", ["reference", "compact"])
def test_layer_with_each_voxel_unet_runs_forward_and_backward(voxel_unet):
    torch.manual_seed(0)
    layer = ProjectionLayer(12, 8, 8, 8, background=True, temb_dim=16, voxel_unet=voxel_unet)
    activate(layer)
    inputs = layer_inputs()
    inputs["features"].requires_grad_()
    out = layer(**inputs)
    assert out.shape == inputs["features"].shape and out.abs().amax() > 1e-3
    out.square().sum().backward()
    assert inputs["features"].grad.abs().amax() > 0
    for name, p in layer.voxel_unet.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
    with pytest.raises(ValueError, match="model.voxel_unet"):
        ProjectionLayer(12, 8, 8, 8, background=True, temb_dim=16, voxel_unet="wide")
