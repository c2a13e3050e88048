"""The PNG figures: readable, non-empty, and byte-identical when redrawn from the same data."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from imgrec.data.prepared import Prepared
from imgrec.recommender.plotting import (
    confusion_matrix_figure,
    prediction_grid_figure,
    recommendation_figure,
    save_figure,
    validation_samples_figure,
)

NAMES = ["ant", "bee", "cow"]
RNG = np.random.default_rng(0)
IMAGES = list(RNG.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))


def confusion():
    return confusion_matrix_figure(np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1]), NAMES)


def prediction_grid():
    return prediction_grid_figure(
        IMAGES[:5], ["ant", "bee", "cow", "ant", "bee"], NAMES + NAMES[:2], [0.9] * 5
    )


def recommendations():
    return recommendation_figure(
        IMAGES[:2],
        ["query #0\nant", "query #1\nbee"],
        [IMAGES[2:5], IMAGES[3:6]],
        [["ant  0.990", "bee  0.800", "ant  0.700"], ["bee  0.950", "cow  0.500", "bee  0.400"]],
    )


FIGURES = {"confusion": confusion, "prediction_grid": prediction_grid, "recommend": recommendations}


@pytest.mark.parametrize("make", FIGURES.values(), ids=FIGURES.keys())
def test_figure_saves_a_readable_png(tmp_path, make):
    path = tmp_path / "plots" / "figure.png"
    save_figure(make(), path)
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 100 and height > 100
        # Not a blank canvas: the figure drew something.
        assert len(np.unique(np.asarray(image.convert("L")))) > 2
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]  # no temp file left


@pytest.mark.parametrize("make", FIGURES.values(), ids=FIGURES.keys())
def test_same_data_gives_identical_bytes_without_metadata(tmp_path, make):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    save_figure(make(), first)
    save_figure(make(), second)
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as image:
        keys = {key.lower() for key in image.info}
    assert "software" not in keys
    assert not keys & {"date", "creation time", "creationtime", "timestamp"}


def test_dpi_sets_pixel_size(tmp_path):
    save_figure(confusion(), tmp_path / "low.png", dpi=50)
    save_figure(confusion(), tmp_path / "high.png", dpi=100)
    with Image.open(tmp_path / "low.png") as low, Image.open(tmp_path / "high.png") as high:
        assert high.size[0] == pytest.approx(2 * low.size[0], abs=2)


def test_prediction_grid_marks_wrong_predictions_in_red_with_probabilities():
    fig = prediction_grid_figure(IMAGES[:2], ["ant", "bee"], ["ant", "cow"], [0.97, 0.51])
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.title.get_color() for ax in titled] == ["black", "red"]
    assert [ax.get_title() for ax in titled] == [
        "true: ant\npred: ant (0.97)",
        "true: bee\npred: cow (0.51)",
    ]


def test_validation_samples_put_the_misclassified_first():
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    data = Prepared(
        images=np.stack(IMAGES), labels=labels, row_ids=np.arange(6), train_index=np.arange(0),
        val_index=np.arange(6), class_names=NAMES, img_size=16,
    )  # fmt: skip
    probabilities = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    probabilities[4] = [0.1, 0.2, 0.7]  # row 4 (a bee) predicted cow
    fig = validation_samples_figure(data, probabilities, NAMES, count=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4
    assert titles[0] == "true: bee\npred: cow (0.70)"
    for title in titles[1:]:  # then correct ones
        true, predicted = (line.split(": ")[1].split(" (")[0] for line in title.split("\n"))
        assert true == predicted
    assert "1 of 6 misclassified" in fig.texts[0].get_text()


@pytest.mark.parametrize(
    ("name", "magic"),
    [("f.png", b"\x89PNG"), ("f.jpg", b"\xff\xd8"), ("f.svg", b"<?xml"), ("f.pdf", b"%PDF")],
)
def test_the_extension_picks_the_format(tmp_path, name, magic):
    save_figure(confusion(), tmp_path / name)
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_recommendation_figure_has_one_row_per_query():
    fig = recommendations()
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 2 * 4  # 2 queries x (query + 3 neighbours)
    assert titles[0] == "query #0\nant"
    assert titles[4] == "query #1\nbee"
    assert titles[1:4] == ["ant  0.990", "bee  0.800", "ant  0.700"]
    assert fig.texts[0].get_text() == "Query (left) and its most similar items"


def test_saved_figures_are_closed(tmp_path):
    before = len(plt.get_fignums())
    save_figure(confusion(), Path(tmp_path) / "figure.png")
    assert len(plt.get_fignums()) == before
