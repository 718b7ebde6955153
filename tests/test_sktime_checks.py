"""sktime's own conformance suite (check_estimator) on DynaMixForecaster.

The class run uses the tiny offline configurations from ``get_test_params``; the
instance run uses the official weights from ../shared.
"""

from __future__ import annotations

import pytest

pytest.importorskip("sktime")

from sktime.utils.estimator_checks import check_estimator, parametrize_with_checks

from dynamix_adapters import DynaMixForecaster

from .conftest import OFFICIAL_SAFETENSORS, require_shared

# Constructing the instance reads nothing, so collection works without ../shared; the
# test body skips (or fails under CI=true) when the weights are absent.
OFFICIAL_INSTANCE = DynaMixForecaster(model=str(OFFICIAL_SAFETENSORS), n_samples=20, random_state=0)


@parametrize_with_checks(DynaMixForecaster)
def test_sktime_checks_tiny(obj, test_name):
    check_estimator(obj, tests_to_run=test_name, raise_exceptions=True, verbose=False)


@parametrize_with_checks(OFFICIAL_INSTANCE)
def test_sktime_checks_official_weights(obj, test_name):
    require_shared(OFFICIAL_SAFETENSORS)
    check_estimator(obj, tests_to_run=test_name, raise_exceptions=True, verbose=False)
