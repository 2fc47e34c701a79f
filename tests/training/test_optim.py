"""The optimiser's parameter groups: which parameters train at which learning rate and decay."""

from viewdiff.config import ModelConfig, TrainConfig
from viewdiff.model import MultiViewUNet
from viewdiff.tiny import build_unet, unet_config
from viewdiff.training.optim import parameter_groups


def test_the_ray_encoders_train_with_the_unet_and_only_the_field_with_the_renderer():
    config = ModelConfig(pretrained_model="tiny", projection_channels=8, voxel_grid_size=8)
    model = MultiViewUNet(build_unet(unet_config("tiny"), seed=0), config)
    train = TrainConfig(adam_weight_decay=0.03, renderer_weight_decay=0.001)
    groups = {group["name"]: group for group in parameter_groups(model, train)}
    assert set(groups) == {"unet", "added", "renderer"}
    ids = [id(p) for group in groups.values() for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))

    def names(group: str) -> set[str]:
        members = {id(p) for p in groups[group]["params"]}
        return {name for name, p in model.named_parameters() if id(p) in members}

    # As the reference: linear_ray at learning_rate with adam_weight_decay (train_util.py:529-537),
    # only volume_renderer's own parameters at vol_rend_learning_rate, vol_rend_adam_weight_decay.
    encoders = {name for name, _ in model.named_parameters() if ".renderer.ray_encoder." in name}
    renderers = {name for name, _ in model.named_parameters() if ".renderer." in name}
    assert len(encoders) == 2 * len(model.projection_layers) > 0
    assert encoders <= names("added")
    assert names("renderer") == renderers - encoders
    assert (groups["added"]["lr"], groups["added"]["weight_decay"]) == (5e-5, 0.03)
    assert (groups["renderer"]["lr"], groups["renderer"]["weight_decay"]) == (1e-3, 0.001)
