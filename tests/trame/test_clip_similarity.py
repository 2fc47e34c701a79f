"""CLIP directional similarity on a tiny random CLIP built offline."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from viewdiff.trame.clip_similarity import ClipDirection


@pytest.fixture(scope="module")
def tiny_clip(tiny_sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=2, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer").save_pretrained(folder)
    return folder


def test_directional_similarity(tiny_clip):
    clip = ClipDirection(tiny_clip)
    generator = torch.Generator().manual_seed(1)
    before, after = torch.rand(2, 3, 3, 48, 64, generator=generator)
    forward = clip.directional_similarity(before, after, "a red ball", "a blue ball")
    backward = clip.directional_similarity(after, before, "a red ball", "a blue ball")
    assert -1.0 <= forward <= 1.0 and forward == pytest.approx(-backward, abs=1e-5)
    assert clip.image_features(before).shape == (3, 16)
    # The crop is centred: a change outside the central square does not count.
    edge = before.clone()
    edge[..., :, :4] = 1 - edge[..., :, :4]
    assert clip.image_features(edge).allclose(clip.image_features(before), atol=1e-3)


def test_not_a_clip_folder(tmp_path):
    with pytest.raises(ValueError, match="not a transformers CLIP folder"):
        ClipDirection(tmp_path)


def test_edit_scene_reports_it(tiny_clip, tiny_export, tmp_path):
    import json

    from infer import main
    from viewdiff.scene.gaussians import GaussianScene, write_gaussian_ply

    scene = tmp_path / "scene.ply"
    generator = torch.Generator().manual_seed(2)
    write_gaussian_ply(scene, GaussianScene.random_in_sphere(300, 0.6, sh_degree=0,
                                                             generator=generator))  # fmt: skip
    out = tmp_path / "out"
    assert main(["edit-scene", "--checkpoint", str(tiny_export), "--scene", str(scene),
                 "--views", "2", "--source-prompt", "a red ball", "--prompt", "a blue ball",
                 "--out", str(out), "--steps", "3", "--start", "2", "--keyframe-every", "2",
                 "--clip", str(tiny_clip)]) == 0  # fmt: skip
    metrics = json.loads((out / "edit.json").read_text())["metrics"]
    assert -1.0 <= metrics["clip_directional_similarity"] <= 1.0
