import numpy as np
import pandas as pd
import pytest

from dynamix_adapters.cli import future_index, main
from dynamix_adapters.weights import MODEL_DIR_ENV, tiny_test_checkpoint


@pytest.fixture
def monthly_csv(tmp_path):
    t = np.arange(120)
    frame = pd.DataFrame(
        {
            "month": pd.date_range("2000-01-01", periods=len(t), freq="MS").strftime("%Y-%m-%d"),
            "load": 10 + np.sin(2 * np.pi * t / 12),
            "temp": 5 + np.cos(2 * np.pi * t / 12),
            "label": ["a"] * len(t),
        }
    )
    path = tmp_path / "monthly.csv"
    frame.to_csv(path, index=False)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_forecast_csv_with_quantiles_and_plot(monthly_csv, tmp_path, capsys):
    output, plot = tmp_path / "out.csv", tmp_path / "out.png"
    code, _, err = run(
        capsys, "forecast", monthly_csv, "--horizon", 6, "--columns", "load,temp",
        "--model", tiny_test_checkpoint(), "--samples", 20, "--output", output, "--plot", plot,
    )  # fmt: skip
    assert code == 0, err
    result = pd.read_csv(output, index_col="time", parse_dates=True)
    assert list(result.index.strftime("%Y-%m-%d")) == [f"2010-{m:02d}-01" for m in range(1, 7)]
    assert {"load", "temp", "load_q0.05", "temp_q0.95"} <= set(result.columns)
    assert (result["load_q0.05"] <= result["load_q0.95"]).all()
    assert plot.stat().st_size > 1000


def test_same_seed_same_output(monthly_csv, capsys):
    # pos_embedding: on this series auto picks a delay embedding, where the tiny random model's attention is
    # too sharp for the gating noise to move the point forecast at all.
    args = ("forecast", monthly_csv, "--horizon", 4, "--columns", "load", "--model", tiny_test_checkpoint())
    args = (*args, "--preprocessing", "pos_embedding")
    first = run(capsys, *args, "--seed", 3)[1]
    assert first == run(capsys, *args, "--seed", 3)[1]
    assert first != run(capsys, *args, "--seed", 4)[1]


def _write_empty(folder):
    path = folder / "empty.csv"
    path.write_text("")
    return path


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (lambda folder: folder / "missing.csv", (), "does not exist"),
        (_write_empty, (), "is empty"),
        (None, ("--columns", "label"), "not numeric"),
        (None, ("--columns", "nope"), "unknown columns ['nope']"),
        (None, ("--time-col", "nope"), "is not a column"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_exit(monthly_csv, tmp_path, capsys, source, extra, message):
    path = source(tmp_path) if source else monthly_csv
    code, _, err = run(capsys, "forecast", path, "--horizon", 3, "--model", tiny_test_checkpoint(), *extra)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--horizon", 0), "--horizon must be >= 1"), (("--horizon", 3, "--model", "no-such"), "Unknown model 'no-such'")],
)
def test_bad_horizon_or_model(monthly_csv, capsys, extra, message):
    code, _, err = run(capsys, "forecast", monthly_csv, *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_unparseable_time_column(tmp_path, capsys):
    path = tmp_path / "bad_time.csv"
    pd.DataFrame({"time": ["yesterday", "noon", "later"] * 5, "x": np.arange(15.0)}).to_csv(path, index=False)
    code, _, err = run(capsys, "forecast", path, "--horizon", 2, "--model", tiny_test_checkpoint())
    assert code == 2 and "cannot parse time column 'time'" in err


def test_models_lists_official_weights(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "dynamix-3d-alrnn-v1.0" in out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("forecast", "models", "train", "benchmark"):
        assert command in out


def test_future_index_continues_the_frequency():
    index = pd.date_range("2020-01-01", periods=5, freq="h")
    assert list(future_index(index, 2)) == list(pd.date_range("2020-01-01 05:00", periods=2, freq="h"))
    assert list(future_index(pd.RangeIndex(4), 2)) == [4, 5]


def test_train_arguments_reach_the_training_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "--config" in capsys.readouterr().out


@pytest.fixture
def long_csv(tmp_path):
    """Three ids of unequal lengths, one row per (id, date), rows shuffled."""
    frames = [
        pd.DataFrame(
            {"store": name, "day": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d")}
        ).assign(sales=10 + np.sin(np.arange(n) / 3 + k))
        for k, (name, n) in enumerate({"a": 50, "b": 35, "c": 42}.items())
    ]
    path = tmp_path / "long.csv"
    pd.concat(frames).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


LONG_ARGS = ("--id-col", "store", "--time-col", "day", "--preprocessing", "pos_embedding", "--nonstationary", "false")


def test_forecast_long_format_csv_to_parquet(long_csv, tmp_path, capsys):
    output = tmp_path / "forecast.parquet"
    code, _, err = run(
        capsys, "forecast", long_csv, *LONG_ARGS, "--horizon", 3, "--model", tiny_test_checkpoint(),
        "--samples", 10, "--output", output,
    )  # fmt: skip
    assert code == 0, err
    result = pd.read_parquet(output)
    assert result["store"].tolist() == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert result["day"].iloc[3:6].dt.strftime("%Y-%m-%d").tolist() == ["2024-02-05", "2024-02-06", "2024-02-07"]
    assert {"sales", "sales_q0.05", "sales_q0.95", "error"} <= set(result.columns)
    assert result["error"].isna().all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--id-col", "store"), "--id-col needs --time-col"),
        (("--id-col", "shop", "--time-col", "day"), "no column 'shop'"),
        (("--id-col", "store", "--time-col", "day", "--columns", "day"), "Value column 'day' must be real numbers"),
    ],
)
def test_long_format_bad_input_is_one_line(long_csv, capsys, extra, message):
    code, _, err = run(capsys, "forecast", long_csv, "--horizon", 3, "--model", tiny_test_checkpoint(), *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_long_format_duplicate_time_stamps(long_csv, capsys):
    frame = pd.read_csv(long_csv)
    pd.concat([frame, frame.iloc[:1]]).to_csv(long_csv, index=False)
    code, _, err = run(capsys, "forecast", long_csv, *LONG_ARGS, "--horizon", 3, "--model", tiny_test_checkpoint())
    assert code == 2 and "duplicate time stamps" in err
