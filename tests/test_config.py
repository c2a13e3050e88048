"""Stage configs validate themselves: a bad value's error is one sentence naming the param."""

import dataclasses
import math

import pytest
from conftest import stage_configs

from imgrec.data.fetch import FetchConfig
from imgrec.data.prepare import PrepareConfig
from imgrec.errors import ImgrecError
from imgrec.recommender.recommend import RecommendConfig
from imgrec.training.train import TrainConfig

GOOD = [
    (TrainConfig, "epochs", 1, 1),
    (FetchConfig, "rows", 40000, 40000),
    (PrepareConfig, "seed", 0, 0),
    (TrainConfig, "lr", 0.001, 0.001),
    (TrainConfig, "lr", 3, 3.0),
    # DVC writes small floats so; YAML 1.1 (PyYAML) reads them back as strings.
    (TrainConfig, "lr", "1e-05", 1e-05),
    (TrainConfig, "lr", "1E-9", 1e-09),
    (TrainConfig, "lr_factor", 0.999, 0.999),
    (TrainConfig, "dropout", 0, 0.0),
    (TrainConfig, "dropout", 1, 1.0),
    (PrepareConfig, "max_bad_fraction", "0.0", 0.0),
    (TrainConfig, "augment", True, True),
    (TrainConfig, "precision", "bf16", "bf16"),
    (TrainConfig, "precision", "tf32", "tf32"),
    (TrainConfig, "kernels", "native", "native"),
    (RecommendConfig, "index", "hnsw", "hnsw"),
    (FetchConfig, "source", "/data/O'Brien/$HOME *.parquet", "/data/O'Brien/$HOME *.parquet"),
]

BAD = [
    (TrainConfig, "epochs", True),
    (TrainConfig, "epochs", 0),
    (TrainConfig, "epochs", -3),
    (TrainConfig, "epochs", 1.0),
    (TrainConfig, "epochs", "32"),
    (TrainConfig, "epochs", None),
    (PrepareConfig, "seed", -1),
    (TrainConfig, "lr", 0),
    (TrainConfig, "lr", -0.1),
    (TrainConfig, "lr", True),
    (TrainConfig, "lr", "abc"),
    (TrainConfig, "lr", "nan"),
    (TrainConfig, "lr", "inf"),
    (TrainConfig, "lr", math.nan),
    (TrainConfig, "lr", None),
    (TrainConfig, "lr_factor", 1),
    (TrainConfig, "lr_factor", 0),
    (PrepareConfig, "val_fraction", 1.5),
    (PrepareConfig, "max_bad_fraction", -0.01),
    (TrainConfig, "dropout", 1.01),
    (TrainConfig, "augment", 1),
    (TrainConfig, "augment", "yes"),
    (TrainConfig, "precision", "fp16"),
    (TrainConfig, "kernels", "fast"),
    (RecommendConfig, "index", "Exact"),
    (RecommendConfig, "hnsw_m", 0),
    (FetchConfig, "source", 3),
]


def _id(value: object) -> str:
    return getattr(value, "__name__", None) or repr(value)


@pytest.mark.parametrize(("config", "name", "value", "expected"), GOOD, ids=_id)
def test_good_values_pass(config, name, value, expected):
    result = getattr(config(**{name: value}), name)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("config", "name", "value"), BAD, ids=_id)
def test_bad_values_raise_naming_the_param(config, name, value):
    with pytest.raises(ImgrecError) as info:
        config(**{name: value})
    message = str(info.value)
    assert message.startswith(f"param {name} must be ")
    assert repr(value) in message
    assert "\n" not in message


def test_from_params_takes_only_the_stages_own_params():
    params = {"source": "builtin:digits", "rows": 10, "dask_scheduler": "local", "lr": "x"}
    assert FetchConfig.from_params(params) == FetchConfig(rows=10)


def test_a_missing_param_is_named():
    with pytest.raises(ImgrecError, match=r"params.yaml has no rows"):
        FetchConfig.from_params({"source": "builtin:digits"})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


@pytest.mark.parametrize("config", stage_configs().values(), ids=_id)
def test_defaults_are_valid(config):
    config()
