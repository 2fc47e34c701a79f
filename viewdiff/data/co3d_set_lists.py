"""Frame selection by CO3D's set lists: ``<category>/set_lists/set_lists_<subset>.json`` holds
``{"train"|"val"|"test": [[sequence_name, frame_number, image_path], ...]}``; a subset's split
selects the (sequence, frame) pairs that ``read_category`` keeps.
"""

from __future__ import annotations

from pathlib import Path

from viewdiff.data.co3d_annotations import Co3dFormatError, read_json_object

SPLITS = ("train", "val", "test")


def list_subsets(root: str | Path, category: str) -> list[str]:
    """Subset names of a category's set lists (``set_lists/set_lists_<subset>.json``)."""
    folder = Path(root) / category / "set_lists"
    return sorted(p.stem.removeprefix("set_lists_") for p in folder.glob("set_lists_*.json"))


def read_set_list(
    root: str | Path, category: str, subset: str
) -> dict[str, list[tuple[str, int, str]]]:
    """A category's set list ``{split: [(sequence_name, frame_number, image_path)]}``."""
    path = Path(root) / category / "set_lists" / f"set_lists_{subset}.json"
    source = f"{category}/set_lists/{path.name}"
    if not path.is_file():
        raise FileNotFoundError(
            f"{source}: no such set list; subsets of {category}: {list_subsets(root, category)}"
        )
    document = read_json_object(path, source, "{split: [...]}")
    lists = {}
    for split, entries in document.items():
        if not isinstance(entries, list):
            raise Co3dFormatError(f"{source}: '{split}' must be a list")
        for i, entry in enumerate(entries):
            if not (
                isinstance(entry, list | tuple)
                and len(entry) >= 2
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
            ):
                raise Co3dFormatError(
                    f"{source}: '{split}' entry {i} must be [sequence_name, frame_number, path]"
                )
        lists[split] = [(e[0], e[1], e[2] if len(e) > 2 else "") for e in entries]
    return lists


def selected_frames(
    root: Path, category: str, subset: str | None, split: str | None
) -> set[tuple[str, int]] | None:
    """(sequence, frame_number) pairs of a subset's split (all its splits if None), or None."""
    if subset is None:
        if split is not None:
            raise ValueError(f"split {split!r} needs a subset (a set list) to select from")
        return None
    lists = read_set_list(root, category, subset)
    if split is not None and split not in lists:
        raise ValueError(
            f"{category}/set_lists/set_lists_{subset}.json has no split {split!r}; "
            f"it has {sorted(lists)}"
        )
    chosen = [lists[split]] if split is not None else lists.values()
    return {(entry[0], entry[1]) for entries in chosen for entry in entries}
