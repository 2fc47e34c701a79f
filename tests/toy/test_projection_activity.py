"""The projection-activity measure reads every projection layer of a prior through hooks and
sees which ones carry camera-dependent features, and which pass on where the other views were."""

from pathlib import Path

from viewdiff.config import DataConfig
from viewdiff.inference.heldout import heldout_objects
from viewdiff.model.projection import ProjectionLayer
from viewdiff.prior.load import load_export
from viewdiff.toy.assets import TOY_MULTIVIEW
from viewdiff.toy.projection_activity import projection_activity


def test_the_shipped_priors_outer_layers_vary_with_the_cameras(toy_heldout_shards: Path):
    prior = load_export(TOY_MULTIVIEW)
    data = DataConfig(shards=str(toy_heldout_shards), image_size=64, n_views=4, num_workers=0,
                      crop="object")  # fmt: skip
    hooks = sum(len(m._forward_hooks) for m in prior.model.modules())
    layers = projection_activity(prior, list(heldout_objects(data, 0, 3)))
    names = [n for n, m in prior.model.named_modules() if isinstance(m, ProjectionLayer)]
    assert [layer.name for layer in layers] == names and len(names) == 3
    assert all(0 <= layer.opacity <= 1 for layer in layers)
    # Measured on this prior: its up_blocks.3 layers' output varies over pixels about as much
    # as its size and changes ~27% with rolled cameras; down_blocks.0's hardly at all.
    up = [layer for layer in layers if "up_blocks_3" in layer.name]
    assert len(up) == 2 and all(layer.spatial > 0.3 and layer.camera > 0.05 for layer in up), up
    # With the other views clean and only their cameras rolled, the up_blocks.3 layers' grids
    # change (measured 26% and 53%) and so does the held-out view's output (9% and 22%); the
    # dead down_blocks.0 layer passes nothing on (1e-6).
    assert all(layer.grid_placement > 0.1 and layer.placement > 0.03 for layer in up), up
    (down,) = [layer for layer in layers if "down_blocks_0" in layer.name]
    assert down.placement < 1e-3 < down.grid_placement, down
    # Its hooks are gone: the model's forward hooks are those it had.
    assert sum(len(m._forward_hooks) for m in prior.model.modules()) == hooks
