import numpy as np
import pytest
import torch

from dynamix_adapters import forecast
from dynamix_adapters.rollout import select_backend
from dynamix_adapters.rollout.dispatch import BATCHED_MIN_TRAJECTORIES
from dynamix_adapters.transforms.preprocessing import EMBEDDINGS, dominant_period, min_context_length


@pytest.fixture
def sine():
    t = np.arange(300)
    return (3.0 + 2.0 * np.sin(2 * np.pi * t / 25))[:, None]


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_every_embedding_forecasts(tiny_model, sine, embedding):
    out = forecast(tiny_model, sine, 40, preprocessing=embedding, random_state=0)
    assert out.shape == (40, 1)
    assert np.isfinite(out).all()


def test_shapes_for_single_batch_list_and_samples(tiny_model):
    rng = np.random.default_rng(0)
    single = rng.normal(size=(100, 2))
    batch = rng.normal(size=(100, 4, 2))
    assert forecast(tiny_model, single, 7, random_state=0).shape == (7, 2)
    assert forecast(tiny_model, batch, 7, random_state=0).shape == (7, 4, 2)
    assert forecast(tiny_model, torch.from_numpy(batch), 7, random_state=0).shape == (7, 4, 2)
    assert forecast(tiny_model, [single, single[:60]], 7, random_state=0).shape == (7, 2, 2)
    assert forecast(tiny_model, single, 7, random_state=0, n_samples=5).shape == (5, 7, 2)


def test_batched_series_get_their_single_forecasts(official_model, shared_series):
    x = shared_series("lorenz63")[:400]
    alone = [forecast(official_model, x[i * 50 : i * 50 + 300], 30, random_state=4) for i in range(3)]
    batched = forecast(official_model, np.stack([x[i * 50 : i * 50 + 300] for i in range(3)], 1), 30, random_state=4)
    for i in range(3):
        np.testing.assert_allclose(batched[:, i], alone[i], rtol=1e-4, atol=1e-4)


def test_a_panels_point_forecasts_run_batched_and_equal_each_series_alone_bit_for_bit(official_model, shared_series):
    """20 one-path forecasts take the batched kernel, a lone one the per-series kernel: the same numbers."""
    x = shared_series("lorenz63")
    windows = [x[i * 97 : i * 97 + 300 + 7 * i] for i in range(BATCHED_MIN_TRAJECTORIES + 4)]
    assert select_backend("auto", official_model, trajectories=len(windows)) == "batched"
    panel = forecast(official_model, windows, 200, random_state=4)
    for i in (0, 7, len(windows) - 1):
        np.testing.assert_array_equal(panel[:, i], forecast(official_model, windows[i], 200, random_state=4))


def test_unequal_lengths_match_single_forecasts(tiny_model):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(150, 3)), rng.normal(size=(80, 3))
    both = forecast(tiny_model, [a, b], 20, random_state=2)
    np.testing.assert_allclose(both[:, 1], forecast(tiny_model, b, 20, random_state=2), rtol=1e-4, atol=1e-5)


def test_random_state_repeats_exactly_and_differs_between_seeds(official_model, shared_series):
    x = shared_series("lorenz63")[:500]
    a = forecast(official_model, x, 200, random_state=7)
    np.testing.assert_array_equal(a, forecast(official_model, x, 200, random_state=7))
    np.testing.assert_array_equal(a, forecast(official_model, x, 200, random_state=np.random.default_rng(7)) * 0 + a)
    assert not np.allclose(a, forecast(official_model, x, 200, random_state=8))
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(
        forecast(official_model, x, 50, random_state=g1), forecast(official_model, x, 50, random_state=g2)
    )


@pytest.mark.parametrize("settings", ["defaults", "fixed"])
def test_more_dims_than_model_forecast_as_univariate(tiny_model, settings):
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(120, 5)).cumsum(axis=0)
    options = {"random_state": 1, "n_samples": 4}
    if settings == "fixed":
        options.update(preprocessing="pos_embedding", nonstationary=False)
    out = forecast(tiny_model, wide, 9, **options)
    assert out.shape == (4, 9, 5)
    for d in (0, 4):
        np.testing.assert_array_equal(out[..., d], forecast(tiny_model, wide[:, [d]], 9, **options)[..., 0])


