"""The paper's projection layer: inside the transformer block, replacing its features, with the
reference's proj_in / proj_out stacks (issue 30: model.projection_merge/in/out)."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_multiview_unet import inputs  # tests/model is on the path pytest imports tests from

from viewdiff.cameras.orbits import intrinsics_from_fov, orbit
from viewdiff.config import LEGACY_DEFAULTS, ConfigError, ModelConfig
from viewdiff.model import MultiViewUNet
from viewdiff.model.projected_block import ProjectedTransformerBlock
from viewdiff.model.projection import ProjectionLayer
from viewdiff.tiny import build_unet, unet_config

FIXTURE = "tests/model/fixtures/reference_projection_io.safetensors"
PAPER = ModelConfig(
    pretrained_model="tiny",
    pose_lora_rank=4,
    projection_channels=8,
    voxel_grid_size=8,
    render_samples=8,
    density_noise=0.0,
)
SAVED_BEFORE = {k: v for (s, k), v in LEGACY_DEFAULTS.items() if s == "model"}
LEGACY = ModelConfig(**{**PAPER.__dict__, **SAVED_BEFORE, "density_noise": 0.0})


def test_the_paper_keys_default_to_the_reference_and_saved_configs_to_the_residual():
    config = ModelConfig()
    assert (config.projection_merge, config.projection_in, config.projection_out) == (
        "replace", "multiple", "multiple")  # fmt: skip
    assert config.voxel_grid_by_width
    assert (LEGACY.projection_merge, LEGACY.projection_in, LEGACY.projection_out) == (
        "residual", "single", "zero")  # fmt: skip
    with pytest.raises(ConfigError, match="model.projection_out: zero .* replace"):
        ModelConfig(projection_out="zero").check()
    with pytest.raises(ConfigError, match="model.projection_merge: unknown 'add'"):
        ModelConfig(projection_merge="add").check()  # type: ignore[arg-type]


# Parameters of the reference's stacks at SD 2.1's 1280 channels and dim_3d_latent 16, written
# out from its code (model/projection/layer.py:97-102, :130-145, weights + biases):
#   proj_in_2d   conv3x3 1280->1280 (14,745,600 + 1,280) + conv3x3 1280->16 (184,320 + 16)
#                + conv1x1 16->16 (256 + 16)                                     = 14,931,488
#   proj_out_2d_fg / _bg  conv1x1 16->16 (256 + 16) + 16->1280 (20,480 + 1,280)
#                + 1280->1280 (1,638,400 + 1,280)                                =  1,661,712 each
REFERENCE_STACKS_AT_1280 = {
    "proj_in_2d": 14_931_488,
    "proj_out_2d_fg": 1_661_712,
    "proj_out_2d_bg": 1_661_712,
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_stacks_have_the_references_parameter_counts_at_sd21_widths():
    with safe_open(FIXTURE, "pt") as fixture:  # counted on the reference's modules
        assert json.loads(fixture.metadata()["parameters_at_1280"]) == REFERENCE_STACKS_AT_1280
    layer = ProjectionLayer(1280, 16, 32, 8, True, 1280, merge="replace",
                            projection_in="multiple", projection_out="multiple")  # fmt: skip
    assert count(layer.compress) == REFERENCE_STACKS_AT_1280["proj_in_2d"]
    assert count(layer.expand_foreground) == REFERENCE_STACKS_AT_1280["proj_out_2d_fg"]
    assert count(layer.expand_background) == REFERENCE_STACKS_AT_1280["proj_out_2d_bg"]
    assert count(layer.norm) == 2 * 1280  # the reference's norm_cf, a LayerNorm


def reference_weights_as_ours(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's stack names -> ours (ConvBlock's ``conv`` is our pair's first module)."""
    renamed = {}
    for name, value in weights.items():
        name = name.removeprefix("weights.")
        for theirs, ours in (("proj_in_2d", "compress"), ("proj_out_2d_fg", "expand_foreground"),
                             ("proj_out_2d_bg", "expand_background")):  # fmt: skip
            name = name.replace(theirs, ours)
        renamed[name.replace(".conv.", ".0.")] = value
    return renamed


