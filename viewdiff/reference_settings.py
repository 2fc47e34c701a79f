"""What the reference ViewDiff trains with, key by key, and where it says so.

The official code (facebookresearch/ViewDiff, HEAD 90300c1): ``scripts/train.sh`` and the files it
runs. ``--print-config`` writes each of these beside its key (``annotate_yaml``), so a resolved
config shows at a glance which settings follow the paper's training and which do not:

    learning_rate: 5.0e-05  # reference 5e-05: train.sh:20 optimizer.learning_rate

The values are the reference's as our keys express them; a key whose value differs says so.
"""

from __future__ import annotations

from typing import Any

import yaml

from viewdiff.config import Config, config_to_dict, config_to_yaml

# (section, key) -> (the reference's value, where it is set). train.sh lines are its flags.
REFERENCE_SETTINGS: dict[tuple[str, str], tuple[Any, str]] = {
    ("model", "pretrained_model"): (
        "stabilityai/stable-diffusion-2-1-base",
        "README, train.sh:7 $2",
    ),
    ("model", "cross_frame_attention"): (True, "train.sh:29 cross_frame_attention.mode pretrained"),
    ("model", "pose_lora"): (True, "train.sh:43 pose_cond_mode sa-ca"),
    ("model", "pose_lora_rank"): (64, "train.sh:45 pose_cond_lora_rank"),
    ("model", "pose_timestep_dim"): (8, "train.sh:28 use_temb_cond"),
    ("model", "projection_layers"): (True, "train.sh:32 unproj_reproj_mode with_cfa"),
    ("model", "projection_blocks"): (
        ["down_blocks.2", "mid_block", "up_blocks.1"],
        "train.sh:30-31 n_cfa_down/up_blocks 1 (custom_unet_2d_condition.py:306-311)",
    ),
    ("model", "projection_merge"): (
        "replace",
        "train.sh:40 last_layer_mode no_residual_connection (custom_attention.py:443-495)",
    ),
    ("model", "projection_in"): ("multiple", "train.sh:37 vol_rend_proj_in_mode (layer.py:97-102)"),
    ("model", "projection_out"): (
        "multiple",
        "train.sh:38 vol_rend_proj_out_mode (layer.py:130-145, blend :365-373)",
    ),
    ("model", "projection_channels"): (16, "train.sh:34 dim_3d_latent"),
    ("model", "voxel_grid_size"): (32, "train.sh:35 dim_3d_grid 128 // 4 at 1280 channels"),
    ("model", "voxel_grid_by_width"): (True, "custom_attention.py:165-172 dim_3d_grid // scale"),
    ("model", "render_samples"): (128, "layer.py:51 vol_rend_num_samples_per_ray"),
    ("model", "projection_background"): (True, "train.sh:41-42 vol_rend_model_background"),
    ("model", "disparity_at_infinity"): (0.5, "model/util.py:139 vol_rend_disparity_at_inf"),
    ("model", "density_noise"): (1.0, "train.py:252 inject_noise_sigma 1.0 per epoch"),
    ("model", "opacity_init_bias"): (-5.0, "fastplane_module.py:56,96 opacity_init_bias"),
    ("model", "voxel_unet"): ("reference", "train.sh:33 num_3d_layers 5 (layer.py:74-88)"),
    ("model", "ray_directions"): ("unnormalised", "layer.py:330 linear_ray(rays)"),
    ("data", "categories"): (["teddybear"], "train.sh:48 category $4 (one model each)"),
    ("data", "image_size"): (256, "train.sh:53-54 image_width/height"),
    ("data", "n_views"): (5, "train.sh:46 n_input_images"),
    ("data", "view_sampling"): ("mix", "train.sh:55 other_selection (co3d_dataset.py:684-704)"),
    ("data", "crop"): ("random_square", "train.sh:52 crop random (co3d_dataset.py:831-846)"),
    ("data", "caption_fallback"): ("empty", "train.sh:51 use_blip_prompt (co3d_dataset.py:719)"),
    ("train", "max_steps"): (60000, "README: 60K iterations"),
    ("train", "batch_size"): (4, "train.sh:13 train_batch_size"),
    ("train", "gradient_accumulation_steps"): (8, "train.sh:23"),
    ("train", "learning_rate"): (5e-5, "train.sh:20 optimizer.learning_rate"),
    ("train", "renderer_learning_rate"): (1e-3, "train.sh:21 vol_rend_learning_rate"),
    ("train", "renderer_weight_decay"): (0.0, "train.sh:22 vol_rend_adam_weight_decay"),
    ("train", "adam_weight_decay"): (1e-2, "train_util.py:131 adam_weight_decay"),
    ("train", "max_grad_norm"): (5e-3, "train.sh:24 max_grad_norm"),
    ("train", "zero_terminal_snr"): (True, "train_util.py:333 rescale_betas_zero_snr"),
    ("train", "prediction_type"): ("base", "train.sh:15 noise_prediction_type epsilon"),
    ("train", "prompt_dropout"): (0.2, "train.py:543 2 x conditioning_dropout_prob 0.1"),
    ("train", "prompt_dropout_per"): ("view", "train.py:540-545"),
    ("train", "image_condition_prob"): (0.25, "train.sh:16 prob_images_not_noisy"),
    ("train", "image_condition_views"): (2, "train.sh:17 max_num_images_not_noisy"),
    ("train", "novel_views"): (1, "train.sh:36 n_novel_images"),
    ("train", "loss_views"): ("all", "train.py:573-578 detached targets for clean views"),
    ("train", "prior_weight"): (0.1, "train.sh:14 dreambooth_prior_preservation_loss_weight"),
    ("train", "use_ema"): (False, "model/util.py:56 use_ema"),
    ("sample", "scheduler"): ("unipc", "test scripts scheduler_type unipc (test.py:533)"),
    ("sample", "num_inference_steps"): (10, "test scripts num_inference_steps"),
}


def same_value(ours: Any, theirs: Any) -> bool:
    """Whether a config value equals the reference's (lists and tuples alike, floats closely)."""
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return list(ours) == list(theirs)
    if isinstance(ours, float) or isinstance(theirs, float):
        try:
            return abs(float(ours) - float(theirs)) <= 1e-12 * max(1.0, abs(float(theirs)))
        except (TypeError, ValueError):
            return False
    return ours == theirs


def annotation(section: str, key: str, value: Any) -> str | None:
    """The comment for ``section.key`` holding ``value``, or None when the reference has none."""
    entry = REFERENCE_SETTINGS.get((section, key))
    if entry is None:
        return None
    theirs, where = entry
    shown = yaml.safe_dump(theirs, default_flow_style=True).strip().removesuffix("\n...")
    if same_value(value, theirs):
        return f"reference {shown}: {where}"
    return f"DIFFERS from the reference's {shown}: {where}"


def annotate_yaml(config: Config) -> str:
    """``config_to_yaml`` with each key the reference sets followed by its value and source."""
    values = config_to_dict(config)
    lines, section = [], None
    for line in config_to_yaml(config).splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
        elif section and line.startswith("  ") and not line.startswith(("   ", "  - ")):
            key = line.strip().split(":", 1)[0]
            note = annotation(section, key, values.get(section, {}).get(key))
            if note:
                line = f"{line}  # {note}"
        lines.append(line)
    return "\n".join(lines) + "\n"
