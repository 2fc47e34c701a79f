"""train.main end to end on a tiny pipeline and synthetic shards: the run folder, checkpoints,
training modes, NaN policies, bad input, and a loss that falls on one object."""

import dataclasses
import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
import viewdiff.commands.train
import viewdiff.training.step
from viewdiff.config import load_config, read_config_json, save_config
from viewdiff.model import load_multiview_unet
from viewdiff.model.projection import ProjectionLayer
from viewdiff.training.checkpoints import read_training_state
from viewdiff.training.data_segments import SegmentedBatches


def checkpoint_steps(out):
    """Steps of the checkpoint folders (complete or not) of a run."""
    return sorted(path.name for path in (out / "checkpoints").iterdir())


def event_scalars(out) -> EventAccumulator:
    """The run's tensorboard events, loaded."""
    (events,) = (out / "logs" / "train").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return accumulator


def test_two_step_run_writes_config_logs_checkpoint_validation_and_export(
    run_args, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = run_args(
        out,
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.validate_every=2",
        "train.validation_inference_steps=2",
        "train.validation_prompts=[a red box, a ball]",
    )
    assert train.main(argv) == 0
    stdout = capsys.readouterr().out
    # One summary line per log interval on the main rank, with the step and the rank count.
    assert "step 1/2 | loss " in stdout and "step 2/2 | loss " in stdout
    assert stdout.count("| 1 rank\n") == 2
    config = load_config(argv[1], argv[2:])
    # As resolved, with the precision accelerate chose for the open train.mixed_precision.
    assert config.train.mixed_precision is None
    ran = dataclasses.replace(config.train, mixed_precision="no")
    assert read_config_json(out / "config.json") == dataclasses.replace(config, train=ran)
    # Tensorboard: the scalars of the interval and the validation grid.
    events = event_scalars(out)
    tags = set(events.Tags()["scalars"])
    expected = {"loss", "grad_norm", "views_per_s", "data_wait", "skipped_samples", "lr/unet"}
    assert expected | {"lr/added", "lr/renderer"} <= tags
    assert [event.step for event in events.Scalars("loss")] == [1, 2]
    assert events.Scalars("lr/renderer")[0].value == pytest.approx(1e-3)
    assert "validation" in events.Tags()["images"]
    grid = out / "validation" / "step-000002.png"
    assert Image.open(grid).size == (2 * 64, 2 * 64)  # 2 views x 2 prompts
    # The checkpoint: step 2, complete; the export loads and holds the same weights.
    assert checkpoint_steps(out) == ["checkpoint-2"]
    assert read_training_state(out / "checkpoints" / "checkpoint-2").step == 2
    trained = load_file(out / "checkpoints" / "checkpoint-2" / "trainable.safetensors")
    model = load_multiview_unet(out / "model", None, config.model)
    state = model.state_dict()
    assert trained.keys() == state.keys()  # mode full: every weight trains
    for key in ("unet.conv_in.weight", next(k for k in trained if "projection_layers" in k)):
        torch.testing.assert_close(state[key], trained[key], rtol=0, atol=0)
    base_model = json.loads((out / "model" / "base_model.json").read_text())
    assert base_model["pretrained_model"] == config.model.pretrained_model
    assert base_model["step"] == 2 and not base_model["ema"]
    scheduler = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["rescale_betas_zero_snr"] and scheduler["prediction_type"] == "epsilon"
    # The training cameras travel in the checkpoint and reach the export, for SDS.
    state = read_training_state(out / "checkpoints" / "checkpoint-2")
    cameras = json.loads((out / "model" / "camera_distribution.json").read_text())
    batch_views = config.train.batch_size * config.train.gradient_accumulation_steps
    assert state.cameras["count"] == cameras["views"] == 2 * batch_views * config.data.n_views
    for name in ("radius", "elevation_deg", "fov_deg", "half_width"):
        low, high = cameras[name]["range"]
        assert cameras[name]["min"] <= low <= cameras[name]["mean"] <= high <= cameras[name]["max"]


def test_checkpoints_every_two_steps_keep_the_last_two(run_args, tmp_path):
    out = tmp_path / "run"
    argv = run_args(
        out, "train.max_steps=6", "train.checkpoint_every=2", "train.checkpoints_keep=2"
    )
    assert train.main(argv) == 0
    assert checkpoint_steps(out) == ["checkpoint-4", "checkpoint-6"]


@pytest.mark.parametrize("mode", ["lora", "new_layers"])
def test_lora_and_new_layers_modes_train_only_their_weights(run_args, tiny_sd, tmp_path, mode):
    out = tmp_path / mode
    argv = run_args(out, "train.max_steps=1", f"train.mode={mode}", "model.base_lora_rank=2")
    assert train.main(argv) == 0
    trained = load_file(out / "checkpoints" / "checkpoint-1" / "trainable.safetensors")
    unet_keys = [key for key in trained if key.startswith("unet.")]
    if mode == "lora":
        assert unet_keys and all("lora_" in key for key in unet_keys)
        assert (out / "model" / "unet_lora").is_dir() and not (out / "model" / "unet").exists()
    else:
        assert not unet_keys and not (out / "model" / "unet_lora").exists()
    assert any("projection_layers" in key for key in trained)
    # The export loads on the base UNet it was trained from.
    config = read_config_json(out / "config.json")
    base = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    state = load_multiview_unet(out / "model", base, config.model).state_dict()
    for key, value in trained.items():
        if not key.startswith("unet."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


class NaNAtCall:
    """A loss that turns NaN at its ``bad``-th call (1-based)."""

    def __init__(self, bad: int) -> None:
        self.calls, self.bad = 0, bad
        self.loss = viewdiff.training.step.generated_views_mse

    def __call__(self, prediction, target, generated):
        self.calls += 1
        loss = self.loss(prediction, target, generated)
        return loss * float("nan") if self.calls == self.bad else loss


def test_nan_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(
    run_args, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(viewdiff.training.step, "generated_views_mse", NaNAtCall(3))
    out = tmp_path / "run"
    argv = run_args(out, "train.max_steps=6", "train.checkpoint_every=2")
    assert train.main(argv) == 1
    error = capsys.readouterr().err
    assert "step 3: non-finite loss nan" in error and "train.nan_policy=stop" in error
    assert f"last good checkpoint: {out / 'checkpoints' / 'checkpoint-2'}" in error
    assert checkpoint_steps(out) == ["checkpoint-2"]
    assert not (out / "model").exists()


def test_nan_loss_skip_counts_the_step_and_leaves_the_weights(
    run_args, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(viewdiff.training.step, "generated_views_mse", NaNAtCall(2))
    out = tmp_path / "run"
    overrides = ("train.max_steps=3", "train.checkpoint_every=1", "train.checkpoints_keep=3")
    assert train.main(run_args(out, "train.nan_policy=skip", *overrides)) == 0
    assert "step 2/3 | loss nan" in capsys.readouterr().out
    folders = [out / "checkpoints" / f"checkpoint-{step}" for step in (1, 2, 3)]
    assert [read_training_state(f).nan_skipped_steps for f in folders] == [0, 1, 1]
    first, second, third = (load_file(f / "trainable.safetensors") for f in folders)
    assert all(torch.equal(first[key], second[key]) for key in first)  # step 2 was skipped
    assert not all(torch.equal(second[key], third[key]) for key in first)  # step 3 was not


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if train.py gets as far as setting up a run."""

    def refuse(*args, **kwargs):
        raise AssertionError("compute started before the input error was reported")

    monkeypatch.setattr(viewdiff.commands.train, "set_up", refuse)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.shards={tmp}/no-shards", "data.shards='{tmp}/no-shards': no such shard folder"),
        (
            "model.pretrained_model={tmp}/no-unet",
            "not a Stable Diffusion pipeline folder: no unet/",
        ),
        ("train.bogus=1", "unknown key 'train.bogus'"),
        ("train.resume={tmp}/gone", "train.resume='{tmp}/gone': no such checkpoint folder"),
        ("train.resume={tmp}/no-unet", "not a complete checkpoint (no training_state.json"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be at least 1, got 0"),
        (
            "train.learning_rate=-1e-3",
            "train.learning_rate must be finite and positive, got -0.001",
        ),
        ("train.learning_rate=.nan", "train.learning_rate must be a finite number, got nan"),
        (
            "train.renderer_learning_rate=0",
            "train.renderer_learning_rate must be finite and positive",
        ),
        ("train.adam_beta2=1.0", "train.adam_beta2 must be finite and in [0, 1), got 1.0"),
        ("train.adam_epsilon=0", "train.adam_epsilon must be finite and positive, got 0.0"),
        ("train.max_grad_norm=-1", "train.max_grad_norm must be finite and non-negative (0 turns"),
        ("train.adam_weight_decay=.inf", "train.adam_weight_decay must be a finite number"),
        ("train.lr_power=0", "train.lr_power > 0"),
        (
            "train.lr_scheduler=piecewise_constant train.lr_step_rules=1:x",
            "train.lr_scheduler=piecewise_constant: ",
        ),
        ("train.report_to=wandb", "train.report_to: wandb is not installed here"),
        ("train.report_to=tensorbord", "unknown tracker 'tensorbord'"),
        (
            "train.output_dir={tmp}/a-file",
            "train.output_dir {tmp}/a-file is a file, not a folder",
        ),
        ("train.output_dir={tmp}/a-file/run", "{tmp}/a-file is a file, not a folder"),
    ],
)
def test_bad_input_exits_2_before_any_compute(
    run_args, tmp_path, capsys, no_compute, override, message
):
    no_unet = tmp_path / "no-unet"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (no_unet / part).mkdir(parents=True)
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(out, *override.format(tmp=tmp_path).split()))
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not out.exists()


def test_loss_falls_on_one_object(run_args, one_object_shards, tmp_path):
    # 40 steps of 2 views at a high learning rate: the first interval's mean loss (about 1,
    # the noise's variance) falls by more than half.
    out = tmp_path / "run"
    overrides = (
        "train.max_steps=40",
        "train.log_every=5",
        "train.checkpoint_every=40",
        "train.learning_rate=3e-3",
        "train.renderer_learning_rate=3e-3",
    )
    assert train.main(run_args(out, *overrides, shards=one_object_shards)) == 0
    losses = [event.value for event in event_scalars(out).Scalars("loss")]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_fresh_start_refuses_an_earlier_runs_checkpoints(run_args, tmp_path, capsys, no_compute):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-4" / "training_state.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(out, "train.resume=null"))
    assert exit_info.value.code == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err


def test_resuming_with_another_model_config_exits_2(run_args, tmp_path, capsys, no_compute):
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "training_state.json").write_text("{}")
    argv = run_args(out)
    save_config(
        load_config(argv[1], [*argv[2:], "model.pose_lora_rank=8"]), checkpoint / "config.json"
    )
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert "cannot resume with another model: model.pose_lora_rank: checkpoint 8, now 4" in (
        capsys.readouterr().err
    )


def test_gradient_checkpointing_computes_the_same_step(run_args, tmp_path):
    weights = []
    for checkpointing in ("false", "true"):
        out = tmp_path / checkpointing
        argv = run_args(out, "train.max_steps=1", f"train.gradient_checkpointing={checkpointing}")
        assert train.main(argv) == 0
        weights.append(load_file(out / "checkpoints" / "checkpoint-1" / "trainable.safetensors"))
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=1e-6, msg=key)


def test_novel_views_are_rendered_but_not_lifted(run_args, tmp_path, monkeypatch):
    lifted = []
    forward = ProjectionLayer.forward

    def spy(self, *args, **kwargs):
        unprojected = (
            inspect.signature(forward).bind(self, *args, **kwargs).arguments.get("unprojected")
        )
        lifted.append(None if unprojected is None else unprojected.tolist())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ProjectionLayer, "forward", spy)
    argv = run_args(tmp_path / "run", "train.max_steps=1", "train.novel_views=1")
    assert train.main(argv) == 0
    assert lifted and all(views == [True, False] for views in lifted)  # 1 object x 2 views
    with pytest.raises(SystemExit):  # every view novel: nothing to lift
        train.main(run_args(tmp_path / "bad", "train.novel_views=2"))


def test_adamw8bit_without_bitsandbytes_exits_2(
    run_args, tmp_path, capsys, no_compute, monkeypatch
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(tmp_path / "run", "train.optimizer=adamw8bit"))
    assert exit_info.value.code == 2
    assert "train.optimizer=adamw8bit needs bitsandbytes" in capsys.readouterr().err


def test_adamw8bit_trains_and_resumes_exactly(run_args, tmp_path):
    pytest.importorskip("bitsandbytes")  # in the dev extra: CI has it
    common = ("train.optimizer=adamw8bit", "train.checkpoint_every=2", "train.checkpoints_keep=3")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train.main(run_args(whole, "train.max_steps=3", *common)) == 0
    assert train.main(run_args(resumed, "train.max_steps=2", *common)) == 0
    again = run_args(resumed, "train.max_steps=3", "train.resume=latest", *common)
    assert train.main(again) == 0
    first = load_file(whole / "checkpoints" / "checkpoint-3" / "trainable.safetensors")
    second = load_file(resumed / "checkpoints" / "checkpoint-3" / "trainable.safetensors")
    start = load_file(whole / "checkpoints" / "checkpoint-2" / "trainable.safetensors")
    assert any(not torch.equal(first[key], start[key]) for key in first)  # it trained
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=0, atol=0, msg=key)
    optimizer = torch.load(
        whole / "checkpoints" / "checkpoint-3" / "optimizer.bin", weights_only=False
    )
    # bitsandbytes keeps tensors under 4096 entries in 32 bits, the larger ones in 8
    states = [state["__bnb_optimizer_quant_state__"] for state in optimizer["state"].values()]
    assert any(state["state1"].dtype == torch.uint8 for state in states)


def test_skipped_samples_are_counted_in_checkpoints_and_logs(
    run_args, train_shards, tmp_path, capsys
):
    # Two good shards and a corrupt one, drawn at random: the loader skips, the run goes on.
    for path in train_shards.glob("*.tar"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "train-000002.tar").write_bytes(b"not a tar file")
    shards = tmp_path / "train-{000000..000002}.tar"
    out = tmp_path / "run"
    overrides = ("train.max_steps=4", "train.checkpoint_every=2", "train.checkpoints_keep=2")
    assert train.main(run_args(out, *overrides, shards=shards)) == 0
    # The same stream, counted on its own: the run's counts are the stream's, not more.
    config = read_config_json(out / "config.json")
    stream = SegmentedBatches(config.data, 1, micro_batches=1, segment_steps=2, seed=0)
    expected = []
    for step in range(4):
        stream.step_batches(step)
        expected.append(stream.skipped)
    stream.close()
    states = [read_training_state(out / "checkpoints" / f"checkpoint-{k}") for k in (2, 4)]
    assert [state.skipped_samples for state in states] == [expected[1], expected[3]]
    assert expected[3] > expected[1] > 0
    assert "step 4/4 | loss" in capsys.readouterr().out
    assert event_scalars(out).Scalars("skipped_samples")[-1].value == expected[3]


def test_a_second_run_on_a_held_folder_exits_2_and_touches_nothing(run_args, tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-5.tmp").mkdir(parents=True)  # the first run's save
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": 0.0}
    (out / "run.lock").write_text(json.dumps(holder))
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(out))
    assert exit_info.value.code == 2
    assert f"is in use by another run (pid {os.getppid()}" in capsys.readouterr().err
    assert (out / "checkpoints" / "checkpoint-5.tmp").is_dir()  # not cleaned up as incomplete
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getppid()


def test_a_manifest_whose_shards_are_gone_exits_2(run_args, train_shards, tmp_path, capsys):
    import shutil

    shards = Path(shutil.copytree(train_shards, tmp_path / "shards"))
    gone = sorted(shards.glob("*.tar"))[0]
    gone.unlink()
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(tmp_path / "run", shards=shards))
    assert exit_info.value.code == 2
    assert f"its manifest lists {gone.name}, which is not there" in capsys.readouterr().err
