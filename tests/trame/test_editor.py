"""TrAME on the tiny random prior: attention control, the identity edit, resume, bad input."""

import dataclasses
import json

import pytest
import torch

from viewdiff.cameras.pose_features import pose_features
from viewdiff.editing.editing_model import load_editing_model
from viewdiff.inference.trajectory import orbit_trajectory
from viewdiff.prior.call import ViewConditions, encode_prompts, prior_predictions
from viewdiff.scene.fit import FitConfig
from viewdiff.scene.gaussians import GaussianScene, write_gaussian_ply
from viewdiff.trame.attention_control import AttentionControl, token_alignment
from viewdiff.trame.config import TrameConfig
from viewdiff.trame.editor import TrameEditor

VIEWS = 3


@pytest.fixture(scope="module")
def editing(tiny_export):
    return load_editing_model(tiny_export)


def _dual_call(editing, prompts, control, latents):
    """One guided call of B = 2 objects (source, target) x VIEWS views."""
    cameras = orbit_trajectory(VIEWS, 30.0, 4.0, 64)
    K, w2c = cameras.K[None], cameras.w2c[None]
    pose = pose_features(K, w2c, (64, 64))
    texts = encode_prompts(editing.text_encoder, editing.tokenizer, prompts)
    empty = encode_prompts(editing.text_encoder, editing.tokenizer, [""]).expand(2, -1, -1)
    two = [x.expand(2, *x.shape[1:]) for x in (K, w2c, pose)]
    conditions = ViewConditions(texts, empty, *two, (64, 64))
    with torch.no_grad():
        eps, _ = prior_predictions(editing.model, latents, torch.full((2 * VIEWS,), 500),
                                   conditions, 5.0, control=control)  # fmt: skip
    return eps.chunk(2)


def test_controls_change_the_target_only_and_only_when_on(editing):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2 * VIEWS, 4, 8, 8, generator=generator)
    prompts = ["a red ball", "a blue box"]
    shared, index = token_alignment(editing.tokenizer, *prompts)
    plain_s, plain_t = _dual_call(editing, prompts, None, latents)
    off = AttentionControl(VIEWS, shared_tokens=shared, source_index=index)
    off_s, off_t = _dual_call(editing, prompts, off, latents)
    assert torch.equal(off_s, plain_s) and torch.equal(off_t, plain_t)
    for switch in ("inject_self", "replace_cross"):
        control = dataclasses.replace(off, **{switch: True})
        source, target = _dual_call(editing, prompts, control, latents)
        # The source never changes (the explicit-probability path rounds differently from SDPA).
        assert torch.allclose(source, plain_s, atol=1e-5), switch
        assert (target - plain_t).abs().max() > 1e-4, switch


