"""ViewDiff's ablation (its Table 3) in miniature, on the toy world: what each part buys.

    python bench/ablation.py [--work runs/ablation] [--steps 1200] [--variants base cfa ...]
        [--world toy|toy_sided] [--base SD_FOLDER] [--consistency-objects 4]
        [--novel-objects 12] [--quick] [--force]

From a toy base SD (the world's: the shipped viewdiff/assets/toy/sd for ``toy``,
runs/toy-sided/base/sd from ``make toy-sided`` for ``toy_sided``), with the same data, steps and
seed, train.py fine-tunes (the world's config: configs/toy_cpu.yaml, configs/toy_sided.yaml):

    base           no fine-tune: the toy SD, one view at a time
    cfa            cross-frame attention only (model.pose_lora=false, projection_layers=false)
    cfa_lora       + pose-conditioned LoRA (model.projection_layers=false)
    full           + projection layers, as the paper trains: last view held out of the grids
                   (train.novel_views=1) and prior preservation (train.prior_shards, weight 0.1)
    full_no_novel  full, every view lifted (train.novel_views=0)
    full_no_prior  full, without prior preservation (train.prior_shards="")
    full_residual  full, its projection layers added to the block's features as a residual
                   (model.projection_merge=residual) instead of replacing them as the paper

and measures each on toy objects made with seeds the training data does not use:

- 3D consistency: 8 views of an object generated jointly on the default orbit (for base: 8
  images one by one), Gaussians fitted to 6, PSNR on the 2 held out (``consistency_psnr``); in
  the sided world also the backdrop's consistency and whether the darker side sits in one 3D
  place (``viewdiff.toy.quality.consistency_scores``). Each is the mean over objects, printed
  with its standard error (the measure's own noise: its spread over objects and seeds);
- novel views from one view: 1 true view given, 3 generated at their true cameras, PSNR/SSIM
  against the truth (``infer.py eval``'s ``evaluate_heldout``; base ignores the given view);
- text accuracy: colour and shape of 4 joint views of every toy prompt (classifier fitted on
  real renders);
- how much the prior reads the other views (``viewdiff.toy.view_reliance``, t = 500, 24
  held-out objects): ``gain``, a held-out view predicted from its object's other views against
  alone, ``contrast``, against another object's views, and ``pose_use``, against its own views
  given with shuffled cameras (how much it uses where they were seen from), in dB with their
  standard errors; and how much the projection layers' output changes when the cameras are
  rolled, and the held-out view's output when only the other views' cameras are rolled,
  relative to its size (``viewdiff.toy.projection_activity``; ~0: the layers carry nothing 3D).

Writes WORK/ablation.json (figures per variant, steps, minutes, and how far the projection
layers' zero-initialised output has grown), WORK/ablation.md (the table) and WORK/ablation.png
(bar charts). Resumes, after a kill at any moment: a variant whose training finished is not
retrained (train.py resumes its checkpoints), one whose figures are in the json is not
re-measured (--force re-measures), and the json is replaced whole, never half written; a resumed
run ends with the figures of an uninterrupted one (tests/test_ablation.py kills one twice). A
second run into a --work in use is refused (its run.lock), a dead one's lock taken over. The
defaults ran in 56 minutes on 2 cores, alone: 42 of training (a step of the full model 0.6 s with
its prior batch, 0.4 s without; 0.25 s without projection layers), ~2.3 of measuring per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from viewdiff.commands.options import positive_int  # noqa: E402
from viewdiff.config import DataConfig, SampleConfig, load_config  # noqa: E402
from viewdiff.data.shard_manifest import write_json  # noqa: E402
from viewdiff.data.toy_objects import toy_prompts  # noqa: E402
from viewdiff.inference.evaluate import summarize, view_metrics  # noqa: E402
from viewdiff.inference.heldout import evaluate_heldout, heldout_objects  # noqa: E402
from viewdiff.prior.load import load_export  # noqa: E402
from viewdiff.run_lock import FolderInUse, RunLock  # noqa: E402
from viewdiff.toy.assets import TOY_MULTIVIEW  # noqa: E402
from viewdiff.toy.classify import classifier_accuracy, fit_shape_classifier  # noqa: E402
from viewdiff.toy.images import read_shard_images  # noqa: E402
from viewdiff.toy.projection_activity import projection_activity  # noqa: E402
from viewdiff.toy.quality import (  # noqa: E402
    CONSISTENCY_FIT,
    averaged,
    consistency_scores,
    make_toy_shards,
    prior_views,
    toy_orbit,
    unit,
)
from viewdiff.toy.t2i_training import generate  # noqa: E402
from viewdiff.toy.view_reliance import view_reliance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOY_SD = TOY_MULTIVIEW.parent / "sd"
FULL = ("train.novel_views=1", "train.prior_weight=0.1")
VARIANTS = {  # name -> (what it has, train.py overrides; None: no fine-tune)
    "base": ("toy SD, one view at a time", None),
    "cfa": ("cross-frame attention", ("model.pose_lora=false", "model.projection_layers=false")),
    "cfa_lora": ("+ pose LoRA", ("model.projection_layers=false",)),
    "full": ("+ projection layers, novel view, prior", FULL),
    "full_no_novel": ("full without novel-view holdout", (*FULL[1:], "train.novel_views=0")),
    "full_no_prior": ("full without prior preservation", (FULL[0], "train.prior_shards=")),
    "full_residual": ("full, projection as a residual", (*FULL, "model.projection_merge=residual")),
}
WITH_PRIOR = ("full", "full_no_novel", "full_residual")
# World -> its fine-tuning config, its default base SD and how its views are cut.
WORLDS = {
    "toy": ("configs/toy_cpu.yaml", TOY_SD, "object"),
    "toy_sided": ("configs/toy_sided.yaml", REPO / "runs/toy-sided/base/sd", "random_square"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"), help="work folder")
    parser.add_argument("--steps", type=positive_int, default=1200, help="steps per variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--objects-per-shape", type=positive_int, default=60, help="training")
    parser.add_argument("--consistency-objects", type=positive_int, default=4)
    parser.add_argument("--novel-objects", type=positive_int, default=12)
    parser.add_argument("--fit-iterations", type=positive_int, default=CONSISTENCY_FIT.iterations)
    parser.add_argument("--world", choices=tuple(WORLDS), default="toy", help="which toy world")
    parser.add_argument("--base", type=Path, help="toy base SD folder (default: the world's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny everything")
    parser.add_argument("--force", action="store_true", help="re-measure measured variants")
    args = parser.parse_args(argv)
    args.config, default_base, args.crop = WORLDS[args.world]
    args.base = args.base or default_base
    if not (args.base / "model_index.json").is_file():
        parser.error(f"--base {args.base}: not a Stable Diffusion folder (make toy-sided?)")
    if args.quick:
        args.steps, args.objects_per_shape = 4, 2
        args.consistency_objects, args.novel_objects, args.fit_iterations = 1, 2, 30
    return args


def log(started: float, message: str) -> None:
    """A progress line with the elapsed minutes."""
    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)


def make_data(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Training shards (seed 0), held-out shards (seed 1), classifier renders (seed 2), and the
    prior set of the base SD; each made once."""
    paths = {name: work / name / "shards" for name in ("train", "heldout", "reference")}
    plan = {"train": (args.objects_per_shape, 12, 0), "heldout": (max(args.novel_objects, 4), 8, 1),
            "reference": (2 if args.quick else 20, 4, 2)}  # fmt: skip
    for name, (objects, frames, seed) in plan.items():
        if not (paths[name] / "manifest.json").is_file():
            make_toy_shards(work / name, objects, frames, seed=seed, style=args.world)
    paths["prior"] = work / "prior"
    if any(name in WITH_PRIOR for name in args.variants):
        runpy.run_path(str(REPO / "data/make_prior_set.py"))["main"](
            ["--pretrained-model", str(args.base), "--captions-from", str(paths["train"]),
             "--out", str(paths["prior"]), "--size", "64", "--images-per-caption", "8",
             "--steps", "20", "--guidance-scale", "4"]
        )  # fmt: skip
    return paths


