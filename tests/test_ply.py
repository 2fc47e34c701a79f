"""PLY vertex files: exact round trip, ASCII and big-endian input, clear errors."""

import numpy as np
import pytest

from viewdiff.ply import read_ply, write_ply


def test_binary_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    columns = {
        "x": rng.normal(size=7).astype(np.float32),
        "y": rng.normal(size=7).astype(np.float32),
        "red": rng.integers(0, 255, size=7).astype(np.uint8),
        "weight": rng.normal(size=7),  # float64
    }
    write_ply(tmp_path / "p.ply", columns)
    back = read_ply(tmp_path / "p.ply")
    assert list(back) == list(columns)
    for name, values in columns.items():
        assert back[name].dtype == values.dtype and np.array_equal(back[name], values)


def test_ascii_and_big_endian_files_read(tmp_path):
    ascii_file = tmp_path / "a.ply"
    ascii_file.write_text(
        "ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 2\nproperty float x\n"
        "property uchar red\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0.5 10\n-1.25 255\n3 0 1 1\n"
    )
    back = read_ply(ascii_file)
    assert back["x"].tolist() == [0.5, -1.25] and back["red"].tolist() == [10, 255]
    big = tmp_path / "b.ply"
    header = "ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty double z\nend_header\n"
    big.write_bytes(header.encode() + np.array([1.5, -2.0], dtype=">f8").tobytes())
    assert read_ply(big)["z"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PLY?\n", "not a PLY file"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n",
            "no end_header",
        ),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n"
            b"end_header\n\x00",
            "truncated",
        ),
        (
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar int idx\nend_header\n",
            "list property",
        ),
        (
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty half x\nend_header\n",
            "unknown property type",
        ),
    ],
)
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"bad.ply: .*{message}"):
        read_ply(path)


def test_columns_must_match_in_length(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        write_ply(tmp_path / "x.ply", {"x": np.zeros(2, np.float32), "y": np.zeros(3, np.float32)})
