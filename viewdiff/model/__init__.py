"""The multi-view UNet of ViewDiff: cross-frame attention, pose-conditioned LoRA, projection layers.

``MultiViewUNet`` augments a diffusers UNet (``multiview_unet``); ``attention`` and ``lora`` hold
the attention processor and its LoRA weights; ``projection`` the voxel projection layer, built
from ``voxel_grid`` (unprojection), ``aggregate`` (IBRNet), ``voxel_unet`` (3D CNN) and
``volume_render``; ``persistence`` saves and loads what was added; ``attention_control`` is the
Protocol of whoever controls the attention from outside (TrAME's VCAC), so that the model imports
none of its users.
"""

from viewdiff.model.attention import MultiViewAttnProcessor, MultiViewCondition
from viewdiff.model.multiview_unet import MultiViewUNet, add_base_lora
from viewdiff.model.persistence import load_multiview_unet, save_multiview_unet
from viewdiff.model.projection import ProjectionLayer

__all__ = [
    "MultiViewAttnProcessor",
    "MultiViewCondition",
    "MultiViewUNet",
    "ProjectionLayer",
    "add_base_lora",
    "load_multiview_unet",
    "save_multiview_unet",
]