def train_variant(name: str, args: argparse.Namespace, paths: dict[str, Path], work: Path) -> None:
    """Fine-tune one variant with train.py (resumes an interrupted run; nothing if done)."""
    overrides = VARIANTS[name][1]
    out = work / "runs" / name
    if (out / "model" / "config.json").is_file():
        return
    prior = [f"train.prior_shards={paths['prior']}"] if name in WITH_PRIOR else []
    argv = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / args.config),
            f"model.pretrained_model={args.base}", f"data.shards={paths['train']}",
            f"train.output_dir={out}", f"train.max_steps={args.steps}",
            "train.validate_every=0", f"train.checkpoint_every={max(1, args.steps // 4)}",
            f"train.log_every={max(1, args.steps // 10)}", "train.report_to=[]",
            f"train.lr_warmup_steps={min(100, args.steps // 10)}", *prior, *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    subprocess.run(argv, check=True, env=env, cwd=REPO)


@dataclasses.dataclass
class Evaluation:
    """What every variant is measured with: the same objects, prompts, seeds and cameras."""

    settings: SampleConfig
    classifier: object
    heldout: DataConfig
    fit: object
    base_pipe: StableDiffusionPipeline


def evaluation(args: argparse.Namespace, paths: dict[str, Path]) -> Evaluation:
    """The shared measuring tools."""
    settings = load_config(REPO / args.config).sample
    reference = read_shard_images(paths["reference"])
    classifier = fit_shape_classifier(unit(reference), reference.categories)
    heldout = DataConfig(shards=str(paths["heldout"]), image_size=64, n_views=4, num_workers=0,
                         crop=args.crop)  # fmt: skip  # as the world's shards were cut
    fit = dataclasses.replace(
        CONSISTENCY_FIT,
        iterations=args.fit_iterations,
        densify_until=min(CONSISTENCY_FIT.densify_until, args.fit_iterations * 3 // 4),
    )
    pipe = StableDiffusionPipeline.from_pretrained(args.base)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return Evaluation(settings, classifier, heldout, fit, pipe)


def measure(name: str, args: argparse.Namespace, tools: Evaluation, work: Path) -> dict:
    """Consistency, novel views and text accuracy of one variant."""
    prompts = toy_prompts()
    chosen = [prompts[(i * 7) % len(prompts)] for i in range(args.consistency_objects)]
    orbit4, orbit8 = (toy_orbit(tools.settings, n, 64) for n in (4, 8))
    per_view = [p for p in prompts for _ in range(4)]
    reliance = {}  # base: one view at a time, it reads no other view
    if name == "base":
        pipe = tools.base_pipe
        text = generate(pipe, per_view, seed=2000)
        objects = [
            generate(pipe, [prompt] * 8, seed=3000 + 8 * i) for i, prompt in enumerate(chosen)
        ]
        novel = []
        for index, sample in enumerate(heldout_objects(tools.heldout, 0, args.novel_objects)):
            images = generate(pipe, [sample["prompt"]] * 3, seed=5000 + 3 * index) * 2 - 1
            novel.append(view_metrics(images, sample["images"][1:], sample["masks"][1:]))
        novel = {key: sum(sum(n[key]) / len(n[key]) for n in novel) / len(novel)
                 for key in ("psnr", "psnr_masked", "ssim")}  # fmt: skip
    else:
        prior = load_export(work / "runs" / name / "model")
        settings = tools.settings
        text = prior_views(prior, prompts, orbit4, settings, seed=2000).flatten(0, 1)
        objects = [prior_views(prior, [prompt], orbit8, settings, seed=3000 + i)[0]
                   for i, prompt in enumerate(chosen)]  # fmt: skip
        results = evaluate_heldout(prior, tools.heldout, 1, settings, work / "eval" / name,
                                   args.novel_objects)  # fmt: skip
        novel = summarize(results)
        read = list(heldout_objects(tools.heldout, 0, 24))
        (reading,) = view_reliance(prior, read, (500,), 2)
        reliance = {f"reliance_{n}": v for n, v in reading.summary().items() if n in RATIO_KEYS}
        layers = projection_activity(prior, read[:12])
        if layers:  # how much the layers' output changes with rolled cameras, over layers
            reliance["projection_camera"] = sum(layer.camera for layer in layers) / len(layers)
            reliance["projection_placement"] = sum(x.placement for x in layers) / len(layers)
    consistency = averaged([consistency_scores(views, orbit8, tools.fit, i, args.world)
                            for i, views in enumerate(objects)])  # fmt: skip
    accuracy = classifier_accuracy(tools.classifier, text, per_view)
    return {
        "consistency_psnr": consistency.pop("object_psnr"),
        "consistency_psnr_se": consistency.pop("object_psnr_se"),
        **consistency,  # the sided world's backdrop_psnr, mark_one_place, ... (and _se)
        "novel_psnr": novel["psnr"],
        "novel_psnr_masked": novel["psnr_masked"],
        "novel_ssim": novel["ssim"],
        "colour": accuracy["colour"],
        "shape": accuracy["shape"],
        **reliance,  # how much it reads the other views (dB, with _se); projection_*
    }


def projection_output_weight(model: Path) -> float | None:
    """Mean |weight| of the projection layers' zero-initialised last convolution (None: none).

    The layers add to the UNet only what this convolution lets through, and nothing reaches
    the layers before it until it has grown: the measure of how far they have started to act."""
    state = load_file(model / "multiview.safetensors")
    last = {}
    for key, value in state.items():
        if key.startswith("projection_layers.") and ".expand." in key and key.endswith(".weight"):
            layer, index = key.split(".expand.")[0], int(key.split(".expand.")[1].split(".")[0])
            if index >= last.get(layer, (-1, None))[0]:
                last[layer] = (index, value)
    if not last:
        return None
    return sum(float(value.float().abs().mean()) for _, value in last.values()) / len(last)


COLUMNS = [("consistency_psnr", "3D consistency PSNR (dB)", "{:.2f}"),
           ("novel_psnr", "novel view PSNR (dB)", "{:.2f}"), ("novel_ssim", "SSIM", "{:.3f}"),
           ("colour", "colour acc.", "{:.0%}"), ("shape", "shape acc.", "{:.0%}")]  # fmt: skip
RATIO_KEYS = {f"{n}{end}" for n in ("gain", "contrast", "pose_use") for end in ("", "_se")}
RELIANCE_COLUMNS = [("reliance_gain", "reads other views: gain at t=500 (dB)", "{:.2f}"),
                    ("reliance_contrast", "own vs other's views (dB)", "{:.2f}"),
                    ("reliance_pose_use", "true vs shuffled cameras (dB)", "{:.2f}"),
                    ("projection_camera", "projection: camera change", "{:.1%}"),
                    ("projection_placement", "other views' placement", "{:.1%}")]  # fmt: skip
SIDED_COLUMNS = [("backdrop_psnr", "backdrop consistency (dB)", "{:.2f}"),
                 ("mark_one_place", "darker side in one place", "{:.0%}")]  # fmt: skip


def columns(figures: dict) -> list[tuple[str, str, str]]:
    """The table's columns: the sided world's two more when measured, the reliance's where any
    variant has them (base has none)."""
    rows = figures["variants"].values()
    sided = [c for c in SIDED_COLUMNS if all(c[0] in row for row in rows)]
    return COLUMNS + sided + [c for c in RELIANCE_COLUMNS if any(c[0] in row for row in rows)]


def cell(row: dict, key: str, form: str) -> str:
    """A figure, with its standard error when the measure has one ("-" where not measured)."""
    if key not in row:
        return "-"
    text = form.format(row[key])
    return text + " ± " + form.format(row[f"{key}_se"]) if f"{key}_se" in row else text


def table(figures: dict, steps: int) -> str:
    """The figures as a markdown table."""
    shown = columns(figures)
    head = ["variant", "what it has", *(title for _, title, _ in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in figures["variants"].items():
        cells = [f"`{name}`", VARIANTS[name][0], *(cell(row, k, f) for k, _, f in shown)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n{steps} fine-tuning steps per variant in the {figures['world']} world; "
            f"consistency on {figures['consistency_objects']} objects (± its standard error over "
            f"them), novel views on {figures['novel_objects']} held-out objects.\n")  # fmt: skip
    grown = {name: row["projection_output_weight"] for name, row in figures["variants"].items()
             if "projection_output_weight" in row}  # fmt: skip
    if grown:
        note += (
            "Mean |weight| of the projection layers' zero-initialised output convolution: "
            + ", ".join(f"`{name}` {value:.1e}" for name, value in grown.items())
            + ".\n"
        )
    return "\n".join(lines) + "\n" + note


def bar_chart(figures: dict, path: Path) -> None:
    """One panel per measure, one bar per variant, drawn with PIL."""
    names = list(figures["variants"])
    colours = [(120, 120, 120), (70, 130, 180), (60, 170, 110), (220, 120, 40), (200, 80, 80),
               (150, 100, 190)]  # fmt: skip
    panel_w, panel_h, bar_w = 230, 260, 26
    shown = columns(figures)
    image = Image.new("RGB", (panel_w * len(shown), panel_h + 24 * len(names) + 20), "white")
    draw = ImageDraw.Draw(image)
    for p, (key, title, fmt) in enumerate(shown):
        measured = {n: figures["variants"][n][key] for n in names if key in figures["variants"][n]}
        values = list(measured.values())
        low = min(0.0, *values) if "psnr" not in key else min(values) - 1.0
        high = max(values) + (1e-9 if max(values) > low else 1.0)
        x0 = p * panel_w + 15
        draw.text((x0, 8), title, fill="black")
        for i, name in enumerate(names):
            if name not in measured:  # not measured for this variant (base reads no other view)
                continue
            value = measured[name]
            height = (value - low) / (high - low) * (panel_h - 70)
            left = x0 + 10 + i * (bar_w + 8)
            draw.rectangle([left, panel_h - 20 - height, left + bar_w, panel_h - 20],
                           fill=colours[i % len(colours)])  # fmt: skip
            draw.text((left - 2, panel_h - 34 - height), fmt.format(value), fill="black")
        draw.line([x0, panel_h - 20, x0 + panel_w - 30, panel_h - 20], fill="black")
    for i, name in enumerate(names):
        y = panel_h + 8 + 24 * i
        draw.rectangle([15, y, 35, y + 14], fill=colours[i % len(colours)])
        draw.text((45, y), f"{name}: {VARIANTS[name][0]}", fill="black")
    image.save(path)


def main(argv: list[str] | None = None) -> dict:
    """Train and measure every chosen variant (one run per --work); write and print the table."""
    args = parse_args(argv)
    try:
        with RunLock(args.work, name="--work", program="bench/ablation.py"):
            return run(args)
    except FolderInUse as error:
        print(f"bench/ablation.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> dict:
    """Train and measure every chosen variant; write and print the table."""
    started = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "ablation.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if saved.get("steps") not in (None, args.steps):
        raise SystemExit(
            f"{results_path} holds a run of {saved['steps']} steps; use another --work"
        )
    if saved.get("world", "toy") != args.world and saved:
        raise SystemExit(f"{results_path} holds a run of the {saved.get('world', 'toy')} world; "
                         "use another --work")  # fmt: skip
    figures = {"steps": args.steps, "world": args.world,
               "consistency_objects": args.consistency_objects,
               "novel_objects": args.novel_objects, "variants": saved.get("variants", {}),
               "minutes": saved.get("minutes", {})}  # fmt: skip
    paths = make_data(args, work)
    log(started, f"data ready in {work}")
    tools = evaluation(args, paths)
    for name in args.variants:
        if name in figures["variants"] and not args.force:
            continue
        began = time.perf_counter()
        if VARIANTS[name][1] is not None:
            log(started, f"{name}: training {args.steps} steps")
            train_variant(name, args, paths, work)
        trained = time.perf_counter()
        log(started, f"{name}: measuring")
        torch.manual_seed(0)
        figures["variants"][name] = measure(name, args, tools, work)
        figures["minutes"][name] = {"train": (trained - began) / 60,
                                    "measure": (time.perf_counter() - trained) / 60}  # fmt: skip
        write_json(results_path, figures)
        log(started, f"{name}: {figures['variants'][name]}")
    order = [name for name in VARIANTS if name in figures["variants"]]
    figures["variants"] = {name: figures["variants"][name] for name in order}
    for name in order:
        model = work / "runs" / name / "model"
        weight = projection_output_weight(model) if model.is_dir() else None
        if weight is not None:
            figures["variants"][name]["projection_output_weight"] = weight
    write_json(results_path, figures)
    markdown = table(figures, args.steps)
    (work / "ablation.md").write_text(markdown)
    bar_chart(figures, work / "ablation.png")
    print("\n" + markdown)
    log(started, f"wrote {work / 'ablation.md'}, {work / 'ablation.png'}, {results_path}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
