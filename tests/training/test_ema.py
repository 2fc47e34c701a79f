"""The EMA of the trained weights: diffusers' EMAModel behind our interface, against the
hand-written average it replaced, and the checkpoint format that average wrote."""

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

from viewdiff.training.ema import EMA


def hand_written_update(shadow: dict, layer: nn.Module, updates: int, decay: float) -> None:
    """The average before the wrapper: d_k = min(decay, (1 + k) / (10 + k)), k 0-based."""
    weight = 1.0 - min(decay, (1 + updates) / (10 + updates))
    for name, p in layer.named_parameters():
        shadow[name].lerp_(p.detach().float(), weight)


def train_a_little(layer: nn.Module, generator: torch.Generator) -> None:
    """A stand-in for an optimiser step: a small random move of every parameter."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)


def test_ema_follows_the_parameters_with_warm_up_and_swaps_in():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema = EMA(list(layer.named_parameters()), decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    ema.update()  # d_1 = 0: the first update copies
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 2), 3.0))
    with torch.no_grad():
        layer.weight.fill_(5.0)
    ema.update()  # d_2 = min(0.9, 2/11)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 2), (2 * 3 + 9 * 5) / 11))
    for _ in range(98):
        ema.update()
    assert ema.updates == 100 and ema.current_decay() == 0.9
    with ema.swapped_in():
        torch.testing.assert_close(layer.weight, ema.shadow["weight"])
    assert (layer.weight == 5.0).all()
    restored = EMA(list(layer.named_parameters()), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 100 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"updates": torch.tensor(1)})
    wrong = {**ema.state_dict(), "shadow.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"shadow.bias has shape \(3,\)"):
        restored.load_state_dict(wrong)


@pytest.mark.parametrize("decay", [0.9, 0.9999])
def test_ema_is_diffusers_ema_model_and_agrees_with_the_hand_written_average(decay):
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    ema = EMA(list(layer.named_parameters()), decay)
    library = EMAModel(
        [p.detach().clone() for p in layer.parameters()], decay=decay, use_ema_warmup=False
    )
    old = {name: p.detach().float().clone() for name, p in layer.named_parameters()}
    generator = torch.Generator().manual_seed(1)
    for k in range(50):
        train_a_little(layer, generator)
        ema.update()
        library.step(layer.parameters())
        hand_written_update(old, layer, k, decay)
    for (name, _), expected in zip(layer.named_parameters(), library.shadow_params, strict=True):
        assert torch.equal(ema.shadow[name], expected)
        # Only d_1 differs (0.1 before, 0 now); its trace after 50 updates is below 1e-9
        # relative, what is left is float32 rounding (measured: 3e-8).
        torch.testing.assert_close(ema.shadow[name], old[name], rtol=0, atol=1e-7)
    assert ema.current_decay() == library.get_decay(51) == min(decay, 51 / 60)


def test_an_ema_state_written_by_the_hand_written_average_loads_and_resumes(tmp_path):
    decay = 0.99
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    generator = torch.Generator().manual_seed(2)
    # An old run: 20 updates of the hand-written average, saved in its format.
    old = {name: p.detach().float().clone() for name, p in layer.named_parameters()}
    for k in range(20):
        train_a_little(layer, generator)
        hand_written_update(old, layer, k, decay)
    state = {f"shadow.{name}": value for name, value in old.items()}
    save_file({**state, "updates": torch.tensor(20, dtype=torch.int64)}, tmp_path / "ema.st")
    # Resumed by the wrapper, it continues as the old run would have, from the same decays.
    ema = EMA(list(layer.named_parameters()), decay)
    ema.load_state_dict(load_file(tmp_path / "ema.st"), source="old checkpoint")
    assert ema.updates == 20 and all(torch.equal(ema.shadow[n], old[n]) for n in old)
    for k in range(20, 40):
        train_a_little(layer, generator)
        assert ema.current_decay() == min(decay, (1 + k) / (10 + k))
        ema.update()
        hand_written_update(old, layer, k, decay)
    for name in old:
        torch.testing.assert_close(ema.shadow[name], old[name], rtol=0, atol=1e-7)
    assert set(ema.state_dict()) == set(state) | {"updates"}


def test_an_ema_resumed_from_its_state_continues_exactly(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    start = {name: p.detach().clone() for name, p in layer.named_parameters()}
    generator = torch.Generator().manual_seed(3)
    through = EMA(list(layer.named_parameters()), 0.999)
    for _ in range(10):
        train_a_little(layer, generator)
        through.update()
    save_file(through.state_dict(), tmp_path / "ema.st")
    moves = torch.Generator().manual_seed(4)
    for _ in range(10):
        train_a_little(layer, moves)
        through.update()
    # Another process: same parameters at step 10, the EMA from the file.
    resumed_layer = nn.Linear(8, 8)
    with torch.no_grad():
        for name, p in resumed_layer.named_parameters():
            p.copy_(start[name])
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        train_a_little(resumed_layer, generator)
    resumed = EMA(list(resumed_layer.named_parameters()), 0.999)
    resumed.load_state_dict(load_file(tmp_path / "ema.st"))
    moves = torch.Generator().manual_seed(4)
    for _ in range(10):
        train_a_little(resumed_layer, moves)
        resumed.update()
    assert resumed.updates == through.updates == 20
    for name in through.shadow:
        assert torch.equal(resumed.shadow[name], through.shadow[name])
