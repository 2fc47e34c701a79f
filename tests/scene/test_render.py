"""The renderer: EWA projection, compositing rules, gradients, tiling, and the gsplat backend."""

import math
import runpy
import sys

import pytest
import torch

from viewdiff.cameras.conventions import project
from viewdiff.cameras.orbits import look_at
from viewdiff.scene.gaussians import GaussianScene, covariance_from, random_scene
from viewdiff.scene.rasterize import project_gaussians, rasterize
from viewdiff.scene.render import render
from viewdiff.scene.sh import rgb_to_sh0

F64 = torch.float64


def camera(dtype=F64):
    """An off-axis camera looking at the origin, with a principal point off the image centre."""
    K = torch.tensor([[90.0, 0, 50.3], [0, 95.0, 44.7], [0, 0, 1]], dtype=dtype)
    eye, up = torch.tensor([3.0, -2.0, 1.5], dtype=dtype), torch.tensor([0, 0, 1.0], dtype=dtype)
    return K, look_at(eye, torch.zeros(3, dtype=dtype), up)


def single_gaussian(opacity=0.5, dtype=F64) -> GaussianScene:
    """One white, anisotropic, rotated Gaussian near the origin."""
    return GaussianScene(
        means=torch.tensor([[0.1, -0.05, 0.08]], dtype=dtype),
        log_scales=torch.log(torch.tensor([[0.35, 0.08, 0.2]], dtype=dtype)),
        quats=torch.tensor([[0.9, 0.2, -0.3, 0.1]], dtype=dtype),
        opacity_logits=torch.tensor([math.log(opacity / (1 - opacity))], dtype=dtype),
        f_dc=rgb_to_sh0(torch.ones(1, 3, dtype=dtype)),
        f_rest=torch.zeros(1, 0, 3, dtype=dtype),
    )


def image_moments(weights):
    """Centre (2,) and covariance (2, 2) in pixels (x, y) of a weight image (H, W)."""
    height, width = weights.shape
    v, u = torch.meshgrid(
        torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij"
    )
    total = weights.sum()
    centre = torch.stack([(weights * u).sum(), (weights * v).sum()]) / total
    du, dv = u - centre[0], v - centre[1]
    cov = torch.stack(
        [(weights * du * du).sum(), (weights * du * dv).sum(), (weights * dv * dv).sum()]
    )
    return centre, torch.stack([cov[:2], cov[1:]]) / total


def test_single_gaussian_lands_where_the_analytic_projection_says():
    K, w2c = camera()
    scene = single_gaussian(opacity=0.5)
    out = render(scene, K, w2c, 120, 128)
    uv, depth = project(scene.means, K, w2c)
    centre, cov = image_moments(out.alpha[0])
    torch.testing.assert_close(out.means2d, uv)  # the renderer's own projection
    torch.testing.assert_close(centre, uv[0], atol=0.02, rtol=0)  # the footprint's centre
    # EWA: Sigma' = J Sigma J^T + 0.3 I, J the Jacobian of the camera's projection (here taken
    # by autograd through viewdiff.cameras.conventions.project, independently of the renderer).
    J = torch.autograd.functional.jacobian(lambda p: project(p[None], K, w2c)[0][0], scene.means[0])
    ewa = J @ covariance_from(scene.log_scales, scene.quats)[0] @ J.T + 0.3 * torch.eye(
        2, dtype=F64
    )
    # Alpha is cut where it drops below 1/255, at Mahalanobis radius R: the cut Gaussian's
    # second moments are those of the full one times c(R) (for a 2D Gaussian, in closed form).
    r2 = 2 * math.log(255 * 0.5)
    shrink = (1 - (1 + r2 / 2) * math.exp(-r2 / 2)) / (1 - math.exp(-r2 / 2))
    assert torch.linalg.eigvalsh(ewa).min() > 9.0  # big enough for pixel sums to be integrals
    torch.testing.assert_close(cov, shrink * ewa, atol=0.01 * ewa.abs().max().item(), rtol=0)
    # Peak alpha is the opacity; the expected depth of one Gaussian is its depth.
    assert out.alpha.max().item() == pytest.approx(0.5, abs=0.01)
    row, col = int(uv[0, 1].round()), int(uv[0, 0].round())
    assert out.depth[0, row, col].item() == pytest.approx(depth.item(), rel=1e-9)


