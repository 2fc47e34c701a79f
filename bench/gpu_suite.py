"""Every ``--full`` benchmark of the repository in one run, for whoever next has one H100/H200.

    python bench/gpu_suite.py --out DIR            # on CUDA, under 8 minutes
    python bench/gpu_suite.py --smoke --out DIR    # the same parts on a CPU, tiny sizes, ~1 min

Each part is one benchmark (bench/*.py with its ``--full`` options) in its own process, so that
an out-of-memory error, a missing gsplat or a hang fails that part alone: it is recorded with its
exit status and the tail of its stderr, and the other parts still run. Each part has a time
limit and the suite a budget (``--budget``) that no part may overrun. The figures are read from
the JSON each benchmark writes with ``--json`` (bench/json_records.py), never parsed from its
printed lines, and land in DIR/gpu_suite.json (device, torch / CUDA versions, date, git commit;
per part: command, status, seconds, figures) and DIR/gpu_suite.md (one section per part, printed
at the end). Both are rewritten after every part: a suite stopped halfway keeps what it measured.

``--smoke`` runs every part on the CPU in fp32 with tiny sizes and one timed step, through the
same ``--full`` code paths (tiny UNet, tiny_cpu 3D grid); a part that needs CUDA by nature
(gsplat) is recorded as skipped with the reason. ``--smoke --jobs 2`` runs two parts at a time
(each on one thread; their timings mean nothing anyway); a GPU run takes them one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import torch

from viewdiff.commands.options import positive_float, positive_int
from viewdiff.output_folders import check_output_folder

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 465.0
"""The suite's default wall-clock budget: under 8 minutes with the start of the suite itself."""
MIN_PART_S = 15.0
"""A part left less time than this by the budget is skipped: it could not even build its model."""
STDERR_LINES = 30
"""How much of a failed part's stderr the JSON and the markdown keep."""
RUNNING: set[subprocess.Popen] = set()
"""The parts' processes now running: Ctrl-C kills them all, whichever thread waits on them."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark of the suite: its script and its options on the GPU and in the smoke run."""

    what: str
    script: str  # from the repository root
    gpu: tuple[str, ...]
    smoke: tuple[str, ...] | None  # None: needs CUDA by nature (see cuda_only)
    timeout_s: float
    cuda_only: str = ""  # why it cannot run on a CPU


CPU = ("--device", "cpu", "--dtype", "fp32")
TINY_TRAIN = ("--full", "--device", "cpu", "--dtype", "no", "--sizes", "tiny", "--batch", "1",
              "--views", "2", "--steps", "1", "--warmup", "0",
              "--peak-tflops", "1")  # fmt: skip  # a CPU has no bf16 peak: MFU against 1 TFLOP/s
PARTS: dict[str, Part] = {
    "model_step": Part(
        "One multi-view UNet forward + backward per component (stock, +cfa, +pose-lora, "
        "+projection, all): SD 2.1 base size, 256 px, N=5, bf16, peak memory; the paper's "
        "projection layers (inside the transformer blocks, the reference's stacks).",
        "bench/model_step.py", ("--full",),
        ("--full", *CPU, "--unet", "tiny", "--resolutions", "64", "--steps", "1", "--small-3d"),
        90),
    "projection": Part(
        "The voxel projection layers on their own (bench/projection.py --full).",
        "bench/projection.py", ("--full",),
        ("--full", *CPU, "--features", "8", "--grids", "8", "--repeats", "1"), 45),
    "train": Part(
        "A full training step (data, encoders, forward, backward, update) of SD 2.1 base size "
        "with the paper's 3D layers, 256 px, N=5, B=4, bf16: samples/s, views/s, peak memory, "
        "model TFLOP per step and MFU.",
        "bench/train_throughput.py", ("--full",), TINY_TRAIN, 75),
    "train_checkpointing": Part(
        "The same training step with gradient checkpointing (FLOPs include the recomputation).",
        "bench/train_throughput.py", ("--full", "--gradient-checkpointing"),
        (*TINY_TRAIN, "--gradient-checkpointing"), 75),
    "infer_latency": Part(
        "One batch of 30 views with 10 UniPC steps, VAE decode included: from text (guidance "
        "7.5) and a sliding window (20 given, 10 new), SD 2.1 base size, 256 px, fp16.",
        "bench/infer_latency.py", ("--full",),
        ("--full", *CPU, "--sizes", "tiny", "--views", "3", "--given", "1", "--steps", "1",
         "--small-3d"),
        75),
    "sds_step": Part(
        "One score distillation step split into render / encode / prior / backward: SD 2.1 "
        "base size, 256 px, N=4, bf16 (goal: 60 ms).",
        "bench/sds_step.py", ("--full",),
        ("--full", *CPU, "--size", "tiny", "--small-3d", "--steps", "1", "--gaussians", "200"),
        75),
    "render_torch": Part(
        "Our torch tile rasteriser, forward + backward of one view: 1k / 10k / 100k Gaussians "
        "x 64 / 128 / 256 px.",
        "bench/render.py", ("--gpu", "--backends", "torch"),
        ("--backends", "torch", "--gaussians", "200", "--sizes", "32", "--repeats", "1"), 45),
    "render_gsplat": Part(
        "gsplat's rasteriser on the same scenes (compare with render_torch).",
        "bench/render.py", ("--gpu", "--backends", "gsplat"), None, 45,
        cuda_only="gsplat renders on CUDA only"),
    "inversion": Part(
        "Edit-friendly DDPM inversion (100 steps) and edit (64 steps) of 4 views jointly: "
        "SD 2.1 base size, 256 px, bf16.",
        "bench/inversion.py", ("--full",),
        ("--full", *CPU, "--size", "tiny", "--small-3d", "--steps", "2", "--skip", "1",
         "--views", "2"),
        75),
    "model_step_before": Part(
        "The same step with the projection layers of exports saved before the paper's layout "
        "(a residual after each transformer, 1x1 stacks, the compact 3D UNet): what the "
        "paper's layout costs.",
        "bench/model_step.py", ("--full", "--variants", "+projection", "all", "--saved-before"),
        ("--full", *CPU, "--unet", "tiny", "--resolutions", "64", "--steps", "1", "--small-3d",
         "--variants", "all", "--saved-before"),
        60),
    # Last: on a tight budget the other parts come first.
    "train_memory": Part(
        "Peak memory of the issue's memory setting: the train step with checkpointing at B=1 "
        "(goal: <= 16 GB; on CPU in fp32 it measured 15.9 GiB of process RSS).",
        "bench/train_throughput.py", ("--full", "--gradient-checkpointing", "--batch", "1"),
        (*TINY_TRAIN, "--gradient-checkpointing"), 75),
}  # fmt: skip


