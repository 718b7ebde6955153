"""DynaMix zero-shot forecasting for sktime and darts.

>>> import dynamix_adapters
>>> "forecast" in dynamix_adapters.__all__
True
"""

from .forecast import forecast
from .model import Architecture, DynaMix
from .weights import DEFAULT_MODEL, OFFICIAL_MODEL, known_models, load_model

__all__ = ["DEFAULT_MODEL", "OFFICIAL_MODEL", "Architecture", "DynaMix", "forecast", "known_models", "load_model"]
__version__ = "0.1.0"