def test_output_is_in_input_scale(official_model, shared_series):
    x = 1000.0 + 50.0 * shared_series("lorenz63")[:2000]
    out = forecast(official_model, x, 2000, random_state=0)
    np.testing.assert_allclose(out.mean(axis=0), x.mean(axis=0), atol=0.6 * 50)
    np.testing.assert_allclose(out.std(axis=0), x.std(axis=0), rtol=0.3)
    np.testing.assert_allclose(out[0], x[-1], atol=0.2 * 50)


def test_constant_dimension_forecasts_constant(tiny_model):
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=200), np.full(200, 4.2)])
    out = forecast(tiny_model, x, 30, random_state=0)
    assert np.all(out[:, 1] == 4.2)
    flat = forecast(tiny_model, np.full((50, 1), -3.0), 10, random_state=0)
    assert np.all(flat == -3.0)


def test_standardize_false_keeps_raw_values(tiny_model):
    x = np.random.default_rng(0).normal(size=(100, 3))
    out = forecast(tiny_model, x, 5, standardize=False, random_state=0)
    assert out.shape == (5, 3)


def test_nonstationary_follows_a_trend(official_model, shared_series):
    air = shared_series("AirPassengers").astype(float)[:, None]
    context, truth = air[:-24], air[-24:]
    trended = forecast(official_model, context, 24, nonstationary=True, random_state=0)
    assert np.isfinite(trended).all()
    assert trended.mean() > context[-48:].mean(), "the growth trend continues"
    assert abs(trended.mean() - truth.mean()) / truth.mean() < 0.35


def test_initial_x_completion(official_model, shared_series):
    selkov = shared_series("selkov")
    out = forecast(
        official_model,
        selkov,
        100,
        preprocessing="zero_embedding",
        standardize=False,
        initial_x=np.array([1.0, -1.0]),
        random_state=0,
    )
    assert out.shape == (100, 2)
    span = np.ptp(selkov, axis=0)
    assert np.all(np.abs(out - selkov.mean(0)) < 5 * span), "bounded"
    late = out[50:]
    first = late[0]
    returns = np.linalg.norm(late[10:] - first, axis=1).min()
    assert returns < 0.25 * np.linalg.norm(np.ptp(late, axis=0)), "the orbit comes back near itself (closed orbit)"


def test_partial_initial_x_uses_nearest_frame(tiny_model):
    x = np.random.default_rng(0).normal(size=(100, 3))
    out = forecast(tiny_model, x, 5, initial_x=[0.1], random_state=0)
    assert out.shape == (5, 3)


def test_pos_embedding_period_finds_the_cycle():
    t = np.arange(500)
    assert int(dominant_period(np.sin(2 * np.pi * t / 60))) in (60, 120, 180)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(context=np.array([[1.0], [np.nan], [2.0]] * 10)), "NaN"),
        (dict(context=np.array([[1.0], [np.inf], [2.0]] * 10)), "inf"),
        (dict(context=np.ones((1, 3))), "at least 2"),
        (dict(context=np.ones((5, 1)), preprocessing="delay_embedding_random"), "needs at least 12"),
        (dict(horizon=0), "horizon must be an integer >= 1"),
        (dict(context=np.ones(30)), "must have 2 dims"),
        (dict(context=np.ones((3, 3, 3, 3))), "must have 2 dims"),
        (dict(initial_x=np.ones(3)), "initial_x has 3 dims"),
        (dict(initial_x=np.ones((4, 1))), "initial_x must be"),
        (dict(preprocessing="fourier"), "Unknown preprocessing 'fourier'"),
        (dict(model="no-such-model"), "Unknown model 'no-such-model'"),
    ],
)
def test_bad_input_raises_clear_value_error(tiny_model, kwargs, message):
    args = dict(model=tiny_model, context=np.random.default_rng(0).normal(size=(50, 2)), horizon=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        forecast(args.pop("model"), args.pop("context"), args.pop("horizon"), **args)


def test_non_numeric_context_is_a_type_error(tiny_model):
    with pytest.raises(TypeError, match="numeric"):
        forecast(tiny_model, np.array([["a"], ["b"], ["c"]]), 3)


def test_context_is_not_mutated(tiny_model):
    x = np.random.default_rng(0).normal(size=(80, 2))
    before = x.copy()
    forecast(tiny_model, x, 10, nonstationary=True, random_state=0)
    np.testing.assert_array_equal(x, before)


def test_min_context_length_table():
    assert min_context_length("pos_embedding", 1) == 2
    assert min_context_length("delay_embedding", 1) == 4
    assert min_context_length("delay_embedding_random", 1) == 12
    assert min_context_length("delay_embedding", 3) == 2
