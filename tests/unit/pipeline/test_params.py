"""The models' typed parameters: built from the configuration, with defaults that are base.yaml's."""

from __future__ import annotations

import dataclasses

import pytest

from amazon_recs.config import load_config
from amazon_recs.features.split import SplitParams
from amazon_recs.models.als import AlsParams
from amazon_recs.models.content import ContentParams
from amazon_recs.models.training import ModelParams
from amazon_recs.models.tuning import TuneParams
from amazon_recs.pipeline import params
from tests.conftest import ROOT

BASE = ROOT / "conf" / "base.yaml"


@pytest.mark.parametrize(
    "build, default",
    [
        (params.split_params, SplitParams()),
        (params.als_params, AlsParams()),
        (params.content_params, ContentParams()),
        (params.model_params, ModelParams()),
        (params.tune_params, TuneParams()),
    ],
)
def test_a_dataclass_default_is_what_base_yaml_says(build, default):
    # A notebook that builds AlsParams() gets the pipeline's defaults, not a drifted copy.
    assert build(load_config(BASE)) == default


def test_every_setting_reaches_its_parameter():
    config = load_config(
        BASE,
        [
            "als.rank=7",
            "als.alpha=3.5",
            "als.seed=9",
            "content.neighbours=11",
            "content.num_features=64",
            "popular.half_life_days=5.0",
            "split.protocol=random",
            "tune.weight_step=0.5",
            "tune.max_validation_users=123",
            "recommend.candidates=33",
        ],
    )
    models = params.model_params(config)
    assert (models.als.rank, models.als.alpha, models.als.seed) == (7, 3.5, 9)
    # The LSH seed follows als.seed, as it always has.
    assert (models.content.neighbours, models.content.num_features, models.content.seed) == (11, 64, 9)
    assert models.popular.half_life_days == 5.0
    tune = params.tune_params(config)
    assert (tune.weight_step, tune.candidates, tune.split.protocol) == (0.5, 33, "random")
    assert tune.max_validation_users == 123


def test_parameters_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AlsParams().rank = 64  # type: ignore[misc]
