"""Cameras: one convention inside the library, OpenCV (DESIGN.md, Data flow).

``conventions``: CO3D/PyTorch3D NDC <-> OpenCV, intrinsics under crops and resizes, rigid
transforms, projection and rays; ``orbits``: look-at cameras on a sphere around the object box;
``normalization``: the scene normalisation of the anchor (cameras on a sphere, the box centred);
``checks``: refusing cameras that cannot be used, naming the view; ``pose_features``: the
per-view condition vector of the pose LoRA; ``cameras_json``: the ``cameras.json`` files that
every command reads and writes.
"""