def test_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(0)
    K = torch.tensor([[14.0, 0, 5.6], [0, 14.0, 4.3], [0, 0, 1]], dtype=F64)
    _, w2c = camera()
    n = 4
    params = [
        (torch.rand(n, 3, generator=generator, dtype=F64) - 0.5) * 0.6,  # means
        torch.log(0.15 + 0.2 * torch.rand(n, 3, generator=generator, dtype=F64)),  # log-scales
        torch.randn(n, 4, generator=generator, dtype=F64),  # quaternions
        torch.randn(n, generator=generator, dtype=F64),  # opacity logits
        0.5 * torch.randn(n, 3, generator=generator, dtype=F64),  # f_dc
        0.3 * torch.randn(n, 3, 3, generator=generator, dtype=F64),  # f_rest (degree 1)
    ]

    weights = [torch.randn(c, 10, 12, generator=generator, dtype=F64) for c in (3, 1, 1)]

    def loss(*tensors):
        """A random linear function of every output pixel: its gradient covers every input."""
        out = render(GaussianScene(*tensors), K, w2c, 10, 12, background=(0.2, 0.5, 0.9))
        images = (out.rgb, out.alpha, out.depth)
        return sum((w * image).sum() for w, image in zip(weights, images, strict=True))

    inputs = [p.requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def brute_force(scene, K, w2c, height, width):
    """Every Gaussian against every pixel in depth order, the 3DGS rules written out plainly."""
    opacities = scene.opacities()
    proj = project_gaussians(scene.means, scene.covariances(), opacities, K, w2c, width, height)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij"
    )
    colour = torch.zeros(height, width, 3, dtype=F64)
    transmittance = torch.ones(height, width, dtype=F64)
    done = torch.zeros(height, width, dtype=torch.bool)
    colours = torch.sigmoid(scene.f_dc)  # any per-Gaussian colour will do
    for i in torch.argsort(proj.depths).tolist():
        if not proj.visible[i]:
            continue
        dx, dy = u - proj.means2d[i, 0], v - proj.means2d[i, 1]
        a, b, c = proj.conics[i]
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = (opacities[i] * torch.exp(power)).clamp(max=0.99)
        alpha = torch.where(alpha < 1 / 255, 0.0, alpha)
        after = transmittance * (1 - alpha)
        done |= after < 1e-4
        blend = (~done) & (alpha > 0)
        colour += torch.where(blend[..., None], (alpha * transmittance)[..., None] * colours[i], 0)
        transmittance = torch.where(blend, after, transmittance)
    return colour, 1 - transmittance, proj, colours, done