def git(*args: str) -> str | None:
    """The output of a git command in the repository (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version from nvidia-smi (None without it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else None


def device_description(smoke: bool) -> dict:
    """The device the parts run on: the first CUDA GPU, or the CPU in a smoke run."""
    if not smoke:
        props = torch.cuda.get_device_properties(0)
        return {
            "device": props.name,
            "device_memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}",
            "nvidia_driver": nvidia_driver(),
        }
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]  # fmt: skip
        name = models[0] if models else name
    return {"device": f"CPU: {name}", "cpu_count": os.cpu_count()}


def environment(smoke: bool) -> dict:
    """Where and when the suite ran: device, library versions, date, git commit."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        **device_description(smoke),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name: package_version(name) for name in ("diffusers", "accelerate", "gsplat")},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty),
    }


def part_environment(smoke: bool) -> dict[str, str]:
    """The environment of a part's process: offline, unbuffered, the repository importable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if smoke:  # tiny models gain nothing from threads, and oversubscribe a small machine
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def tail(text: str, lines: int = STDERR_LINES) -> list[str]:
    """The last non-empty lines of a process's output (progress bars' carriage returns split)."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]


def skipped(part: Part, reason: str) -> dict:
    """The record of a part that did not run."""
    return {"what": part.what, "command": None, "status": "skipped", "reason": reason,
            "seconds": 0.0, "figures": [], "stdout": []}  # fmt: skip


def run_part(part: Part, smoke: bool, timeout_s: float, work: Path) -> dict:
    """Run one part in its own process group; its record, whatever happened to it."""
    script = REPO / part.script
    if not script.is_file():
        return skipped(part, f"{part.script} is not in this checkout")
    if smoke and part.smoke is None:
        return skipped(part, f"{part.cuda_only}; a smoke run has no GPU")
    args = list(part.smoke if smoke else part.gpu)
    json_file = work / f"{script.stem}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(script), *args, "--json", str(json_file)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=part_environment(smoke), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    RUNNING.add(process)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        status = "ok" if process.returncode == 0 else "failed"
        reason = None if status == "ok" else f"exit status {process.returncode}"
    except subprocess.TimeoutExpired:
        stdout, stderr = kill_group(process)
        status, reason = "timeout", f"stopped after its limit of {timeout_s:.0f} s"
    except BaseException:  # Ctrl-C: the part's whole process group goes with the suite
        kill_group(process)
        raise
    finally:
        RUNNING.discard(process)
    seconds = time.perf_counter() - start
    printed = [line for line in stdout.splitlines() if line.strip()]
    figures = json.loads(json_file.read_text()) if json_file.is_file() else []
    if status == "ok" and not figures:
        status, reason = "failed", "exited 0 without figures"
    record = {"what": part.what, "command": " ".join(["python", part.script, *args])}
    record |= {"status": status, "reason": reason, "seconds": seconds, "figures": figures}
    record["stdout"] = printed
    if status != "ok":
        record["stderr_tail"] = tail(stderr)
    return record


