"""The colour rule and the shape classifier are right on real toy renders."""

import colorsys

import torch

from viewdiff.toy.classify import (
    accuracy,
    classifier_accuracy,
    classify_colour,
    fit_shape_classifier,
    foreground,
    rgb_to_hsv,
    toy_words,
)
from viewdiff.toy.images import read_shard_images
from viewdiff.toy.quality import make_toy_shards, unit


def test_rgb_to_hsv_matches_colorsys():
    pixels = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    hue, saturation, value = rgb_to_hsv(pixels)
    for y in range(5):
        for x in range(7):
            expected = colorsys.rgb_to_hsv(*pixels[0, :, y, x].tolist())
            got = (hue[0, y, x].item(), saturation[0, y, x].item(), value[0, y, x].item())
            assert all(abs(a - b) < 1e-5 for a, b in zip(got, expected, strict=True))


def check_classifiers(fit, heldout, mask_iou: float) -> None:
    """Fitted on ``fit``'s renders: every colour and >= 90% of shapes right on ``heldout``'s, and
    the saturation rule's object agrees with the true masks."""
    classifier = fit_shape_classifier(unit(fit), fit.categories)
    scores = classifier_accuracy(classifier, unit(heldout), heldout.captions)
    assert scores["colour"] == 1.0
    assert scores["shape"] >= 0.9, scores
    truth = heldout.masks[:, 0] > 127
    found = foreground(unit(heldout))
    assert (found & truth).sum() / (found | truth).sum() > mask_iou


def test_classifiers_are_right_on_held_out_real_renders(toy_fit, toy_heldout):
    check_classifiers(toy_fit, toy_heldout, 0.9)


def test_an_image_without_an_object_is_wrong_for_both(toy_fit):
    classifier = fit_shape_classifier(unit(toy_fit), toy_fit.categories)
    grey = torch.full((2, 3, 64, 64), 0.5)
    grey[1, 0] = 0.55  # a faint tint is still no object
    assert classify_colour(grey) == [None, None] and classifier(grey) == [None, None]
    assert accuracy([None, "ball"], ["ball", "ball"]) == 0.5
    # A swapped label is counted as wrong: the classifier does not just agree.
    truth = toy_words(toy_fit.captions[0])[1]
    wrong = next(s for s in ("ball", "box", "can") if s != truth)
    assert classifier_accuracy(classifier, unit(toy_fit)[:1], [f"a red {wrong}"])["shape"] == 0
    assert toy_words("an orange can") == ("orange", "can")


def test_classifiers_are_right_on_the_sided_world(tmp_path):
    # The darker side keeps the object's hue and saturation; the backdrop stays below the rule.
    fit, heldout = (
        read_shard_images(make_toy_shards(tmp_path / name, objects, 5, seed, style="toy_sided"),
                          show_progress=False)
        for name, objects, seed in (("fit", 8, 2), ("heldout", 4, 1))
    )  # fmt: skip
    check_classifiers(fit, heldout, 0.85)