def test_tiled_compositing_equals_brute_force_and_does_not_depend_on_tiling():
    # Many opaque Gaussians: pixels stop early (T < 1e-4), lists differ between tiles.
    scene = random_scene(150, half_size=0.5, generator=torch.Generator().manual_seed(1)).to(
        dtype=F64
    )
    scene.opacity_logits = scene.opacity_logits + 3.0
    scene.log_scales = scene.log_scales + math.log(2.5)
    K = torch.tensor([[60.0, 0, 18.2], [0, 60.0, 15.6], [0, 0, 1]], dtype=F64)
    _, w2c = camera()
    expected, expected_alpha, proj, colours, done = brute_force(scene, K, w2c, 33, 37)
    assert done.float().mean() > 0.3 and (expected_alpha < 0.5).any()  # early stops, and edges
    log_opacities = torch.nn.functional.logsigmoid(scene.opacity_logits)
    results = []
    for tile_size, segment, budget in [(8, 32, 1 << 22), (16, 5, 1 << 22), (4, 3, 500)]:
        means2d = proj.means2d.detach().requires_grad_(True)
        proj.means2d = means2d
        image, alpha = rasterize(
            proj,
            log_opacities,
            colours,
            37,
            33,
            tile_size=tile_size,
            segment=segment,
            budget=budget,
        )
        torch.testing.assert_close(image, expected, atol=1e-10, rtol=0)
        torch.testing.assert_close(alpha, expected_alpha, atol=1e-10, rtol=0)
        (image.sum() + alpha.square().sum()).backward()
        results.append(means2d.grad)
    # The last run recomputes its steps in the backward pass (budget exceeded): same gradients.
    torch.testing.assert_close(results[1], results[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(results[2], results[0], atol=1e-10, rtol=0)


def test_culling_keeps_gradients_finite_and_background_shows_through():
    K, w2c = camera(torch.float32)
    front = single_gaussian(0.9, torch.float32)
    behind = front.map(lambda t: t.clone())
    behind.means = torch.tensor([[6.0, -4.0, 3.0]])  # behind the camera at (3, -2, 1.5)
    scene = GaussianScene.cat([front, behind]).map(lambda t: t.requires_grad_(True))
    out = render(scene, K, w2c, 96, 112, background=(0.0, 0.25, 1.0))
    assert out.visible.tolist() == [True, False] and out.radii[1] == 0
    corner = out.rgb[:, 0, 0]
    torch.testing.assert_close(corner, torch.tensor([0.0, 0.25, 1.0]))
    assert out.alpha[0, 0, 0] == 0
    out.rgb.sum().backward()
    for name, tensor in scene.tensors().items():
        assert torch.isfinite(tensor.grad).all(), name
        assert tensor.grad[1].abs().sum() == 0, name  # the culled Gaussian gets no gradient
    grad = out.viewspace_grad()
    assert grad.shape == (2, 2) and grad[0].abs().sum() > 0


def test_bad_arguments_fail_clearly():
    K, w2c = camera(torch.float32)
    scene = single_gaussian(0.5, torch.float32)
    with pytest.raises(ValueError, match="render takes one camera"):
        render(scene, K[None], w2c, 8, 8)
    with pytest.raises(ValueError, match="sh_degree 2 outside the scene's 0..0"):
        render(scene, K, w2c, 8, 8, sh_degree=2)
    with pytest.raises(ValueError, match="unknown render backend 'optix'"):
        render(scene, K, w2c, 8, 8, backend="optix")
    with pytest.raises(ValueError, match="gsplat backend needs a scene on CUDA"):
        render(scene, K, w2c, 8, 8, backend="gsplat")
    with pytest.raises(ValueError, match="background must be one value or 3"):
        render(scene, K, w2c, 8, 8, background=(1.0, 0.0))


@pytest.mark.gpu
def test_torch_and_gsplat_backends_agree_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("gsplat")
    # Opacities below 0.95: gsplat clamps alpha at 0.999 where 3DGS (and ours) use 0.99.
    scene = random_scene(2000, sh_degree=3, generator=torch.Generator().manual_seed(0))
    scene.opacity_logits = scene.opacity_logits.clamp(max=math.log(0.9 / 0.1))
    scene = scene.to("cuda")
    K = torch.tensor([[150.0, 0, 63.5], [0, 150.0, 63.5], [0, 0, 1]], device="cuda")
    w2c = look_at(torch.tensor([2.5, -2.5, 1.5]), torch.zeros(3), torch.tensor([0, 0, 1.0])).cuda()
    outputs = [
        render(scene, K, w2c, 128, 128, background=0.3, backend=b) for b in ("torch", "gsplat")
    ]
    torch_out, gsplat_out = outputs
    assert gsplat_out.backend == "gsplat"
    assert (torch_out.rgb - gsplat_out.rgb).abs().mean() < 1e-3
    assert (torch_out.alpha - gsplat_out.alpha).abs().mean() < 1e-3
    torch.testing.assert_close(torch_out.means2d, gsplat_out.means2d, atol=1e-3, rtol=0)


def test_render_benchmark_prints_a_line_per_configuration(capsys, monkeypatch):
    argv = ["render.py", "--gaussians", "200", "--sizes", "32", "48", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("bench/render.py", run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("views/s" in line for line in lines[1:])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["render.py", "--gpu"])
    with pytest.raises(SystemExit):
        runpy.run_path("bench/render.py", run_name="__main__")
