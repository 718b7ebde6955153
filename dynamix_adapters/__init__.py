"""DynaMix zero-shot forecasting for sktime and darts.

The core (``DynaMixPipeline``, ``forecast``, ``load_model``) needs neither sktime nor darts. The
adapters ``DynaMixForecaster`` (sktime) and ``DynaMixModel`` (darts) import lazily,
so each works without the other library installed.

>>> import dynamix_adapters
>>> "forecast" in dynamix_adapters.__all__
True
"""

from importlib import import_module

from .forecast import forecast
from .model import Architecture, DynaMix
from .options import ForecastOptions
from .pipeline import DynaMixPipeline
from .rollout import DivergenceError, DivergenceWarning
from .weights import DEFAULT_MODEL, OFFICIAL_MODEL, known_models, load_model

_ADAPTERS = {
    "DynaMixForecaster": (".sktime_forecaster", "sktime", "sktime"),
    "DynaMixModel": (".darts_model", "darts", "darts"),
}

__all__ = [
    "DEFAULT_MODEL",
    "OFFICIAL_MODEL",
    "Architecture",
    "DivergenceError",
    "DivergenceWarning",
    "DynaMix",
    "DynaMixForecaster",
    "DynaMixModel",
    "DynaMixPipeline",
    "ForecastOptions",
    "forecast",
    "known_models",
    "load_model",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _ADAPTERS:
        raise AttributeError(f"module 'dynamix_adapters' has no attribute {name!r}")
    module, library, extra = _ADAPTERS[name]
    try:
        return getattr(import_module(module, __name__), name)
    except ModuleNotFoundError as err:
        if err.name != library:
            raise
        raise ImportError(
            f"{name} needs {library}, which is not installed: pip install 'dynamix-adapters[{extra}]'"
        ) from err
