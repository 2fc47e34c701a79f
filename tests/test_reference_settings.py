"""--print-config names, beside each key the reference sets, its value and where it is set."""

import yaml

from viewdiff.commands import train
from viewdiff.config import config_from_dict, load_config
from viewdiff.reference_settings import REFERENCE_SETTINGS, annotate_yaml

ISSUE_30_KEYS = [
    "model.projection_merge", "model.projection_in", "model.projection_out",
    "model.voxel_grid_by_width", "model.voxel_unet", "model.density_noise",
    "model.ray_directions", "data.crop", "data.view_sampling", "data.categories",
    "data.caption_fallback", "train.loss_views", "train.renderer_learning_rate",
]  # fmt: skip


def comments(text: str) -> dict[str, str]:
    """``section.key`` -> the comment on its line."""
    found, section = {}, None
    for line in text.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif "  # " in line and not line.startswith("  - "):
            key = line.strip().split(":", 1)[0]
            found[f"{section}.{key}"] = line.split("  # ", 1)[1]
    return found


def test_the_paper_preset_follows_the_reference_on_every_annotated_key(capsys):
    assert train.main(["--config", "configs/co3d_sd21.yaml", "--print-config"]) == 0
    printed = capsys.readouterr().out
    notes = comments(printed)
    for key in ISSUE_30_KEYS:
        assert notes[key].startswith("reference "), (key, notes.get(key))
    assert len(notes) == len(REFERENCE_SETTINGS)
    assert not [k for k, note in notes.items() if "DIFFERS" in note]
    assert "train.sh:40 last_layer_mode no_residual_connection" in notes["model.projection_merge"]
    # Still the resolved config: it loads back to what was printed.
    assert config_from_dict(yaml.safe_load(printed)) == load_config("configs/co3d_sd21.yaml")


def test_a_setting_other_than_the_references_is_marked():
    config = load_config("configs/co3d_sd21.yaml", ["model.projection_merge=residual",
                                                    "model.projection_out=zero",
                                                    "train.learning_rate=1e-4"])  # fmt: skip
    notes = comments(annotate_yaml(config))
    assert notes["model.projection_merge"].startswith("DIFFERS from the reference's replace")
    assert notes["train.learning_rate"].startswith("DIFFERS from the reference's 5.0e-05")
    assert notes["model.projection_in"].startswith("reference multiple")
