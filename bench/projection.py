"""Forward + backward time of the projection layer's pieces, ours beside the reference's layout.

    python bench/projection.py              # CPU fp32: N=5, C'=16, 8x8 and 32x32, 16^3 and 32^3
    python bench/projection.py --full       # CUDA, bf16 learned parts (geometry float32)
    python bench/projection.py --layer-only # only the whole layer (unproject ... render)

Two tables, each timed fwd+bwd (loss: the output's mean square) as the median of ``--repeats``
interleaved rounds, after a warm-up round:

1. ``unproject + aggregate``: ours (``viewdiff.model.voxel_grid.unproject`` and
   ``IBRNetAggregator``) against ``ReferencePieces``: the same computation in the reference's
   layout and operations (facebookresearch/ViewDiff ``build_cost_volume`` and
   ``IBRNet_Aggregator``: per-view volumes channels first (B*N, C', G, G, G), the ray directions
   unprojected as three more feature channels, invalid voxels cleared by boolean indexing, every
   per-voxel layer a 1x1x1 ``nn.Conv3d`` over the full concatenation), restated here for timing
   with our aggregator's weights, so that both compute the same grid (checked before timing).
2. the whole ``ProjectionLayer`` (compress, unproject, aggregate, 3D UNet, render, expand) with
   the paper's settings (G=32, 128 samples per ray, background; the reference's proj_in/proj_out
   stacks and 3D UNet) at the feature sizes given; ``--saved-before``: the layer of exports
   saved before the paper's layout (1x1 stacks, the compact 3D UNet).

``--floor`` adds to the first table the time of only the operations any implementation of the
same computation must run (``necessary_ops``: the per-voxel matrix products with their
gradients, the ELUs, one grid_sample), a lower bound for eager PyTorch.

``--compile`` adds ``torch.compile`` of ours to both tables (its first call, the compilation, is
the warm-up round; half a minute per shape on CPU).

The reference's Triton kernels are not restated: they run on CUDA only, and the point here is
the pure-PyTorch path that runs everywhere.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viewdiff.cameras.conventions import pixel_rays, project
from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.commands.options import positive_int
from viewdiff.model.aggregate import IBRNetAggregator
from viewdiff.model.projection import ProjectionLayer, aggregate_views
from viewdiff.model.voxel_grid import grid_world_points

sys.path.insert(0, str(Path(__file__).resolve().parent))  # json_records, beside this file
from json_records import JsonRecords, add_json_option  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEMB_DIM = 128  # the UNet's time embedding width (tiny UNet: 4 x 32)


def conv_1x1(linear: nn.Linear) -> nn.Conv3d:
    """A 1x1x1 Conv3d with the weights of a Linear layer (the reference's per-voxel layers)."""
    conv = nn.Conv3d(linear.in_features, linear.out_features, kernel_size=1)
    conv.weight.data.copy_(linear.weight.data[:, :, None, None, None])
    conv.bias.data.copy_(linear.bias.data)
    return conv


def as_convs(sequential: nn.Sequential) -> nn.Sequential:
    """A Sequential of Linear and activation layers with every Linear as a 1x1x1 Conv3d."""
    return nn.Sequential(*(conv_1x1(m) if isinstance(m, nn.Linear) else m for m in sequential))


class ReferencePieces(nn.Module):
    """Unproject + IBRNet aggregation in the reference's layout, with an aggregator's weights."""

    def __init__(self, ours: IBRNetAggregator) -> None:
        super().__init__()
        self.ray_depth_encoder = as_convs(ours.ray_depth_encoder)
        self.temb_encoder = ours.temb_encoder  # Linear layers in the reference too
        self.base_fc = as_convs(ours.base_fc)
        self.vis_fc = as_convs(ours.vis_fc)
        self.vis_fc2 = as_convs(ours.vis_fc2)
        self.statistics_out = as_convs(ours.statistics_out)

    @staticmethod
    def cost_volume(
        features: Tensor, K: Tensor, w2c: Tensor, points: Tensor, size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-view volumes (B, N, C+3, G, G, G) of features + ray directions, masks and depths."""
        batch, views, channels, height, width = features.shape
        _, directions = pixel_rays(K, w2c, height, width)  # (B, N, h, w, 3)
        features = torch.cat([features, directions.permute(0, 1, 4, 2, 3)], dim=2)
        flat = features.reshape(batch * views, channels + 3, height, width)
        uv, depth = project(points, K, w2c)  # (B, N, P, 2), (B, N, P)
        scale = uv.new_tensor([width, height])
        sampler = torch.cat([(uv + 0.5) / scale * 2.0 - 1.0, depth[..., None]], dim=-1)
        sampler = sampler.reshape(batch * views, -1, 3)
        valid = (sampler[..., :2].abs() <= 1.0).all(dim=-1) & (sampler[..., 2] > 0)
        sampler = sampler.clone()
        sampler[~valid] = -10.0
        sampled = F.grid_sample(
            flat, sampler[:, None, :, :2].contiguous(), mode="bilinear", align_corners=False
        )  # (B*N, C+3, 1, P)
        sampled = sampled[:, :, 0].permute(1, 0, 2).contiguous()
        sampled[:, ~valid] = 0.0
        shape = (batch, views, -1, size, size, size)
        volumes = sampled.transpose(0, 1).reshape(shape).contiguous()
        mask = valid.float().reshape(shape).contiguous()
        voxel_depth = sampler[..., 2].reshape(shape).contiguous()
        return volumes, mask, voxel_depth

    def forward(
        self,
        features: Tensor,
        K: Tensor,
        w2c: Tensor,
        points: Tensor,
        usable: Tensor,
        temb: Tensor,
    ) -> Tensor:
        """Aggregated grid (B, C, G, G, G) of features (B, N, C, h, w) seen by K, w2c.

        points (G^3, 3) are the voxels' world points, usable (G^3,) those that may hold features
        (the reference clears the features of the others, we also their weights: masked here
        as ours, so that both compute the same grid).
        """
        batch, views, channels = features.shape[:3]
        size = round(points.shape[0] ** (1 / 3))
        volumes, mask, voxel_depth = self.cost_volume(features, K, w2c, points, size)
        usable = usable.float().reshape(size, size, size)
        volumes, mask = volumes * usable, mask * usable
        volumes, voxel_dir = volumes.split([channels, 3], dim=2)

        def collapse(x: Tensor) -> Tensor:
            return x.reshape(batch * views, *x.shape[2:])

        def expand(x: Tensor) -> Tensor:
            return x.reshape(batch, views, *x.shape[1:])

        # The reference's voxel depth is the projected depth; the directions are unit vectors.
        encoding = self.ray_depth_encoder(collapse(torch.cat([voxel_dir, voxel_depth], dim=2)))
        volumes = volumes + expand(encoding)
        temb_encoding = self.temb_encoder(temb)[..., None, None, None]
        volumes = volumes + temb_encoding.repeat(1, 1, 1, size, size, size).contiguous()
        weight = mask / (mask.sum(dim=1, keepdim=True) + 1e-8)
        mean = (volumes * weight).sum(dim=1, keepdim=True)
        var = (weight * (volumes - mean) ** 2).sum(dim=1, keepdim=True)
        x = torch.cat([torch.cat([mean, var], dim=2).expand(-1, views, -1, -1, -1, -1), volumes], 2)
        x = self.base_fc(collapse(x))
        weight, mask = collapse(weight), collapse(mask)
        x_res, vis = self.vis_fc(x * weight).split([channels, 1], dim=1)
        vis = torch.sigmoid(vis) * mask
        x = x + x_res
        vis = expand(self.vis_fc2(x * vis) * mask)
        x = expand(x)
        weight = vis / (vis.sum(dim=1, keepdim=True) + 1e-8)
        mean = (x * weight).sum(dim=1, keepdim=True)
        var = (weight * (x - mean) ** 2).sum(dim=1, keepdim=True)
        return self.statistics_out(torch.cat([mean[:, 0], var[:, 0], weight.mean(dim=1)], dim=1))


def ours(aggregator: IBRNetAggregator, background: bool) -> Callable[..., Tensor]:
    """Our unproject + aggregate, as the projection layer calls them, returning (B, C, G, G, G)."""

    def run(features: Tensor, K: Tensor, w2c: Tensor, points: Tensor, usable: Tensor,
            temb: Tensor) -> Tensor:  # fmt: skip
        size = round(points.shape[0] ** (1 / 3))
        return aggregate_views(aggregator, features, K, w2c, temb, None, size, background)

    return run


def scene(views: int, feature_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """K (1, N, 3, 3) in pixels of a ``feature_size`` map and w2c (1, N, 4, 4) on an orbit."""
    K = intrinsics_from_fov(50.0, feature_size, feature_size).expand(1, views, 3, 3)
    w2c = orbit(views, elevation_deg=20.0, radius=2.5)[None]
    return K.to(device), w2c.to(device)


def necessary_ops(
    aggregator: IBRNetAggregator, views: int, voxels: int, feature_size: int, device: torch.device
) -> Callable[[], float]:
    """Seconds of only what any unproject + aggregate must compute, fwd + bwd: the aggregator's
    per-voxel matrix products and their gradients, its ELUs, one grid_sample of all views.

    Without the means, variances, broadcasts and sums between them, this is a lower bound for
    an eager implementation of the same computation (fp32).
    """
    per_view, per_voxel = views * voxels, voxels  # columns (one object)
    products = []  # (out, in, columns, whether the input needs a gradient)
    elus = []  # elements
    for layers, columns in [
        (aggregator.ray_depth_encoder, per_view),
        (aggregator.base_fc, per_view),
        (aggregator.vis_fc, per_view),
        (aggregator.vis_fc2, per_view),
        (aggregator.statistics_out, per_voxel),
    ]:
        for layer in (layer for layer in layers if isinstance(layer, nn.Linear)):
            needs_grad = layer is not aggregator.ray_depth_encoder[0]  # geometry: no gradient
            if layer is aggregator.base_fc[0]:  # [mean, var] once per voxel, features per view
                shared = 2 * layer.in_features // 3
                products.append((layer.out_features, shared, per_voxel, True))
                products.append((layer.out_features, layer.in_features - shared, columns, True))
            else:
                products.append((layer.out_features, layer.in_features, columns, needs_grad))
        elus += [layers[i - 1].out_features * columns
                 for i, layer in enumerate(layers) if isinstance(layer, nn.ELU)]  # fmt: skip
    operands = [
        (torch.randn(o, i, device=device), torch.randn(i, c, device=device),
         torch.randn(o, c, device=device), needs_grad)
        for o, i, c, needs_grad in products
    ]  # fmt: skip
    activations = [torch.randn(size, device=device) for size in elus]
    channels = aggregator.statistics_out[0].out_features
    maps = torch.randn(views, channels, feature_size, feature_size, device=device)
    maps.requires_grad_()
    where = torch.rand(views, 1, voxels, 2, device=device) * 2 - 1

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for weight, inputs, grad, needs in operands:
            torch.mm(weight, inputs), torch.mm(grad, inputs.T)
            if needs:
                torch.mm(weight.T, grad)
        for x in activations:
            result = F.elu(x)
            torch.ops.aten.elu_backward(result, 1.0, 1.0, 1.0, True, result)
        sampled = F.grid_sample(maps, where, align_corners=False)
        torch.autograd.grad(sampled.sum(), maps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def fwd_bwd(
    fn: Callable[..., Tensor],
    inputs: tuple,
    params: list[Tensor],
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Seconds of one forward + backward of the mean square of fn(*inputs) (autocast to dtype)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
        out = fn(*inputs)
    torch.autograd.grad(out.float().square().mean(), params)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds per run, the runs interleaved round by round after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            seconds = run()
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def pieces_table(args: argparse.Namespace, records: JsonRecords) -> list[dict]:
    """Unproject + aggregate: ours against the reference's layout, per feature and grid size."""
    rows = []
    settings = [
        (feature_size, grid_size, background)
        for background in args.background
        for feature_size in args.features
        for grid_size in args.grids
    ]
    for feature_size, grid_size, background in settings:
        torch.manual_seed(0)
        aggregator = IBRNetAggregator(args.channels, TEMB_DIM).to(args.device)
        reference = ReferencePieces(aggregator).to(args.device)
        K, w2c = scene(args.views, feature_size, args.device)
        points, usable = grid_world_points(grid_size, background, torch.float32, args.device)
        shape = (1, args.views, args.channels, feature_size, feature_size)
        features = torch.randn(shape, device=args.device, requires_grad=True)
        temb = torch.randn(1, args.views, TEMB_DIM, device=args.device)
        inputs = (features, K, w2c, points, usable, temb)
        ours_run = ours(aggregator, background)
        with torch.no_grad():
            difference = (ours_run(*inputs).float() - reference(*inputs).float()).abs().max()
        timed = functools.partial(fwd_bwd, inputs=inputs, device=args.device, dtype=args.dtype)
        runs = {
            "ours": functools.partial(timed, ours_run, params=[features, *aggregator.parameters()]),
            "reference": functools.partial(
                timed, reference, params=[features, *reference.parameters()]
            ),
        }
        if args.floor:
            voxels = int(usable.sum())  # those computed: all of them without background
            runs["floor"] = necessary_ops(aggregator, args.views, voxels, feature_size, args.device)
        if args.compile:
            compiled = torch.compile(ours_run)
            runs["compiled"] = functools.partial(
                timed, compiled, params=[features, *aggregator.parameters()]
            )
        medians = interleaved(runs, args.repeats)
        row = {
            "features": feature_size,
            "grid": grid_size,
            "background": background,
            "ours_ms": 1e3 * medians["ours"],
            "reference_ms": 1e3 * medians["reference"],
            "ratio": medians["ours"] / medians["reference"],
            "max_difference": float(difference),
        }
        if args.floor:
            row["floor_ms"] = 1e3 * medians["floor"]
            row["floor_ratio"] = medians["floor"] / medians["reference"]
        if args.compile:
            row["compiled_ms"] = 1e3 * medians["compiled"]
            row["compiled_ratio"] = medians["compiled"] / medians["reference"]
        rows.append(row)
        records.add({"table": "unproject+aggregate", **row})
        print(
            f"unproject+aggregate  N={args.views} C'={args.channels} {feature_size:3d}x"
            f"{feature_size:<3d} G={grid_size:3d}^3 {'bg' if background else 'fg'}  "
            f"ours {row['ours_ms']:8.1f} ms  "
            f"reference layout {row['reference_ms']:8.1f} ms  ratio {row['ratio']:.2f}  "
            f"(outputs differ by {row['max_difference']:.1e})"
            + (f"  compiled {row['compiled_ms']:8.1f} ms  ratio {row['compiled_ratio']:.2f}"
               if args.compile else "")
            + (f"  necessary ops only {row['floor_ms']:8.1f} ms  ratio {row['floor_ratio']:.2f}"
               if args.floor else ""),
            flush=True,
        )  # fmt: skip
    return rows


def layer_table(args: argparse.Namespace, records: JsonRecords) -> list[dict]:
    """The whole projection layer with the paper's 3D settings, per feature size."""
    rows = []
    image = 64
    for feature_size in args.features:
        torch.manual_seed(0)
        if args.saved_before:  # residual, 1x1 stacks, the compact 3D UNet
            layer = ProjectionLayer(64, args.channels, 32, 128, True, TEMB_DIM,
                                    voxel_unet="compact", ray_directions="normalised")  # fmt: skip
            nn.init.normal_(layer.expand[-1].weight, std=0.02)  # a trained layer's output
        else:  # the paper's: replacing, multiple stacks, the reference's 3D UNet
            paper = dict(merge="replace", projection_in="multiple", projection_out="multiple")
            layer = ProjectionLayer(64, args.channels, 32, 128, True, TEMB_DIM, **paper)
        layer = layer.to(args.device)
        layer = layer.to(args.dtype)
        K, w2c = scene(args.views, image, args.device)
        features = torch.randn(args.views, 64, feature_size, feature_size, device=args.device)
        features = features.to(args.dtype).requires_grad_()
        temb = torch.randn(args.views, TEMB_DIM, device=args.device, dtype=args.dtype)
        timesteps = torch.randint(0, 1000, (args.views,), device=args.device)
        inputs = (features, K[0], w2c[0], (image, image), temb, timesteps, args.views)
        timed = functools.partial(
            fwd_bwd, inputs=inputs, params=[features, *layer.parameters()], device=args.device,
            dtype=torch.float32,  # the layer's parameters are in args.dtype already
        )  # fmt: skip
        variants = {"eager": layer}
        if args.compile:
            variants["compiled"] = torch.compile(layer)
        runs = {name: functools.partial(timed, module) for name, module in variants.items()}
        medians = interleaved(runs, args.repeats)
        for name, seconds in medians.items():
            row = {"features": feature_size, "variant": name, "ms": 1e3 * seconds,
                   "layout": "saved-before" if args.saved_before else "paper"}  # fmt: skip
            rows.append(row)
            records.add({"table": "projection layer", **row})
            print(
                f"projection layer     N={args.views} C'={args.channels} {feature_size:3d}x"
                f"{feature_size:<3d} G= 32^3 S=128+128  {name:8s} {row['ms']:8.1f} ms fwd+bwd  "
                f"{row['layout']}",
                flush=True,
            )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --full fills in its defaults for what is not given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="CUDA, bf16 learned parts")
    parser.add_argument("--views", type=positive_int, default=5, help="N views per object")
    parser.add_argument("--channels", type=positive_int, default=16, help="C' grid channels")
    parser.add_argument("--features", type=positive_int, nargs="+", default=[8, 32])
    parser.add_argument("--grids", type=positive_int, nargs="+", default=[16, 32])
    parser.add_argument(
        "--background",
        type=lambda text: {"on": True, "off": False}[text],
        nargs="+",
        default=[False, True],
        help="grids with background modelling (the paper's) or the object box only: on, off",
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (median)")
    parser.add_argument("--device", help="torch device (default: cpu; cuda with --full)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp32; bf16 with --full")
    parser.add_argument("--layer-only", action="store_true", help="only the whole-layer table")
    parser.add_argument(
        "--saved-before", action="store_true", help="the layer of exports before the paper's layout"
    )
    parser.add_argument("--pieces-only", action="store_true", help="only the pieces table")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of ours")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time only the operations any implementation must run (a lower bound)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    args.dtype = DTYPES[args.dtype or ("bf16" if args.full else "fp32")]
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"device {args.device} needs CUDA, which is not available here")
    if any(size % 2 for size in args.grids):
        parser.error("--grids must be even (the 3D UNet halves the grid once)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Print both tables and return their rows."""
    args = parse_args(argv)
    torch.set_grad_enabled(True)
    results, records = {}, JsonRecords(args.json)
    if not args.layer_only:
        results["pieces"] = pieces_table(args, records)
    if not args.pieces_only:
        results["layer"] = layer_table(args, records)
    return results


if __name__ == "__main__":
    main()
