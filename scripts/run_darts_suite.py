"""Run darts' own generic model tests on DynaMixModel: a developer check, not part of CI.

darts does not ship its tests in the wheel, so this takes them from a darts source tree
(a checkout, an unpacked sdist, or a bare git mirror), copies the six suites below into a
scratch directory, adds DynaMixModel to their model lists, and runs with this Python's
pytest only the tests that DynaMixModel takes part in::

    python scripts/run_darts_suite.py --darts-src ~/src/darts            # a checkout
    python scripts/run_darts_suite.py --darts-src mirror.git --rev 0.46.1  # a git directory
    python scripts/run_darts_suite.py --darts-src ~/src/darts -- -x -k save_load

Only the model lists change (in the backtesting and residual suites, which have none, the
model the tests build as ``model = NaiveDrift()``); every assertion runs as darts wrote it.
Lists that test covariates, or a specific baseline's exact numbers, are left alone (DynaMix
forecasts from the target alone). darts' datasets are copied from the source tree's ``datasets/`` folder,
so nothing is downloaded. Each injection names the text it anchors on: when darts edits a
test file so that an anchor is gone, the script stops and names it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The one configuration darts' tests see: seeded, and on the bundled weights unless --model says otherwise.
DYNAMIX = "DynaMixModel(**DYNAMIX_KWARGS)"

SWAP_NAIVE_DRIFT = ("\n        model = NaiveDrift()\n", f"\n        model = {DYNAMIX}\n")

SUITES = {
    "models/forecasting/test_local_forecasting_models.py": [
        (
            '@pytest.mark.parametrize("model", [ARIMA(1, 1, 1)])',
            f'@pytest.mark.parametrize("model", [ARIMA(1, 1, 1), {DYNAMIX}])',
        ),
        (
            "\nclass TestLocalForecastingModels:",
            # AirPassengers from 1957 on (MAPE; darts' own models are bounded at 4.6 to 32) and ice cream/heater.
            f"\nmodels.append(({DYNAMIX}, 20))\nmultivariate_models.append(({DYNAMIX}, 40))\n\n"
            "\nclass TestLocalForecastingModels:",
        ),
    ],
    "models/forecasting/test_probabilistic_models.py": [
        (
            "\n@pytest.mark.slow\nclass TestProbabilisticModels:",
            # (cls, kwargs, MAE bound univariate, multivariate) on a constant 0.5 with N(0, 0.1) noise.
            '\nmodels_cls_kwargs_errs.append((DynaMixModel, {**DYNAMIX_KWARGS, "random_state": 3}, 0.3, 0.3))\n'
            "\n@pytest.mark.slow\nclass TestProbabilisticModels:",
        ),
    ],
    "models/forecasting/test_ensemble_models.py": [
        (
            # Both lists of local members in test_input_models_local_models (the first one must still fail).
            "            ExponentialSmoothing(),\n        ])",
            f"            ExponentialSmoothing(),\n            {DYNAMIX},\n        ])",
        ),
        (
            "naive_ensemble = NaiveEnsembleModel([NaiveSeasonal(), Theta()])",
            f"naive_ensemble = NaiveEnsembleModel([NaiveSeasonal(), Theta(), {DYNAMIX}])",
        ),
        (
            # The save/load test's list (without torch); test_sample_weight_mixed_models' own stays as it is.
            "\n                [LinearRegressionModel(lags=[-1]), NaiveSeasonal(K=1)], **kwargs",
            f"\n                [LinearRegressionModel(lags=[-1]), NaiveSeasonal(K=1), {DYNAMIX}], **kwargs",
        ),
        (
            # Last: the test expects the RNN's checkpoint files under its position in the list (RNNModel_2).
            "                    RNNModel(10, n_epochs=1, **tfm_kwargs),\n",
            f"                    RNNModel(10, n_epochs=1, **tfm_kwargs),\n                    {DYNAMIX},\n",
        ),
    ],
    # No model lists here: the tests that build their model as `model = NaiveDrift()` (most score given
    # forecasts, or check shapes and errors) run with DynaMixModel in its place instead.
    "models/forecasting/test_backtesting.py": [SWAP_NAIVE_DRIFT],
    "models/forecasting/test_residuals.py": [SWAP_NAIVE_DRIFT],
    "utils/historical_forecasts/test_historical_forecasts.py": [
        (
            "\nmodels = [LinearRegressionModel, NaiveDrift]\n",
            "\nmodels = [LinearRegressionModel, NaiveDrift, DynaMixModel]\n",
        ),
        (
            '\n                (NaiveSeasonal, {"K": 2}),\n',
            '\n                (NaiveSeasonal, {"K": 2}),\n                (DynaMixModel, DYNAMIX_KWARGS),\n',
        ),
        (
            '\n                (NaiveSeasonal, {"K": 3}),\n',
            '\n                (NaiveSeasonal, {"K": 3}),\n                (DynaMixModel, DYNAMIX_KWARGS),\n',
        ),
        (
            '\n        (NaiveSeasonal, {"K": 3}),\n',
            '\n        (NaiveSeasonal, {"K": 3}),\n        (DynaMixModel, DYNAMIX_KWARGS),\n',
        ),
    ],
}

# Support files the suites import (darts.tests.conftest, test_sklearn_models.dummy_timeseries) and package markers.
SUPPORT = [
    "__init__.py",
    "conftest.py",
    "models/__init__.py",
    "models/forecasting/__init__.py",
    "models/forecasting/test_sklearn_models.py",
    "utils/__init__.py",
    "utils/historical_forecasts/__init__.py",
]

HEADER = "from dynamix_adapters import DynaMixModel\nfrom darts_suite_settings import DYNAMIX_KWARGS\n"

CONFTEST = '''"""Scratch-copy wiring: darts.tests from here, datasets from the source tree, only DynaMix tests."""

from pathlib import Path

import darts
from darts.datasets.dataset_loaders import DatasetLoader

HERE = Path(__file__).parent
# The installed darts has no tests subpackage; the copied one becomes darts.tests.
darts.__path__.append(str(HERE / "darts"))
DatasetLoader._DEFAULT_DIRECTORY = HERE / "datasets"


def _has_dynamix(value) -> bool:
    from dynamix_adapters import DynaMixModel

    if value is DynaMixModel or isinstance(value, DynaMixModel):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_dynamix(v) for v in value)
    if isinstance(value, dict):
        return any(_has_dynamix(v) for v in value.values())
    return False


def pytest_collection_modifyitems(config, items):
    import inspect

    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        body = inspect.getsource(item.function) if hasattr(item, "function") else ""
        (keep if _has_dynamix(list(params.values())) or "DynaMixModel" in body else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
'''


def source_tree(darts_src: Path, rev: str, into: Path) -> Path:
    """A directory with darts/tests and datasets/: darts_src itself, or the needed files of a git directory."""
    if (darts_src / "darts" / "tests").is_dir():
        return darts_src
    git = ["git", "--git-dir", str(darts_src)]
    listed = subprocess.run(
        [*git, "ls-tree", "--name-only", rev, "datasets/"], check=True, capture_output=True, text=True
    )
    csvs = [name for name in listed.stdout.split() if name.endswith(".csv")]
    wanted = [f"darts/tests/{relative}" for relative in [*SUPPORT, *SUITES]]
    for name in wanted + csvs:
        shown = subprocess.run([*git, "show", f"{rev}:{name}"], check=False, capture_output=True)
        if shown.returncode and name in wanted:
            raise SystemExit(f"{name} is not in {darts_src} at {rev}: {shown.stderr.decode().strip()}")
        if not shown.returncode:  # a mirror may lack large data files; the suites need only small ones
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes(shown.stdout)
    return into


def inject(text: str, edits: list[tuple[str, str]], name: str) -> str:
    for anchor, replacement in edits:
        count = text.count(anchor)
        if count == 0:
            raise SystemExit(f"{name}: anchor not found, darts changed this file; update SUITES:\n{anchor}")
        text = text.replace(anchor, replacement)
    return HEADER + text


def prepare(tree: Path, scratch: Path, model: str | None) -> list[Path]:
    tests = scratch / "darts" / "tests"
    for relative in SUPPORT:
        target = tests / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / "darts" / "tests" / relative, target)
    suites = []
    for relative, edits in SUITES.items():
        target = tests / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(inject((tree / "darts" / "tests" / relative).read_text(), edits, relative))
        suites.append(target)
    # darts' loaders look for <metadata name> in their directory and check its MD5: copy each known CSV there.
    from darts.datasets import datasets  # the module: darts.datasets itself loads its names lazily
    from darts.datasets.dataset_loaders import DatasetLoaderCSV

    (scratch / "datasets").mkdir(exist_ok=True)
    for loader_cls in vars(datasets).values():
        if (
            isinstance(loader_cls, type)
            and issubclass(loader_cls, DatasetLoaderCSV)
            and loader_cls is not DatasetLoaderCSV
        ):
            metadata = loader_cls()._metadata
            csv = tree / "datasets" / metadata.uri.rsplit("/", 1)[-1]
            if csv.is_file():
                shutil.copy(csv, scratch / "datasets" / metadata.name)
    (scratch / "conftest.py").write_text(CONFTEST)
    (scratch / "darts_suite_settings.py").write_text(f"DYNAMIX_KWARGS = {{'model': {model!r}, 'random_state': 0}}\n")
    (scratch / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: darts' slow tests\n")
    return suites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--darts-src", type=Path, required=True, help="darts checkout, unpacked sdist or git directory")
    parser.add_argument("--rev", default="HEAD", help="revision to take from a git directory (default HEAD)")
    parser.add_argument("--model", default=None, help="DynaMix weights (name or path); default: the bundled ones")
    parser.add_argument("--scratch", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args()

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="darts-suite-"))
    if scratch.exists() and any(scratch.iterdir()):
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    tree = source_tree(args.darts_src.expanduser(), args.rev, scratch / "source")
    suites = prepare(tree, scratch, args.model)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "--rootdir",
        str(scratch),
        "-c",
        str(scratch / "pytest.ini"),
        "-q",
        "-rfE",
        *map(str, suites),
        *args.pytest_args,
    ]
    print(f"darts suite in {scratch}", flush=True)
    # The scratch dir goes first on the path: its settings module and conftest wiring.
    env = dict(os.environ)
    env["PYTHONPATH"] = ":".join(filter(None, [str(scratch), env.get("PYTHONPATH", "")]))
    return subprocess.run(command, cwd=scratch, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
