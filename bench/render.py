"""Gaussian rendering speed: forward + backward time per view, by scene size and resolution.

    python bench/render.py          # CPU, torch backend: 1k/10k/100k Gaussians x 64/128/256 px
    python bench/render.py --gpu    # CUDA: the torch and gsplat backends side by side
    python bench/render.py --gpu --backends gsplat    # CUDA: one of them
    python bench/render.py --fit    # the 64 px fitting check of tests/scene/test_fit.py, timed

Scenes are random balls of Gaussians sized by their neighbours' distances (as 3DGS initialises
them) with opacity 0.5, seen from 4 units away with a 48 degree field of view. ``--json PATH``
also writes the grid's figures as JSON (bench/json_records.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.options import positive_int
from viewdiff.scene.fit import FitConfig, PosedViews, fit
from viewdiff.scene.gaussians import GaussianScene, random_scene
from viewdiff.scene.render import render

sys.path.insert(0, str(Path(__file__).resolve().parent))  # json_records, beside this file
from json_records import JsonRecords, add_json_option  # noqa: E402


def time_render(scene: GaussianScene, size: int, backend: str, repeats: int) -> tuple[float, float]:
    """Seconds per forward and per backward pass of one square view."""
    scene = scene.map(lambda t: t.detach().requires_grad_(True))
    device = scene.means.device
    K = intrinsics_from_fov(48.0, size, size).to(device)
    w2c = orbit(1, 30.0, 4.0)[0].to(device)
    forward = backward = 0.0
    for repeat in range(repeats + 1):  # the first pass warms up allocators and kernels
        sync(device)
        start = time.perf_counter()
        out = render(scene, K, w2c, size, size, background=1.0, backend=backend)
        sync(device)
        middle = time.perf_counter()
        (out.rgb.sum() + out.depth.mean()).backward()
        sync(device)
        if repeat > 0:
            forward += middle - start
            backward += time.perf_counter() - middle
    return forward / repeats, backward / repeats


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times are the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """GiB peak so far and what it is: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS"


def run_fit() -> None:
    """The acceptance fit of tests/scene/test_fit.py (same recipe), with its wall-clock time."""
    size = 64
    truth = random_scene(120, sh_degree=1, generator=torch.Generator().manual_seed(0))

    def views_of(w2c: torch.Tensor) -> PosedViews:
        K = intrinsics_from_fov(48.0, size, size).expand(len(w2c), 3, 3).clone()
        with torch.no_grad():
            images = [render(truth, K[v], w2c[v], size, size).rgb for v in range(len(w2c))]
        return PosedViews(torch.stack(images).clamp(0, 1), K, w2c)

    rings = [(5.0, 0.0), (30.0, 10.0), (55.0, 20.0)]
    train = views_of(torch.cat([orbit(12, e, 4.0, start_azimuth_deg=a) for e, a in rings]))
    held_out = [
        orbit(4, 20.0, 4.0, start_azimuth_deg=50.0),
        orbit(4, 42.0, 4.0, start_azimuth_deg=80.0),
    ]
    test = views_of(torch.cat(held_out))
    start = GaussianScene.random_in_sphere(
        500, 1.0, sh_degree=1, generator=torch.Generator().manual_seed(1)
    )
    config = FitConfig(
        iterations=600,
        position_lr_init=8e-4,
        position_lr_final=8e-6,
        sh_degree=1,
        sh_increase_interval=200,
        densify_from=100,
        densify_until=360,
        opacity_reset_interval=1000,
        max_gaussians=2000,
    )
    result = fit(start, train, config, test_views=test)
    print(
        f"fit 64 px, 36 views, {config.iterations} steps: {result.seconds:.1f} s, "
        f"{result.scene.num_gaussians} Gaussians, train PSNR "
        f"{sum(result.train_psnr) / len(result.train_psnr):.2f} dB, held-out PSNR "
        f"{min(result.test_psnr):.2f}..{max(result.test_psnr):.2f} dB "
        f"(torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f})"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark grid and print one line per configuration."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="CUDA: torch and gsplat backends")
    parser.add_argument("--fit", action="store_true", help="time the 64 px fitting check")
    parser.add_argument("--gaussians", type=positive_int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[64, 128, 256])
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed passes per configuration"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=("torch", "gsplat"), help="default torch; both with --gpu"
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's choice)"
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit:
        run_fit()
        return
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA device")
        device, backends = torch.device("cuda"), args.backends or ["torch", "gsplat"]
    else:
        device, backends = torch.device("cpu"), args.backends or ["torch"]
        if "gsplat" in backends:
            parser.error("--backends gsplat needs --gpu (gsplat renders on CUDA only)")
    records = JsonRecords(args.json)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for count in args.gaussians:
        generator = torch.Generator().manual_seed(0)
        scene = GaussianScene.random_in_sphere(count, 1.0, 3, opacity=0.5, generator=generator)
        scene = scene.to(device)
        for size in args.sizes:
            for backend in backends:
                forward, backward = time_render(scene, size, backend, args.repeats)
                peak_gib, peak_kind = peak_memory(device)
                print(
                    f"{count:7d} Gaussians {size:4d}px {backend:6s} forward {forward * 1e3:8.1f} ms"
                    f"  backward {backward * 1e3:8.1f} ms  {1 / (forward + backward):7.2f} views/s"
                    f"  {peak_gib:.2f} GiB {peak_kind}",
                    flush=True,
                )
                records.add({"gaussians": count, "resolution": size, "backend": backend,
                             "device": device.type, "forward_ms": forward * 1e3,
                             "backward_ms": backward * 1e3, "views_per_s": 1 / (forward + backward),
                             "peak_gib": peak_gib, "peak_kind": peak_kind})  # fmt: skip


if __name__ == "__main__":
    main()