def kill_group(process: subprocess.Popen) -> tuple[str, str]:
    """Kill a part's process group (the part and anything it started); its output so far."""
    with contextlib.suppress(ProcessLookupError):  # it ended in between
        os.killpg(process.pid, signal.SIGKILL)
    return process.communicate()


def cell(value: object) -> str:
    """One table cell: floats to 4 significant digits, booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def figures_tables(figures: list[dict]) -> list[str]:
    """Markdown tables of a part's figures: one per value of their "table" key (one table
    without it), one column per key in order of appearance."""
    tables = {}
    for figure in figures:
        tables.setdefault(figure.get("table"), []).append(figure)
    lines = []
    for name, rows in tables.items():
        columns = [key for key in dict.fromkeys(k for row in rows for k in row) if key != "table"]
        lines += ["", f"{name}:"] if name is not None else []
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return lines


def markdown(suite: dict) -> str:
    """The suite as markdown: the environment, a summary table, then one section per part."""
    env = suite["environment"]
    commit = (env["git_commit"] or "unknown")[:12] + (
        " (uncommitted changes)" * bool(env["git_dirty"])
    )
    lines = [f"# GPU suite ({suite['mode']}): {env['device']}", "",
             f"{env['date']}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
             f"gsplat {env['gsplat']}; commit {commit}; {suite['seconds']:.0f} s of a "
             f"{suite['budget_s']:.0f} s budget.", "",
             "| part | status | seconds | figures |", "|---|---|---|---|"]  # fmt: skip
    for name, part in suite["parts"].items():
        lines.append(
            f"| {name} | {part['status']} | {part['seconds']:.1f} | {len(part['figures'])} |"
        )
    for name, part in suite["parts"].items():
        lines += ["", f"## {name}: {part['status']} ({part['seconds']:.1f} s)", "", part["what"]]
        if part["command"]:
            lines += ["", f"`{part['command']}`"]
        if part["reason"]:
            lines += ["", f"**{part['status']}**: {part['reason']}"]
        lines += figures_tables(part["figures"])
        if part.get("stderr_tail"):
            lines += ["", "```text", *part["stderr_tail"], "```"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, suite: dict) -> None:
    """Rewrite DIR/gpu_suite.json and DIR/gpu_suite.md with what the suite has so far."""
    (out / "gpu_suite.json").write_text(json.dumps(suite, indent=1) + "\n")
    (out / "gpu_suite.md").write_text(markdown(suite))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options, checked before any part runs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json/.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny sizes, 1 step")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument(
        "--budget", type=positive_float, default=BUDGET_S, help="seconds for the whole suite"
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=1, help="parts at a time (--smoke only)"
    )
    args = parser.parse_args(argv)
    if args.jobs > 1 and not args.smoke:
        parser.error("--jobs runs parts side by side: --smoke only (parts share one GPU)")
    try:
        check_output_folder(args.out)
    except ValueError as error:
        parser.error(str(error))
    if not args.smoke and not torch.cuda.is_available():
        parser.error("the suite needs a CUDA device (--smoke runs it on the CPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every part, write the JSON and the markdown; 0 when no part failed or timed out."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    suite = {"mode": "smoke, CPU" if args.smoke else "full, CUDA", "budget_s": args.budget,
             "seconds": 0.0, "environment": environment(args.smoke), "parts": {}}  # fmt: skip
    records: dict[str, dict] = {}
    finished = threading.Lock()  # one part's record written at a time

    def run(index: int, name: str, work: Path) -> None:
        part = PARTS[name]
        left = args.budget - (time.perf_counter() - start)
        print(f"[{index}/{len(args.parts)}] {name} (limit {min(left, part.timeout_s):.0f} s)",
              flush=True)  # fmt: skip
        if left < MIN_PART_S:
            record = skipped(part, f"the suite's budget of {args.budget:.0f} s was spent")
        else:
            record = run_part(part, args.smoke, min(left, part.timeout_s), work)
        lines = [f"    {line}" for line in record["stdout"]]
        lines.append(f"    {name}: {record['status']} in {record['seconds']:.1f} s"
                     + (f": {record['reason']}" if record["reason"] else ""))  # fmt: skip
        with finished:
            records[name] = record
            # In the parts' order, whichever finished first.
            suite["parts"] = {name: records[name] for name in args.parts if name in records}
            suite["seconds"] = time.perf_counter() - start
            write_outputs(args.out, suite)
            print("\n".join(lines), flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="gpu-suite-") as work,
        ThreadPoolExecutor(args.jobs) as pool,
    ):
        runs = [pool.submit(run, index, name, Path(work))
                for index, name in enumerate(args.parts, 1)]  # fmt: skip
        try:
            for done in runs:
                done.result()  # re-raises what went wrong in the suite itself
        except BaseException:  # Ctrl-C reaches this thread: the parts' process groups go too
            pool.shutdown(cancel_futures=True, wait=False)
            for process in list(RUNNING):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            raise
    print(markdown(suite), flush=True)
    bad = [name for name, part in suite["parts"].items() if part["status"] in ("failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