def test_proj_in_and_the_blended_proj_out_equal_the_references():
    fixture = load_file(FIXTURE)
    channels, latent = fixture["features"].shape[1], fixture["proj_in"].shape[1]
    modes = dict(merge="replace", projection_in="multiple", projection_out="multiple")
    layer = ProjectionLayer(channels, latent, 4, 8, True, 16, **modes).double()
    weights = reference_weights_as_ours({k: v for k, v in fixture.items() if k.startswith("w")})
    missing, unexpected = layer.load_state_dict(weights, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(("compress", "expand"))]
    with torch.no_grad():
        compressed = layer.compress(fixture["features"])
        rendered = torch.cat([fixture["rendered"], fixture["opacity"]], dim=1)
        output = layer.expand_rendered(rendered)
    torch.testing.assert_close(compressed, fixture["proj_in"], rtol=0, atol=1e-10)
    torch.testing.assert_close(output, fixture["output"], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def base_unet():
    return build_unet(unet_config("tiny"), seed=0)


def first_projected_block(model: MultiViewUNet):
    """(name, block, projection layer key) of the first block holding a projection layer."""
    for name, module in model.unet.named_modules():
        if isinstance(module, ProjectedTransformerBlock):
            return name, module, name.replace(".", "_")
    raise AssertionError("no ProjectedTransformerBlock")


def block_call(model: MultiViewUNet, block_name: str, batch: dict):
    """The hidden states, encoder states and kwargs one projected block is called with."""
    seen = {}

    def record(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    handle = model.unet.get_submodule(block_name).register_forward_pre_hook(
        record, with_kwargs=True
    )
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen["args"], seen["kwargs"]


def test_replace_makes_the_block_depend_on_its_input_only_through_the_projection(base_unet):
    model = MultiViewUNet(copy.deepcopy(base_unet), PAPER).eval()
    name, block, key = first_projected_block(model)
    args, kwargs = block_call(model, name, inputs(objects=1))
    hidden = args[0] if args else kwargs.pop("hidden_states")
    # The projection layer's output held fixed: whatever h was, the block computes the same.
    layer = model.projection_layers[key]
    side = int(hidden.shape[1] ** 0.5)  # square latents: a square token grid
    fixed = torch.randn(hidden.shape[0], hidden.shape[2], side, side)  # (B*N, C, h, w)
    layer.forward = lambda features, *rest, **kwargs: fixed  # type: ignore[method-assign]
    with torch.no_grad():
        out = block(hidden, **kwargs)
        moved = block(hidden + torch.randn_like(hidden), **kwargs)
    torch.testing.assert_close(moved, out, rtol=0, atol=0)


def test_replace_feeds_the_projection_the_normalised_features_and_uses_its_output(base_unet):
    model = MultiViewUNet(copy.deepcopy(base_unet), PAPER).eval()
    name, block, key = first_projected_block(model)
    args, kwargs = block_call(model, name, inputs(objects=1))
    hidden = args[0] if args else kwargs.pop("hidden_states")
    layer = model.projection_layers[key]
    seen = {}
    forward = layer.forward

    def spy(features, *rest, **kwargs):
        seen["features"] = features
        seen["output"] = forward(features, *rest, **kwargs)
        return seen["output"]

    layer.forward = spy  # type: ignore[method-assign]
    with torch.no_grad():
        out = block(hidden, **kwargs)
    # Its output, as tokens, is h before the feed-forward: out = h + ff(norm3(h)).
    h = seen["output"].flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, h + block.ff(block.norm3(h)), rtol=1e-6, atol=1e-6)
    assert isinstance(layer.norm, torch.nn.LayerNorm)


def test_replace_is_not_the_base_unet_at_initialisation_and_residual_is(base_unet):
    batch = inputs(objects=2, n_views=1)
    with torch.no_grad():
        expected = base_unet(batch["latents"], batch["timesteps"],
                             batch["encoder_hidden_states"]).sample  # fmt: skip
        legacy = MultiViewUNet(copy.deepcopy(base_unet), LEGACY).eval()(**batch)
        paper = MultiViewUNet(copy.deepcopy(base_unet), PAPER).eval()(**batch)
    torch.testing.assert_close(legacy, expected, rtol=0, atol=1e-5)
    assert (paper - expected).abs().amax() > 1e-2  # every feature of those blocks went through


def test_the_base_unets_state_dict_keeps_diffusers_names(base_unet):
    model = MultiViewUNet(copy.deepcopy(base_unet), PAPER)
    assert model.unet.state_dict().keys() == base_unet.state_dict().keys()
    assert not any(k.startswith("unet.") for k in model.added_state_dict())
    keys = list(model.projection_layers)
    assert keys and all("_transformer_blocks_" in k for k in keys)


def test_grids_scale_with_the_stage_width_as_the_references(base_unet):
    # dim_3d_grid // scale, scale 1, 2, 4 at 320, 640, 1280 channels: G * widest / C
    config = ModelConfig(**{**PAPER.__dict__, "projection_blocks": ("down_blocks.1", "mid_block")})
    model = MultiViewUNet(copy.deepcopy(base_unet), config)
    grids = {layer.norm.normalized_shape[0]: layer.grid_size
             for layer in model.projection_layers.values()}  # fmt: skip
    assert grids == {32: 12, 48: 8}  # the tiny UNet's widths 32 and 48 (widest), G = 8
    fixed = ModelConfig(**{**config.__dict__, "voxel_grid_by_width": False})
    for layer in MultiViewUNet(copy.deepcopy(base_unet), fixed).projection_layers.values():
        assert layer.grid_size == 8
    odd = ModelConfig(**{**config.__dict__, "voxel_grid_size": 6})  # 6 x 48 / 32 = 9
    with pytest.raises(ValueError, match="model.voxel_grid_by_width: a 32-channel stage"):
        MultiViewUNet(copy.deepcopy(base_unet), odd)


def test_a_recomputed_block_reuses_the_density_noise_it_drew(base_unet):
    # Gradient checkpointing recomputes the transformer blocks, and with them the projection
    # layers inside; the noise drawn from the step's generator must be drawn once per call.
    config = ModelConfig(**{**PAPER.__dict__, "density_noise": 1.0})
    grads, built = [], MultiViewUNet(copy.deepcopy(base_unet), config)
    for checkpointing in (False, True):
        model = copy.deepcopy(built).train()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
        generator = torch.Generator().manual_seed(3)
        model(**inputs(objects=1), noise_generator=generator).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_normalised_rendered_features_make_a_new_layer_depend_on_the_cameras():
    torch.manual_seed(0)
    features = torch.randn(4, 12, 8, 8)  # one object, 4 views
    K = intrinsics_from_fov(49.0, 64, 64).expand(4, 3, 3)
    w2c = orbit(4, 25.0, 4.5)
    temb, timesteps = torch.zeros(4, 16), torch.full((4,), 500)

    def change(normalise: bool) -> float:
        torch.manual_seed(1)
        layer = ProjectionLayer(
            12,
            8,
            8,
            8,
            True,
            16,
            merge="replace",
            projection_in="multiple",
            projection_out="multiple",
            normalise_rendered=normalise,
        ).eval()
        with torch.no_grad():
            true = layer(features, K, w2c, (64, 64), temb, timesteps, 4)
            rolled = layer(features, K, w2c.roll(1, 0), (64, 64), temb, timesteps, 4)
        return float((true - rolled).abs().mean() / true.abs().mean())

    # The reference's layer starts almost blind to the cameras; normalised, it sees them.
    assert change(False) < 0.05 < 0.2 < change(True), (change(False), change(True))
