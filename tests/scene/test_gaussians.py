"""Gaussian scenes: the 3DGS PLY layout, initialisation, spherical harmonics."""

import math

import numpy as np
import pytest
import torch

from viewdiff.ply import read_ply, write_ply
from viewdiff.scene.gaussians import (
    GaussianScene,
    nearest_neighbour_sq_distances,
    random_scene,
    read_gaussian_ply,
    read_point_cloud,
    write_gaussian_ply,
)
from viewdiff.scene.sh import SH_C0, eval_sh, num_sh_bases, sh0_to_rgb, sh_bases

# The original code's construct_list_of_attributes() for SH degree 1 (9 f_rest values).
DEGREE_1_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(9)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_round_trip_is_exact(tmp_path, sh_degree):
    scene = random_scene(50, sh_degree=sh_degree, generator=torch.Generator().manual_seed(0))
    write_gaussian_ply(tmp_path / "scene.ply", scene)
    back = read_gaussian_ply(tmp_path / "scene.ply")
    assert back.sh_degree == sh_degree
    for name, value in scene.tensors().items():
        assert torch.equal(getattr(back, name), value), name


def test_ply_has_the_3dgs_property_order_and_channel_major_f_rest(tmp_path):
    scene = random_scene(3, sh_degree=1, generator=torch.Generator().manual_seed(1))
    write_gaussian_ply(tmp_path / "scene.ply", scene)
    columns = read_ply(tmp_path / "scene.ply")
    assert list(columns) == DEGREE_1_PROPERTIES
    assert all(values.dtype == np.float32 for values in columns.values())
    # f_rest_{c * 3 + k} is SH coefficient k + 1 of colour channel c (all red first).
    for channel in range(3):
        for k in range(3):
            expected = scene.f_rest[:, k, channel].numpy()
            assert np.array_equal(columns[f"f_rest_{channel * 3 + k}"], expected)
    assert np.array_equal(columns["rot_0"], scene.quats[:, 0].numpy())  # w first
    assert np.array_equal(columns["opacity"], scene.opacity_logits.numpy())  # before sigmoid


def test_ply_from_another_tool_loads_in_any_property_order_without_normals(tmp_path):
    scene = random_scene(4, sh_degree=1, generator=torch.Generator().manual_seed(2))
    write_gaussian_ply(tmp_path / "ours.ply", scene)
    columns = read_ply(tmp_path / "ours.ply")
    shuffled = {name: columns[name] for name in reversed(DEGREE_1_PROPERTIES) if name[0] != "n"}
    write_ply(tmp_path / "theirs.ply", shuffled)
    back = read_gaussian_ply(tmp_path / "theirs.ply")
    for name, value in scene.tensors().items():
        assert torch.equal(getattr(back, name), value), name


def test_ply_with_missing_properties_names_them(tmp_path):
    scene = random_scene(2, sh_degree=0, generator=torch.Generator().manual_seed(3))
    write_gaussian_ply(tmp_path / "full.ply", scene)
    columns = read_ply(tmp_path / "full.ply")
    del columns["opacity"], columns["rot_3"]
    write_ply(tmp_path / "partial.ply", columns)
    with pytest.raises(ValueError, match=r"partial.ply.*missing properties \['opacity', 'rot_3'\]"):
        read_gaussian_ply(tmp_path / "partial.ply")


def test_ply_with_a_wrong_number_of_sh_coefficients_fails(tmp_path):
    scene = random_scene(2, sh_degree=0, generator=torch.Generator().manual_seed(4))
    write_gaussian_ply(tmp_path / "full.ply", scene)
    columns = read_ply(tmp_path / "full.ply")
    columns.update({f"f_rest_{i}": columns["x"] for i in range(6)})  # 2 per channel: no degree
    write_ply(tmp_path / "odd.ply", columns)
    with pytest.raises(ValueError, match="6 f_rest properties match no SH degree"):
        read_gaussian_ply(tmp_path / "odd.ply")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_ply_with_nan_or_inf_names_the_property(tmp_path, value):
    scene = random_scene(3, sh_degree=0, generator=torch.Generator().manual_seed(5))
    write_gaussian_ply(tmp_path / "full.ply", scene)
    columns = read_ply(tmp_path / "full.ply")
    columns["scale_1"][2] = value
    write_ply(tmp_path / "bad.ply", columns)
    with pytest.raises(ValueError, match=r"bad.ply: property 'scale_1' is NaN or inf in 1 of 3"):
        read_gaussian_ply(tmp_path / "bad.ply")


def test_ply_without_gaussians_is_refused(tmp_path):
    scene = random_scene(2, sh_degree=0, generator=torch.Generator().manual_seed(6))
    write_gaussian_ply(tmp_path / "full.ply", scene)
    columns = {name: values[:0] for name, values in read_ply(tmp_path / "full.ply").items()}
    write_ply(tmp_path / "empty.ply", columns)
    with pytest.raises(ValueError, match="empty.ply: the scene has no Gaussians"):
        read_gaussian_ply(tmp_path / "empty.ply")


