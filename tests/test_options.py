"""ForecastOptions: validation only, and the one list of options that both adapters' signatures follow."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from dynamix_adapters import DynaMixForecaster, DynaMixModel, ForecastOptions
from dynamix_adapters.options import ADAPTER_DEFAULTS, OPTIONS_DOC


@pytest.mark.parametrize("adapter", [DynaMixForecaster, DynaMixModel])
def test_adapter_signatures_are_the_options_plus_model_and_device(adapter):
    parameters = inspect.signature(adapter.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items() if name != "self"}
    expected = {f.name: f.default for f in fields(ForecastOptions)} | ADAPTER_DEFAULTS
    assert defaults == expected


@pytest.mark.parametrize("adapter", [DynaMixForecaster, DynaMixModel])
def test_every_option_is_documented_once_and_in_both_adapters(adapter):
    for name in [*ForecastOptions.names(), "model", "device"]:
        assert OPTIONS_DOC.count(f"    {name} : ") == 1, name
        assert f"    {name} : " in adapter.__doc__, name


def test_options_are_plain_data_validated_at_construction():
    options = ForecastOptions(context_length=64, n_samples=5)
    assert options.replace(n_samples=7) == ForecastOptions(context_length=64, n_samples=7)
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        ForecastOptions(preprocessing="fourier")
    with pytest.raises(ValueError, match="on_divergence"):
        ForecastOptions(on_divergence="ignore")
    with pytest.raises(ValueError, match="random_state"):
        ForecastOptions(random_state=-1)
