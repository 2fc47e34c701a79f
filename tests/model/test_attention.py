"""Cross-frame attention and the pose-conditioned LoRA, on standalone diffusers attentions."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from viewdiff.model.attention import MultiViewAttnProcessor, MultiViewCondition
from viewdiff.model.lora import LoRALinear, PoseLoRA

DIM, HEADS, TEXT_DIM, TEMB_DIM, TOKENS = 32, 2, 24, 40, 16


def make_attention(cross: bool, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(
        query_dim=DIM,
        heads=HEADS,
        dim_head=DIM // HEADS,
        cross_attention_dim=TEXT_DIM if cross else None,
    )


def make_lora(cross: bool, rank: int = 4) -> PoseLoRA:
    return PoseLoRA(
        query_dim=DIM,
        key_dim=TEXT_DIM if cross else DIM,
        inner_dim=DIM,
        pose_dim=10,
        rank=rank,
        temb_dim=None if cross else TEMB_DIM,
        timestep_dim=0 if cross else 8,
    )


def condition(rows: int, n_views: int, seed: int = 1) -> MultiViewCondition:
    generator = torch.Generator().manual_seed(seed)
    return MultiViewCondition(
        n_views=n_views,
        pose=torch.randn(rows, 10, generator=generator),
        temb=torch.randn(rows, TEMB_DIM, generator=generator),
        timesteps=torch.zeros(rows),
        K=torch.eye(3).expand(rows, 3, 3),
        w2c=torch.eye(4).expand(rows, 4, 4),
        image_size_hw=(32, 32),
    )


def perturb(module: torch.nn.Module) -> None:
    """Give the zero-initialised LoRA up-projections random weights, so that LoRA acts."""
    torch.manual_seed(3)
    for sub in module.modules():
        if isinstance(sub, LoRALinear):
            torch.nn.init.normal_(sub.up.weight, std=0.5)


def naive_cross_frame(attn: Attention, hidden: torch.Tensor, n_views: int) -> torch.Tensor:
    """Reference semantics: each view's queries attend to the keys of all its object's views."""
    rows, length, _ = hidden.shape
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    head_dim = DIM // HEADS

    def heads(x):  # (rows, L, D) -> (rows, H, L, d)
        return x.view(rows, length, HEADS, head_dim).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    out = torch.empty_like(q)
    for row in range(rows):
        first = row - row % n_views
        keys = torch.cat([k[j] for j in range(first, first + n_views)], dim=1)  # (H, N*L, d)
        values = torch.cat([v[j] for j in range(first, first + n_views)], dim=1)
        weights = torch.softmax(q[row] @ keys.transpose(-1, -2) / head_dim**0.5, dim=-1)
        out[row] = weights @ values
    return attn.to_out[0](out.transpose(1, 2).reshape(rows, length, DIM))


@pytest.mark.parametrize("cross", [False, True])
def test_one_view_with_zero_lora_is_the_stock_processor(cross):
    attn = make_attention(cross)
    hidden = torch.randn(3, TOKENS, DIM)
    text = torch.randn(3, 7, TEXT_DIM) if cross else None
    expected = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
    processor = MultiViewAttnProcessor(cross_frame=not cross, lora=make_lora(cross))
    out = processor(attn, hidden, encoder_hidden_states=text, multiview=condition(3, 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_cross_frame_attention_attends_to_all_views_of_the_object():
    attn, n_views = make_attention(cross=False), 3
    hidden = torch.randn(2 * n_views, TOKENS, DIM)  # two objects
    processor = MultiViewAttnProcessor(cross_frame=True)
    out = processor(attn, hidden, multiview=condition(2 * n_views, n_views))
    torch.testing.assert_close(out, naive_cross_frame(attn, hidden, n_views), rtol=0, atol=1e-5)
    # Not self-attention: every view's output depends on the other views.
    alone = AttnProcessor2_0()(attn, hidden)
    assert (out - alone).abs().amax() > 1e-3


def test_objects_do_not_see_each_other():
    attn, n_views = make_attention(cross=False), 2
    lora = make_lora(cross=False)
    perturb(lora)
    processor = MultiViewAttnProcessor(cross_frame=True, lora=lora)
    hidden = torch.randn(2 * n_views, TOKENS, DIM)
    changed = hidden.clone()
    changed[n_views:] += torch.randn(n_views, TOKENS, DIM)  # the second object only
    cond = condition(2 * n_views, n_views)
    out, out_changed = (
        processor(attn, hidden, multiview=cond),
        processor(attn, changed, multiview=cond),
    )
    torch.testing.assert_close(out[:n_views], out_changed[:n_views], rtol=0, atol=0)
    assert (out[n_views:] - out_changed[n_views:]).abs().amax() > 1e-3


@pytest.mark.parametrize("cross", [False, True])
def test_pose_lora_conditions_on_the_camera(cross):
    attn, lora = make_attention(cross), make_lora(cross)
    perturb(lora)
    processor = MultiViewAttnProcessor(cross_frame=False, lora=lora)
    hidden = torch.randn(2, TOKENS, DIM)
    text = torch.randn(2, 7, TEXT_DIM) if cross else None
    cond = condition(2, 1, seed=1)
    moved = MultiViewCondition(**{**cond.__dict__, "pose": cond.pose + 1.0})
    out = processor(attn, hidden, encoder_hidden_states=text, multiview=cond)
    out_moved = processor(attn, hidden, encoder_hidden_states=text, multiview=moved)
    assert (out - out_moved).abs().amax() > 1e-3
    stock = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
    assert (out - stock).abs().amax() > 1e-3


def test_lora_shapes_follow_the_reference():
    self_lora, cross_lora = make_lora(cross=False), make_lora(cross=True)
    # q/k/v see [input, pose (10), timestep projection (8, attn1 only)]; out sees the output only.
    assert self_lora.to_q.down.in_features == DIM + 10 + 8
    assert self_lora.to_k.down.in_features == DIM + 10 + 8
    assert cross_lora.to_q.down.in_features == DIM + 10
    assert cross_lora.to_k.down.in_features == TEXT_DIM + 10
    assert self_lora.to_out.down.in_features == cross_lora.to_out.down.in_features == DIM
    assert cross_lora.timestep_proj is None
    assert self_lora.timestep_proj[0].in_features == TEMB_DIM
    assert self_lora.timestep_proj[2].out_features == 8
    for lora in (self_lora, cross_lora):
        for layer in (lora.to_q, lora.to_k, lora.to_v, lora.to_out):
            assert torch.count_nonzero(layer.up.weight) == 0  # starts as the base model


def test_bad_input_is_refused():
    attn = make_attention(cross=False)
    processor = MultiViewAttnProcessor(cross_frame=True)
    with pytest.raises(ValueError, match="cross_attention_kwargs"):
        processor(attn, torch.randn(4, TOKENS, DIM))
    with pytest.raises(ValueError, match="not whole objects of 3 views"):
        processor(attn, torch.randn(4, TOKENS, DIM), multiview=condition(4, 3))
    with pytest.raises(ValueError, match="attention mask"):
        processor(
            attn,
            torch.randn(4, TOKENS, DIM),
            attention_mask=torch.zeros(4, 1, TOKENS),
            multiview=condition(4, 2),
        )
    with pytest.raises(ValueError, match="unknown attention backend"):
        MultiViewAttnProcessor(cross_frame=True, backend="flash")
    lora_processor = MultiViewAttnProcessor(cross_frame=False, lora=make_lora(cross=False))
    bad_pose = MultiViewCondition(**{**condition(4, 1).__dict__, "pose": torch.randn(4, 7)})
    with pytest.raises(ValueError, match="pose features of width 10"):
        lora_processor(attn, torch.randn(4, TOKENS, DIM), multiview=bad_pose)


def test_xformers_backend_is_refused_off_cuda():
    attn = make_attention(cross=False)
    processor = MultiViewAttnProcessor(cross_frame=True, backend="xformers")
    with pytest.raises(RuntimeError, match="CUDA"):
        processor(attn, torch.randn(4, TOKENS, DIM), multiview=condition(4, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xformers_backend_matches_sdpa_on_cuda():
    pytest.importorskip("xformers")
    attn = make_attention(cross=False).cuda()
    hidden = torch.randn(6, TOKENS, DIM, device="cuda")
    cond = condition(6, 3)
    cond = MultiViewCondition(
        **{k: v.cuda() if torch.is_tensor(v) else v for k, v in cond.__dict__.items()}
    )
    sdpa = MultiViewAttnProcessor(cross_frame=True)(attn, hidden, multiview=cond)
    xformers = MultiViewAttnProcessor(cross_frame=True, backend="xformers")(
        attn, hidden, multiview=cond
    )
    torch.testing.assert_close(xformers, sdpa, rtol=1e-3, atol=1e-4)