def test_scene_checks_shapes():
    scene = random_scene(3, sh_degree=1)
    with pytest.raises(ValueError, match=r"GaussianScene.quats: expected shape \(3, 4\)"):
        GaussianScene(**{**scene.tensors(), "quats": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="GaussianScene.f_rest"):
        GaussianScene(**{**scene.tensors(), "f_rest": torch.zeros(3, 2, 3)})


def test_initialisation_from_a_colored_point_cloud_follows_3dgs(tmp_path):
    # A CO3D-style point cloud: float xyz and 8-bit colours, points on a 0.1 grid.
    axis = torch.arange(5) * 0.1
    points = torch.cartesian_prod(axis, axis, axis).float()
    colors = torch.randint(0, 256, (len(points), 3), generator=torch.Generator().manual_seed(0))
    write_ply(
        tmp_path / "pointcloud.ply",
        {
            **{c: points[:, i].numpy() for i, c in enumerate("xyz")},
            **{
                c: colors[:, i].numpy().astype(np.uint8)
                for i, c in enumerate(["red", "green", "blue"])
            },
        },
    )
    loaded, rgb = read_point_cloud(tmp_path / "pointcloud.ply")
    scene = GaussianScene.from_points(loaded, rgb, sh_degree=2)
    assert scene.num_gaussians == 125 and scene.sh_degree == 2
    # Every grid point has (at least) 3 neighbours at 0.1: scale = sqrt(mean d^2) = 0.1.
    torch.testing.assert_close(scene.scales(), torch.full((125, 3), 0.1), rtol=1e-4, atol=0)
    torch.testing.assert_close(scene.opacities(), torch.full((125,), 0.1))
    torch.testing.assert_close(sh0_to_rgb(scene.f_dc), colors.float() / 255)
    assert torch.equal(scene.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(125, 4))


def test_random_initialisation_lies_in_the_sphere_and_is_seeded():
    first = GaussianScene.random_in_sphere(300, 0.8, generator=torch.Generator().manual_seed(5))
    again = GaussianScene.random_in_sphere(300, 0.8, generator=torch.Generator().manual_seed(5))
    assert first.means.norm(dim=-1).max() <= 0.8 + 1e-6
    assert torch.equal(first.means, again.means) and first.sh_degree == 3
    # Uniform in the ball: half the points lie within 0.8 / 2^(1/3).
    inner = (first.means.norm(dim=-1) < 0.8 / 2 ** (1 / 3)).float().mean()
    assert abs(inner.item() - 0.5) < 0.1


def test_nearest_neighbours_are_the_brute_force_ones():
    generator = torch.Generator().manual_seed(6)
    points = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    points[1] = points[0]  # a duplicate: its nearest neighbour is at distance 0
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    brute_force = distances.square().topk(4, dim=1, largest=False).values[:, 1:].mean(dim=1)
    found = nearest_neighbour_sq_distances(points)
    assert found.dtype == torch.float64 and found.shape == (500,)
    torch.testing.assert_close(found, brute_force, rtol=0, atol=1e-6)
    others = distances[0, 2:].square().topk(2, largest=False).values
    torch.testing.assert_close(found[:2], (0 + others.sum()).expand(2) / 3, rtol=0, atol=1e-12)
    # float32 in, float32 out; with 2 points the one neighbour there is.
    pair = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    assert torch.equal(nearest_neighbour_sq_distances(pair), torch.tensor([25.0, 25.0]))


def test_sh_basis_is_orthonormal_with_3dgs_signs():
    # Fibonacci sphere: nearly uniform directions, so (4 pi / M) sum Y_i Y_j ~ delta_ij.
    m = 20000
    i = torch.arange(m, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / m
    phi = math.pi * (1 + 5**0.5) * i
    dirs = torch.stack([(1 - z * z).sqrt() * phi.cos(), (1 - z * z).sqrt() * phi.sin(), z], -1)
    bases = sh_bases(3, dirs)
    gram = 4 * math.pi / m * bases.T @ bases
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    # Signs of the original's eval_sh: Y1 = -C1 y, Y3 = -C1 x, Y6 ~ 3z^2 - 1 at +z.
    up, right = torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0])
    assert sh_bases(1, right)[3] < 0 and sh_bases(1, up)[2] > 0
    assert sh_bases(2, up)[6] == pytest.approx(2 * 0.31539156525252005)


def test_eval_sh_colour_of_the_dc_term_and_the_clamp():
    coeffs = torch.zeros(2, num_sh_bases(1), 3)
    coeffs[0, 0] = torch.tensor([0.2, -0.1, 0.0]) / SH_C0
    coeffs[1, 0] = -1.0 / SH_C0  # far below 0: clamped
    colours = eval_sh(1, coeffs, torch.randn(2, 3))
    torch.testing.assert_close(colours[0], torch.tensor([0.7, 0.4, 0.5]))
    assert torch.equal(colours[1], torch.zeros(3))
    with pytest.raises(ValueError, match="SH degree 2 needs 9 coefficients"):
        eval_sh(2, coeffs, torch.randn(2, 3))
