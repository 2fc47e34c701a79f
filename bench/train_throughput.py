"""Throughput of a full training step: data, VAE and text encoding, forward, backward, update.

    python bench/train_throughput.py            # tiny (64 px) and mid (128 px) pipelines, CPU
    python bench/train_throughput.py --full     # SD 2.1 base size, 256 px, N=5, bf16, on CUDA

Each line is one configuration: seconds per optimiser step, samples/s (objects), views/s
(= images/s), the share of the step spent waiting for data, and the peak memory. The step is
``viewdiff.training.step.train_step`` on batches streamed from synthetic shards written for the
run (``viewdiff.data.synthetic`` -> ``viewdiff.data.shards``), exactly as train.py runs it.
CPU sizes use the tiny preset's multi-view layers (configs/tiny_cpu.yaml); ``--full`` the
paper's (configs/co3d_sd21.yaml: G=32, 128 samples per ray, background) on randomly
initialised SD 2.1 base-sized UNet, VAE and text encoder (timing needs no pretrained weights),
and adds the model FLOPs of a step (matmuls, convolutions and attention of the frozen encoders'
forward and the UNet's forward and backward, counted by torch.utils.flop_counter, recomputation
included when checkpointing) and the model-FLOPs utilisation against ``--peak-tflops``
(default: the dense bf16 peak of the GPU's name, e.g. 989 for H100/H200 SXM). ``--device``,
``--dtype``, ``--sizes`` override the ``--full`` defaults (e.g. to run that path on a CPU);
``--gradient-checkpointing`` switches on train.gradient_checkpointing (the UNet's blocks are
recomputed in the backward pass), ``--optimizer adamw8bit`` takes bitsandbytes' 8-bit AdamW;
``--json PATH`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTokenizer

from viewdiff.commands.options import nonnegative_float, nonnegative_int, positive_int
from viewdiff.config import Config, legacy_values, load_config
from viewdiff.data.shard_plan import ShardOptions
from viewdiff.data.shards import write_shards
from viewdiff.data.synthetic import make_synthetic_dataset
from viewdiff.diffusion import noise_scheduler
from viewdiff.tiny import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_text_encoder,
    build_unet,
    build_vae,
    sd21_base_scheduler_config,
    sd21_base_unet_config,
    sd21_base_vae_config,
    text_encoder_config,
    unet_config,
    vae_config,
    write_tokenizer,
)
from viewdiff.training.base_pipeline import BasePipeline, freeze_encoders
from viewdiff.training.data_segments import SegmentedBatches
from viewdiff.training.optim import build_optimizer, parameter_groups
from viewdiff.training.step import TrainingParts, train_step
from viewdiff.training.training_model import COMPUTE_DTYPES, build_training_model, cast_frozen

sys.path.insert(0, str(Path(__file__).resolve().parent))  # json_records, beside this file
from json_records import JsonRecords, add_json_option  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESOLUTIONS = {"tiny": 64, "mid": 128, "sd21": 256}
# Dense bf16 peaks (TFLOP/s) by GPU name; --peak-tflops for anything else.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# SD 2.x's text tower (OpenCLIP ViT-H/14), stabilityai/stable-diffusion-2-1-base/text_encoder.
SD21_TEXT = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 512,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
}


def base_pipeline(size: str, folder: Path) -> BasePipeline:
    """Randomly initialised tokenizer, text encoder, VAE and UNet of a size (no weights read)."""
    vocab = write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    if size == "sd21":
        text = text_encoder_config("tiny", len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
        text = CLIPTextConfig(**{**text.to_dict(), **SD21_TEXT})
        unet, vae = sd21_base_unet_config(), sd21_base_vae_config()
    else:
        text = text_encoder_config(size, len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
        unet, vae = unet_config(size), vae_config(size)
    return BasePipeline(
        tokenizer,
        build_text_encoder(text),
        build_vae(vae),
        build_unet(unet),
        sd21_base_scheduler_config(),
    )


def shards(folder: Path, image_size: int, crop: str = "full") -> Path:
    """Synthetic objects (4 categories) packed into shards of ``image_size`` views, whole frames
    or (``crop`` "object") cut around the object."""
    width = max(160, image_size * 5 // 4)
    root = make_synthetic_dataset(
        folder / "co3d",
        ("box", "ball", "can", "composite"),
        1,
        10,
        (width, width * 3 // 4),
        seed=0,
        points=500,
    )
    options = ShardOptions(
        image_size=image_size, max_frames=10, min_frames=5, samples_per_shard=1, crop=crop
    )
    write_shards(root, folder / "shards", options)
    return folder / "shards"


def bench_config(args: argparse.Namespace, size: str, data_dir: Path, out: Path) -> Config:
    """The preset of the size with the benchmark's data and batch settings."""
    config = load_config(
        REPO / "configs" / ("co3d_sd21.yaml" if size == "sd21" else "tiny_cpu.yaml")
    )
    data = dataclasses.replace(
        config.data,
        shards=str(data_dir),
        image_size=RESOLUTIONS[size],
        n_views=args.views,
        num_workers=args.workers,
        shuffle_buffer=4,
        categories=(),
    )
    train = dataclasses.replace(
        config.train,
        output_dir=str(out),
        batch_size=args.batch,
        gradient_accumulation_steps=1,
        mixed_precision=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        mode=args.mode or config.train.mode,
        optimizer=args.optimizer or config.train.optimizer,
    )
    if args.saved_before:  # the model, crop and loss of configs saved before the paper's layout
        model = dataclasses.replace(config.model, **legacy_values("model"))
        data = dataclasses.replace(data, **legacy_values("data"))
        train = dataclasses.replace(train, loss_views=legacy_values("train")["loss_views"])
        return dataclasses.replace(config, model=model, data=data, train=train)
    return dataclasses.replace(config, data=data, train=train)