def test_kv_propagation_takes_every_objects_first_view(editing):
    generator = torch.Generator().manual_seed(4)
    latents = torch.randn(2 * VIEWS, 4, 8, 8, generator=generator)
    prompts = ["a red ball", "a blue box"]
    control = AttentionControl(VIEWS, propagate_first=True)
    source, target = _dual_call(editing, prompts, control, latents)
    plain_s, _ = _dual_call(editing, prompts, None, latents)
    assert (source - plain_s).abs().max() > 1e-4  # both branches propagate
    rows = torch.arange(4 * VIEWS, dtype=torch.float32)[:, None]
    assert control.from_first_view(rows).flatten().tolist() == [
        float(VIEWS * (r // VIEWS)) for r in range(4 * VIEWS)
    ]


def test_same_prompt_with_controls_keeps_the_branches_equal(editing):
    generator = torch.Generator().manual_seed(1)
    half = torch.randn(VIEWS, 4, 8, 8, generator=generator)
    prompts = ["a red ball", "a red ball"]
    shared, index = token_alignment(editing.tokenizer, *prompts)
    control = AttentionControl(VIEWS, True, True, True, shared, index)
    source, target = _dual_call(editing, prompts, control, torch.cat([half, half]))
    assert torch.allclose(source, target, atol=1e-5)


def _scene() -> GaussianScene:
    generator = torch.Generator().manual_seed(2)
    return GaussianScene.random_in_sphere(300, 0.6, sh_degree=0, generator=generator)


def _config(**changes) -> TrameConfig:
    fit = FitConfig(sh_degree=0, densify_until=0)
    base = TrameConfig(steps=6, start=3, updates=((0, 2),), keyframe_every=2, fit=fit)
    return dataclasses.replace(base, **changes)


def _editor(editing, source="a red ball", target="a red ball", **changes) -> TrameEditor:
    cameras = orbit_trajectory(4, 30.0, 4.0, 64)
    return TrameEditor(editing, _scene(), cameras, source, target, _config(**changes))


def test_identity_edit_keeps_the_scene(editing):
    editor = _editor(editing, kappa=((0, 1.0),))
    before = editor.render_all(editor.original)
    while not editor.done:
        editor.step()
    after = editor.render_all(editor.scene())
    # kappa = 1 with equal prompts: the target is the source's DDCM branch: tgt0 = src0 exactly.
    assert torch.allclose(editor.tgt0, editor.src0, atol=1e-4)
    assert (after - before).abs().mean() < 0.02
    assert len(editor.reports) == 3 and [r.k for r in editor.reports] == [3, 4, 5]


def test_the_loop_is_seeded_and_resumable(editing, tmp_path):
    whole = _editor(editing, target="a blue box")
    while not whole.done:
        whole.step()
    first = _editor(editing, target="a blue box")
    first.step()
    first.save(tmp_path / "checkpoint")
    resumed = _editor(editing, target="a blue box")
    resumed.load(tmp_path / "checkpoint")
    assert resumed.position == 1
    while not resumed.done:
        resumed.step()
    for name, value in whole.scene().tensors().items():
        assert torch.equal(value, resumed.scene().tensors()[name]), name
    assert torch.equal(whole.tgt0, resumed.tgt0)
    with pytest.raises(ValueError, match="another edit"):
        _editor(editing, target="a green can").load(tmp_path / "checkpoint")


def test_without_tas_the_scene_waits_for_the_2d_edit(editing):
    editor = _editor(editing, target="a blue box", tas=False)
    reports = []
    while not editor.done:
        reports.append(editor.step())
    assert [r.updates for r in reports] == [0, 0, editor.config.total_updates(4)]


def test_bad_scene_inputs(editing):
    cameras = orbit_trajectory(4, 30.0, 4.0, 64)
    far = dataclasses.replace(_scene(), means=_scene().means + 50.0)
    with pytest.raises(ValueError, match=r"not in view of cameras \[0, 1, 2, 3\]"):
        TrameEditor(editing, far, cameras, "a", "b", _config())
    with pytest.raises(ValueError, match="holds no Gaussian"):
        TrameEditor(editing, _scene(), cameras, "a", "b", _config(),
                    selected=torch.zeros(300, dtype=torch.bool))  # fmt: skip
    with pytest.raises(ValueError, match="trame.updates"):
        _config(updates=((0, -1),))
    with pytest.raises(ValueError, match=r"held-out views \[7\]"):
        TrameEditor(editing, _scene(), cameras, "a", "b", _config(held_out=(7,)))


def test_held_out_views_are_never_trained_on(editing, monkeypatch):
    from viewdiff.trame import editor as trame

    seen = []
    original = trame.render

    def spy(scene, K, w2c, *args, **kwargs):
        if scene.means.requires_grad and torch.is_grad_enabled():
            seen.append(w2c.clone())
        return original(scene, K, w2c, *args, **kwargs)

    monkeypatch.setattr(trame, "render", spy)
    editor = _editor(editing, target="a blue box", held_out=(1, 3))
    while not editor.done:
        editor.step()
    trained = {tuple(w.flatten().tolist()) for w in seen}
    assert trained == {tuple(editor.cameras.w2c[v].flatten().tolist()) for v in (0, 2)}
    from viewdiff.trame.metrics import edit_metrics

    metrics = edit_metrics(editor, orbit_trajectory(4, 30.0, 4.0, 64))
    assert 0 < metrics["held_out_psnr"] < 100


def _run(args):
    from infer import main

    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def test_edit_scene_command(tiny_export, tmp_path, capsys):
    scene = tmp_path / "scene.ply"
    write_gaussian_ply(scene, _scene())
    out = tmp_path / "out"
    args = ["edit-scene", "--checkpoint", str(tiny_export), "--scene", str(scene), "--views", "4",
            "--source-prompt", "a red ball", "--prompt", "a blue ball", "--out", str(out),
            "--steps", "4", "--start", "2", "--keyframe-every", "2"]  # fmt: skip
    assert _run(args) == 0
    info = json.loads((out / "edit.json").read_text())
    assert set(info["metrics"]) == {"consistency_psnr", "consistency_ssim", "outside_psnr"}
    assert _run([*args, "--held-out", "9"]) == 2
    assert len(info["steps"]) == 2 and (out / "scene.ply").is_file()
    assert (out / "before_after.gif").is_file() and (out / "progress" / "step-03.png").is_file()
    assert (out / "checkpoint" / "state.json").is_file()
    # Bad input: exit 2 with one line naming it.
    capsys.readouterr()
    assert _run([*args[:4], str(tmp_path / "nope.ply"), *args[5:]]) == 2
    assert "nope.ply" in capsys.readouterr().err
    assert _run([*args, "--region", "5", "5", "5", "6", "6", "6"]) == 2
    assert "no Gaussian" in capsys.readouterr().err
    assert _run([*args[:2], str(tmp_path), *args[3:]]) == 2
    assert _run([*args, "--words", "dragon"]) == 2
    assert "in neither prompt" in capsys.readouterr().err
    traced = tmp_path / "traced"
    retraced = [str(traced) if a == str(out) else a for a in args]
    assert _run([*retraced, "--attention-region"]) == 0
    assert (traced / "attention_region.png").is_file()


def test_ddpm_sampler_identity_edit_retraces_the_source(editing):
    editor = _editor(editing, sampler="ddpm", start=0, updates=((0, 0),))
    assert torch.equal(editor.sampler.x_tgt, editor.sampler.source_xs[0])
    while not editor.done:
        editor.step()
    # Equal prompts and guidance: the stored noise maps give the renders' latents back.
    assert (editor.sampler.x_tgt - editor.src0).abs().max() <= 1e-5
    assert torch.allclose(editor.tgt0, editor.src0, atol=1e-4)


def test_ddpm_sampler_edits_and_resumes(editing, tmp_path):
    whole = _editor(editing, target="a blue box", sampler="ddpm")
    while not whole.done:
        whole.step()
    assert (whole.tgt0 - whole.src0).abs().max() > 1e-3
    first = _editor(editing, target="a blue box", sampler="ddpm")
    first.step()
    first.save(tmp_path / "checkpoint")
    resumed = _editor(editing, target="a blue box", sampler="ddpm")
    resumed.load(tmp_path / "checkpoint")
    while not resumed.done:
        resumed.step()
    assert torch.equal(whole.sampler.x_tgt, resumed.sampler.x_tgt)
    assert torch.equal(whole.tgt0, resumed.tgt0)


def test_attention_region_is_lifted_from_the_changed_words(editing):
    from viewdiff.trame.region import attention_maps, lift_region, normalise_maps, project_points

    editor = _editor(editing, target="a blue ball")
    maps = attention_maps(editor.prior, editor.src0)
    assert maps.shape == (4, 64, 64) and maps.amin() == 0 and maps.amax() == 1
    # Different words give different evidence; identical prompts give none.
    other = attention_maps(editor.prior, editor.src0, ([3], [3]))
    assert (other - maps).abs().max() > 1e-3
    with pytest.raises(ValueError, match="share every word"):
        same = _editor(editing)
        attention_maps(same.prior, same.src0)
    # Voting: maps that are the renders of a known part of the scene give that part back.
    means = editor.original.means
    part = means[:, 0] > 0.2
    rendered = normalise_maps(edit_masks_all(editor, part)[:, 0])
    selected = lift_region(rendered, means, editor.cameras)
    uv, inside = project_points(means, editor.cameras)
    assert inside.all()  # the tiny scene is in every view
    recall = (selected & part).sum() / part.sum()
    far = means[:, 0] < -0.3  # well away from the part: rarely selected (occlusion aside)
    assert recall > 0.9 and (selected & far).sum() / far.sum() < 0.2
    editor.set_region(selected)
    assert editor.masks.sum() < edit_masks_all(editor).sum()


def edit_masks_all(editor, selected=None):
    from viewdiff.trame.region import edit_masks

    return edit_masks(editor.original, editor.cameras, selected)
