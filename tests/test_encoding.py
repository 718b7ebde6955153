"""The batch encoding against the per-series recipe it replaced, and the vectorized trend fit against scipy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import optimize, signal, stats

from dynamix_adapters.options import ForecastOptions
from dynamix_adapters.pipeline import DynaMixPipeline
from dynamix_adapters.rollout import content_key
from dynamix_adapters.rollout.noise import encoding_integers
from dynamix_adapters.systems import lorenz63_trajectory
from dynamix_adapters.transforms import preprocessing
from dynamix_adapters.transforms.encoding import BatchEncoding
from dynamix_adapters.transforms.trend import TrendFit, _power_trend

MODEL_DIMS = 3
STATIONARY = ("pos_embedding", "delay_embedding", "zero_embedding")
LORENZ = lorenz63_trajectory(3000)


def reference_units(x: np.ndarray, method: str, standardize: bool = True) -> list[np.ndarray]:
    """The stationary recipe one series at a time, as written before the batch encoding: frames (T', N) per unit."""
    magnitude = np.abs(x).max(axis=0)
    unit = np.where(magnitude > 0, magnitude, 1.0)
    std = (x / unit).std(axis=0) * unit
    constant = std <= preprocessing.STD_FLOOR * magnitude
    mean, std = (x.mean(axis=0), np.where(constant, 1.0, std)) if standardize else (0.0, 1.0)
    scaled = (x - mean) / std
    pieces = [scaled[:, [d]] for d in range(x.shape[1])] if x.shape[1] > MODEL_DIMS else [scaled]
    return [reference_embed(piece, method) for piece in pieces]


def reference_embed(x: np.ndarray, method: str) -> np.ndarray:
    t, d = x.shape
    needed = MODEL_DIMS - d
    if needed <= 0:
        return x
    if method == "zero_embedding":
        return np.concatenate([x, np.zeros((t, needed))], axis=1)
    acf = reference_acf(x[:, -1])
    if method == "pos_embedding":
        start = max(1, t // 10)
        peaks, _ = signal.find_peaks(acf[start:])
        period = t if len(peaks) == 0 or t < 4 else int(start + peaks[np.argmax(acf[start:][peaks])])
        phases = np.linspace(0.0, np.pi / 2, needed) if needed > 1 else np.zeros(1)
        waves = np.sin(2 * np.pi * np.arange(t)[:, None] / period + phases[None, :])
        return np.concatenate([x, waves], axis=1)
    below = np.nonzero(acf < np.exp(-1.0))[0]
    lag = int(below[0]) if len(below) else 0
    shortest = t // (needed + 1)
    if lag < 1 or t - needed * lag < max(shortest, 2):
        lag = max(1, shortest)
    lags = [lag * (i + 1) for i in range(needed)]
    start = max(lags)
    return np.column_stack([x[start:], *[x[start - g : t - g, -1] for g in lags]])


def reference_acf(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    spectrum = np.fft.rfft(x, n=2 * len(x))
    acov = np.fft.irfft(spectrum * np.conj(spectrum))[: len(x)]
    return np.zeros(len(x)) if acov[0] <= 0 else acov / acov[0]


def panel(dims: int, lengths=(40, 130, 130, 257, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(dims)
    columns = np.concatenate([LORENZ, LORENZ[::-1]], axis=1)[:, :dims]
    starts = range(0, 170 * len(lengths), 170)
    return [columns[s : s + n] * rng.uniform(0.5, 5) + rng.normal(0, 10) for s, n in zip(starts, lengths, strict=True)]


def encode(series, methods, flags, **kwargs) -> BatchEncoding:
    return BatchEncoding.fit(series, methods, flags, standardize=True, model_dims=MODEL_DIMS, entropy=7, **kwargs)


def unit_frames(encoding: BatchEncoding, u: int) -> np.ndarray:
    return encoding.context[u, encoding.valid_from[u] :]


@pytest.mark.parametrize("dims", [1, 2, 3, 5])
@pytest.mark.parametrize("method", STATIONARY)
def test_batch_encoding_equals_the_per_series_recipe_on_mixed_lengths(dims, method):
    series = panel(dims)
    # The pipeline forecasts each dim of a series wider than the model as its own unit (ForecastUnits).
    units = [x[:, [d]] for x in series for d in range(dims)] if dims > MODEL_DIMS else series
    encoding = encode(units, [method] * len(units), [False] * len(units))
    expected = [frames for x in units for frames in reference_units(x, method)]
    assert len(expected) == len(encoding.keys)
    for u, frames in enumerate(expected):
        np.testing.assert_array_equal(unit_frames(encoding, u), frames.astype(np.float32))  # the model's precision
        np.testing.assert_array_equal(encoding.starts[u], frames[-1])
    assert list(encoding.keys) == [content_key(x) for x in units]


def test_a_unit_wider_than_the_model_is_refused():
    with pytest.raises(ValueError, match="split wider series"):
        encode(panel(5), ["pos_embedding"] * 5, [False] * 5)


def test_each_series_keeps_its_own_embedding_and_the_constant_dim_its_last_value():
    series = [np.column_stack([x[:, 0], np.full(len(x), 4.0)]) for x in panel(1)]
    methods = ["pos_embedding", "delay_embedding", "zero_embedding", "delay_embedding", "pos_embedding"]
    encoding = encode(series, methods, [False] * len(series))
    for u, (x, method) in enumerate(zip(series, methods, strict=True)):
        np.testing.assert_array_equal(unit_frames(encoding, u), reference_units(x, method)[0].astype(np.float32))
    observed = np.random.default_rng(0).normal(size=(6, 2, len(series), MODEL_DIMS)).astype(np.float32)
    decoded = encoding.decode(observed)  # (P, H, S, D)
    for s, x in enumerate(series):
        mean, std = x[:, 0].mean(), x[:, 0].std()
        np.testing.assert_allclose(decoded[:, :, s, 0], observed[:, :, s, 0].T.astype(float) * std + mean, rtol=1e-12)
        assert (decoded[:, :, s, 1] == 4.0).all()


def test_a_series_encodes_and_decodes_alone_as_in_any_batch():
    series = panel(2)
    methods = ["pos_embedding", "delay_embedding_random", "delay_embedding", "delay_embedding_random", "zero_embedding"]
    flags = [False, True, True, False, True]
    together = encode(series, methods, flags)
    reordered = encode(series[::-1], methods[::-1], flags[::-1])
    observed = np.random.default_rng(1).normal(size=(9, 3, len(series), MODEL_DIMS)).astype(np.float32)
    decoded = together.decode(observed)
    for s, x in enumerate(series):
        alone = encode([x], [methods[s]], [flags[s]])
        for other, u in ((together, s), (reordered, len(series) - 1 - s)):
            # The trend fit's matrix product may round differently at another batch size.
            np.testing.assert_allclose(unit_frames(other, u), unit_frames(alone, 0), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(other.starts[u], alone.starts[0], rtol=1e-9, atol=1e-12)
            assert other.keys[u] == alone.keys[0]
        np.testing.assert_allclose(decoded[:, :, s], alone.decode(observed[:, :, [s]])[:, :, 0], rtol=1e-9)


def test_content_keys_the_caller_already_has_encode_as_the_hashed_ones():
    # The pipeline passes the keys its choices were made on, so a forecast hashes each series once.
    series = panel(1)
    methods = ["delay_embedding_random", "pos_embedding", "delay_embedding_random", "delay_embedding", "pos_embedding"]
    flags = [False, True, False, False, True]
    source = [4, 0, 2, 2, 1]
    hashed = encode(series, methods, flags, source=source)
    given = encode(series, methods, flags, source=source, keys=[content_key(x) for x in series])
    assert given.keys == hashed.keys == tuple(content_key(series[s]) for s in source)
    for name in ("context", "valid_from", "starts", "mean", "std"):
        np.testing.assert_array_equal(getattr(given, name), getattr(hashed, name))


def test_random_lags_depend_only_on_seed_and_content_and_come_from_the_counter_based_stream():
    keys = np.array([content_key(x) for x in panel(1)], dtype=np.uint64)
    lags = preprocessing.random_lags(3, keys, 2)
    low, high = preprocessing.RANDOM_LAG_RANGE
    assert lags.shape == (len(keys), 2) and lags.min() >= low and lags.max() <= high
    np.testing.assert_array_equal(preprocessing.random_lags(3, keys[::-1], 2), lags[::-1])
    assert not np.array_equal(preprocessing.random_lags(4, keys, 2), lags)
    wide = preprocessing.random_lags(2**100 + 3, np.arange(400, dtype=np.uint64), 2)  # SeedSequence-sized seeds
    assert set(np.unique(wide)) == set(range(low, high + 1))
    # Path 0 of the unit's noise stream, so no generator object per series; and the lags are uniform.
    np.testing.assert_array_equal(lags, encoding_integers(3, keys, 2, low, high))
    counts = np.bincount(preprocessing.random_lags(0, np.arange(80_000, dtype=np.uint64), 1).ravel())[low:]
    assert counts.min() > 0.95 * 80_000 / (high - low + 1) and counts.max() < 1.05 * 80_000 / (high - low + 1)


def test_peaks_are_scipys_including_plateaus():
    rng = np.random.default_rng(2)
    ties = rng.integers(0, 4, size=(300, 25)).astype(float)  # plateaus of every length
    rows = np.concatenate([ties, rng.normal(size=(100, 25))])  # and rows without a tie
    found = preprocessing._peak_midpoints(rows)
    for row, mask in zip(rows, found, strict=True):
        np.testing.assert_array_equal(np.nonzero(mask)[0], signal.find_peaks(row)[0])


def test_initial_points_complete_from_the_nearest_frame():
    series = panel(1)
    starts = np.linspace(-1, 1, len(series))[:, None]
    encoding = encode(series, ["delay_embedding"] * len(series), [False] * len(series), starts=starts)
    for s, x in enumerate(series):
        frames = reference_units(x, "delay_embedding")[0]
        given = (starts[s] - x.mean(axis=0)) / x.std(axis=0)
        nearest = frames[np.argmin(((frames[:, :1] - given) ** 2).sum(axis=1))]
        np.testing.assert_allclose(encoding.starts[s], np.concatenate([given, nearest[1:]]), rtol=1e-12)


def trending_rows() -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(300.0)
    rows = [10 + 0.05 * t + np.sin(2 * np.pi * t / 12), np.exp(0.01 * t) + 0.1 * rng.standard_normal(300)]
    for _ in range(12):
        rows.append(rng.standard_normal(300).cumsum() + rng.uniform(-1, 1) * t ** rng.uniform(0.2, 2.5))
    return np.stack(rows)


def test_box_cox_lambda_is_scipys_maximum_likelihood_estimate():
    x = trending_rows()
    fit, _ = TrendFit.fit(x)
    expected = np.array([stats.boxcox(row - shift)[1] for row, shift in zip(x, fit.shift, strict=True)])
    np.testing.assert_allclose(fit.lam, expected, atol=0.02)


def test_power_trend_fits_at_least_as_well_as_curve_fit():
    y = trending_rows()
    t = np.arange(1, y.shape[1] + 1.0)
    a, b, c, _ = _power_trend(y)
    assert ((c >= 0.05) & (c <= 3.0)).all()
    for row, fitted in zip(y, a[:, None] + b[:, None] * t ** c[:, None], strict=True):
        slope, intercept = np.polyfit(t, row, 1)
        with np.errstate(all="ignore"):
            coef, _ = optimize.curve_fit(
                lambda tt, a, b, c: a + b * tt**c,
                t,
                row,
                p0=(intercept, slope, 1.0),
                bounds=([-np.inf, -np.inf, 0.05], [np.inf, np.inf, 3.0]),
                maxfev=2000,
            )
        best = ((row - (coef[0] + coef[1] * t ** coef[2])) ** 2).sum()
        assert ((row - fitted) ** 2).sum() <= best * (1 + 1e-3)


def test_trend_inverse_undoes_the_transform():
    x = trending_rows()
    fit, detrended = TrendFit.fit(x)
    from_start = dataclasses.replace(fit, length=np.zeros_like(fit.length))  # continue from t = 1
    np.testing.assert_allclose(from_start.inverse(detrended[:, :, None])[:, :, 0], x, rtol=1e-9, atol=1e-9)


def test_constant_series_survive_the_nonstationary_transform():
    series = [np.full((50, 1), 3.0), np.linspace(0, 1, 50)[:, None] ** 2 + 1]
    encoding = encode(series, ["pos_embedding"] * 2, [True, True])
    assert np.isfinite(encoding.context).all()
    decoded = encoding.decode(np.zeros((4, 1, 2, MODEL_DIMS), dtype=np.float32))
    assert (decoded[:, :, 0] == 3.0).all() and np.isfinite(decoded).all()


def test_validation_of_a_panel_chooses_for_each_series_what_it_chooses_alone(tiny_model):
    series = [x[:, :1] for x in panel(1, lengths=(60, 130, 130, 90, 64))]
    pipeline = DynaMixPipeline(tiny_model, ForecastOptions(random_state=0))
    together = [choice.record() for choice in pipeline.choose_settings(series)]
    for x, record in zip(series, together, strict=True):
        (alone,) = [choice.record() for choice in pipeline.choose_settings(x)]
        assert {k: v for k, v in alone.items() if k != "validation_mase"} == {
            k: v for k, v in record.items() if k != "validation_mase"
        }
        np.testing.assert_allclose(record["validation_mase"], alone["validation_mase"], rtol=1e-6)


@pytest.mark.parametrize("preprocessing", ["delay_embedding_random", "pos_embedding"])
def test_a_nonstationary_forecast_is_the_same_alone_and_in_a_batch(tiny_model, preprocessing):
    series = [x + np.linspace(0, 30, len(x))[:, None] for x in panel(2)]  # trending, mixed lengths
    options = ForecastOptions(
        preprocessing=preprocessing, nonstationary=True, random_state=1, n_samples=3, on_divergence="nan"
    )
    pipeline = DynaMixPipeline(tiny_model, options)
    together = pipeline.sample_paths(series, 8)  # (P, H, S, D)
    assert np.isfinite(together).all()
    for s, x in enumerate(series):
        alone = pipeline.sample_paths(x, 8)
        scale = np.abs(x).max()
        np.testing.assert_allclose(together[:, :, s], alone, rtol=1e-5, atol=1e-5 * scale)