def training_parts(config: Config, base: BasePipeline, accelerator: Accelerator) -> TrainingParts:
    """Model (train.mode), optimizer and frozen encoders on the device, as train.py sets them up."""
    train = config.train
    freeze_encoders(base, accelerator.device, COMPUTE_DTYPES[train.mixed_precision])
    schedule = noise_scheduler(base.scheduler_config, train.zero_terminal_snr, "epsilon")
    model = build_training_model(base.unet, config.model, train.mode, train.gradient_checkpointing)
    if train.mixed_precision != "no":
        cast_frozen(model, COMPUTE_DTYPES[train.mixed_precision])
    model.to(accelerator.device).train()
    optimizer = build_optimizer(parameter_groups(model, train), train)
    model, optimizer = accelerator.prepare(model, optimizer)
    return TrainingParts(
        accelerator, model, optimizer, base, schedule.alphas_cumprod, "epsilon", train
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """GiB peak and what it is: the CUDA allocator's since the last reset, or the process's peak
    resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"


def step_flops(parts: TrainingParts, data: SegmentedBatches, step: int) -> float:
    """Matmul/conv/attention FLOPs of one training step (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        train_step(parts, data.step_batches(step), step)
    return float(counter.get_total_flops())


def run(
    args: argparse.Namespace, size: str, accelerator: Accelerator, folder: Path
) -> tuple[str, dict]:
    """Time one size; returns its line and its figures."""
    crop = "object" if args.saved_before else "full"
    config = bench_config(args, size, shards(folder, RESOLUTIONS[size], crop), folder / "run")
    torch.manual_seed(0)
    parts = training_parts(config, base_pipeline(size, folder), accelerator)
    data = SegmentedBatches(config.data, args.batch, 1, 10**9, seed=0)
    device = accelerator.device
    for step in range(args.warmup):
        train_step(parts, data.step_batches(step), step)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data.wait_seconds, start = 0.0, time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        train_step(parts, data.step_batches(step), step)
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    views = args.batch * args.views
    data_share = data.wait_seconds / args.steps / seconds
    peak_gib, peak_kind = peak_memory(device)
    layout = "saved-before" if args.saved_before else "paper"
    line = (
        f"{size:5s} {RESOLUTIONS[size]:4d}px N={args.views} B={args.batch} {args.dtype:4s} "
        f"{config.train.mode} {config.train.optimizer} "
        f"{device.type}: {seconds:8.3f} s/step {args.batch / seconds:8.2f} samples/s "
        f"{views / seconds:8.2f} views/s  data {data_share:4.0%}  "
        f"peak {peak_gib:.2f} GiB ({peak_kind})  {layout}"
    )
    record = {"size": size, "resolution": RESOLUTIONS[size], "views": args.views,
              "batch": args.batch, "dtype": args.dtype, "mode": config.train.mode,
              "optimizer": config.train.optimizer,
              "gradient_checkpointing": args.gradient_checkpointing, "device": device.type,
              "s_per_step": seconds, "samples_per_s": args.batch / seconds,
              "views_per_s": views / seconds, "data_wait_share": data_share,
              "peak_gib": peak_gib, "peak_kind": peak_kind, "layout": layout}  # fmt: skip
    if args.flops:
        flops = step_flops(parts, data, args.warmup + args.steps)
        achieved = flops / seconds / 1e12
        line += f"  {flops / 1e12:.3g} TFLOP/step  {achieved:.3g} TFLOP/s"
        record |= {"tflop_per_step": flops / 1e12, "tflop_per_s": achieved}
        if args.peak_tflops:
            line += f"  MFU {achieved / args.peak_tflops:.1%} of {args.peak_tflops:g}"
            record |= {"peak_tflops": args.peak_tflops, "mfu": achieved / args.peak_tflops}
    data.close()
    return line, record


def gpu_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of the GPU by its name (None when unknown or not a GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --full fills in its defaults for what is not given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="SD 2.1 base size, 256 px, bf16, CUDA")
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "mid", "sd21"))
    parser.add_argument(
        "--views", type=positive_int, help="N views per object (default 4; 5 with --full)"
    )
    parser.add_argument(
        "--batch", type=positive_int, help="objects per step (default 1; 4 with --full)"
    )
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps per size")
    parser.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed steps first")
    parser.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader workers")
    parser.add_argument("--device", help="cpu or cuda (default: cpu; cuda with --full)")
    parser.add_argument(
        "--dtype", choices=list(COMPUTE_DTYPES), help="no (fp32) or bf16 with --full"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--saved-before",
        action="store_true",
        help="the projection layers, crop and loss of configs saved before the paper's layout "
        "(residual after each transformer, 1x1 stacks, object crops: config.LEGACY_DEFAULTS)",
    )
    parser.add_argument("--mode", choices=("full", "lora", "new_layers"), help="train.mode")
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), help="train.optimizer")
    parser.add_argument(
        "--peak-tflops", type=nonnegative_float, help="peak of the device for the MFU"
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if args.full else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"device {args.device} needs CUDA, which is not available here")
    args.sizes = args.sizes or (["sd21"] if args.full else ["tiny", "mid"])
    args.views = args.views or (5 if args.full else 4)
    args.batch = args.batch or (4 if args.full else 1)
    args.dtype = args.dtype or ("bf16" if args.full else "no")
    args.flops = args.full
    args.peak_tflops = args.peak_tflops or gpu_peak_tflops(args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    """Time every size and print one line each."""
    args = parse_args(argv)
    accelerator = Accelerator(cpu=args.device.type == "cpu", mixed_precision=args.dtype)
    records = JsonRecords(args.json)
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"train-throughput-{size}-") as folder:
            line, record = run(args, size, accelerator, Path(folder))
            print(line, flush=True)
            records.add(record)
        gc.collect()


if __name__ == "__main__":
    main()
