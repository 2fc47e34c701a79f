"""Numbers on every command line are checked by argparse: a count of 0 is exit 2 (never the
default), a count past its bound too, and floats must be finite and in range."""

import argparse

import pytest

from viewdiff.commands.options import (
    MAX_VIEWS,
    field_of_view,
    finite_float,
    int_in,
    nonnegative_float,
    positive_float,
    positive_int,
    unit_float,
)


def test_positive_int():
    assert positive_int("3") == 3
    for text, message in (("0", "at least 1, got 0"), ("-2", "at least 1"), ("two", "whole")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(text)


def test_int_in_names_both_bounds_and_the_reason():
    steps = int_in(2, 1000, "the timesteps Stable Diffusion was trained with")
    assert steps("2") == 2 and steps("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match="at least 2, got 1"):
        steps("1")
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"at most 1000 \(the timesteps .*\), got 5000"
    ):
        steps("5000")


@pytest.mark.parametrize(
    ("parse", "good", "bad", "message"),
    [
        (finite_float, "-30", "nan", "finite number, got nan"),
        (finite_float, "1e3", "inf", "finite number"),
        (positive_float, "0.5", "0", r"in \(0, inf\), got 0"),
        (nonnegative_float, "0", "-1", r"in \[0, inf\), got -1"),
        (unit_float, "1", "1.5", r"in \[0, 1\], got 1.5"),
        (field_of_view, "48", "180", r"in \(0, 179\], got 180"),
        (field_of_view, "48", "x", "expected a number, got 'x'"),
    ],
)
def test_float_types(parse, good, bad, message):
    assert parse(good) == float(good)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(bad)


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


@pytest.mark.parametrize(
    ("argv", "flag", "message"),
    [
        (["cameras", "--out", "o", "--views", str(MAX_VIEWS + 1)], "--views", "at most 1000"),
        (["render", "--scene", "s.ply", "--out", "o", "--fov", "nan"], "--fov", "finite"),
        (["render", "--scene", "s.ply", "--out", "o", "--background", "1", "2", "0"],
         "--background", "[0, 1]"),
        (["sample", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--steps", "1001"],
         "--steps", "at most 1000 (the timesteps"),
        (["sample", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--radius", "-4"],
         "--radius", "in (0, inf)"),
        (["sample", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--guidance", "-1"],
         "--guidance", "in [0, inf)"),
        (["sds", "--checkpoint", "x", "--prompt", "a", "--out", "o", "--lr", "nan"], "--lr",
         "finite"),
        (["invert", "--checkpoint", "x", "--images", "a.png", "--out", "o", "--steps", "1"],
         "--steps", "at least 2"),
        (["edit", "--inversion", "i", "--prompt", "b", "--out", "o", "--cfg-tar", "inf"],
         "--cfg-tar", "finite"),
        (["edit-scene", "--checkpoint", "x", "--scene", "s", "--source-prompt", "a", "--prompt",
          "b", "--out", "o", "--region", "0", "0", "0", "1", "1", "nan"], "--region", "finite"),
        (["eval", "--checkpoint", "x", "--shards", "s", "--out", "o", "--known", "0"], "--known",
         "at least 1"),
    ],
)  # fmt: skip
def test_bad_numbers_exit_2_naming_the_flag(argv, flag, message, capsys):
    from infer import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: " in error and message in error, error
