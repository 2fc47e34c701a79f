"""Counts on every command line are checked by argparse: 0 or less is exit 2, never the default."""

import argparse

import pytest

from viewdiff.cli_args import positive_int


def test_positive_int():
    assert positive_int("3") == 3
    for text, message in (("0", "at least 1, got 0"), ("-2", "at least 1"), ("two", "whole")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--views", "0"],
        ["eval", "--checkpoint", "x", "--shards", "s", "--out", "o", "--views", "0"],
        ["render", "--scene", "s.ply", "--out", "o", "--size", "0"],
        ["sds", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--steps", "0"],
        [
            "edit-scene",
            "--checkpoint",
            "x",
            "--scene",
            "s",
            "--source-prompt",
            "a",
            "--prompt",
            "b",
            "--out",
            "o",
            "--views",
            "-1",
        ],
    ],  # fmt: skip
)
def test_a_zero_count_exits_2_naming_the_flag(argv, capsys):
    from infer import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {argv[-2]}: must be at least 1" in error, error
