"""Timing only: Chronos-T5 and Chronos-Bolt inference next to DynaMix, on one thread.

The Chronos models are built from their published architecture configs (the
``config.json`` files of the ``amazon/chronos-*`` Hugging Face repositories) with
randomly initialized weights, because the real weights cannot be downloaded here.
Compute cost does not depend on the weight values, so the times are those of the
real models; the forecasts are meaningless and never leave this module. The built
models' parameter counts are checked against the published ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from ..forecast import forecast

WARMUP_HORIZON = 2
CHRONOS_SAMPLES = 20  # the num_samples default in every Chronos-T5 config
TOKENIZER = {"low_limit": -15.0, "high_limit": 15.0}
T5_SIZES = {
    "tiny": {"d_model": 256, "d_ff": 1024, "num_heads": 4, "d_kv": 64, "num_layers": 4},
    "mini": {"d_model": 384, "d_ff": 1536, "num_heads": 8, "d_kv": 64, "num_layers": 4},
    "small": {"d_model": 512, "d_ff": 2048, "num_heads": 8, "d_kv": 64, "num_layers": 6},
}
CHRONOS_MODELS = {
    "chronos-t5-tiny": ("t5", "tiny", 8e6),
    "chronos-t5-mini": ("t5", "mini", 20e6),
    "chronos-t5-small": ("t5", "small", 46e6),
    "chronos-bolt-tiny": ("bolt", "tiny", 9e6),
    "chronos-bolt-small": ("bolt", "small", 48e6),
}
BOLT_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def chronos_available() -> str | None:
    """None if the timing can run, else why not."""
    try:
        import chronos  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        return f"not run: {err.name} is not installed (pip install 'dynamix-adapters[chronos]')"
    return None


def build_chronos(name: str):
    """A randomly initialized Chronos model with the published architecture: (pipeline, network).

    ``pipeline.predict(context, horizon)`` forecasts as the released pipeline does, and
    ``network`` is the torch module, whose config carries the ``chronos_config`` block.
    """
    import torch
    import transformers
    from chronos import ChronosConfig, ChronosModel, ChronosPipeline
    from chronos.chronos_bolt import ChronosBoltModelForForecasting, ChronosBoltPipeline

    family, size, _ = CHRONOS_MODELS[name]
    torch.manual_seed(0)
    t5 = {
        **T5_SIZES[size],
        "feed_forward_proj": "relu",
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
    }
    if family == "t5":
        config = ChronosConfig(
            tokenizer_class="MeanScaleUniformBins",
            tokenizer_kwargs=TOKENIZER,
            context_length=512,
            prediction_length=64,
            n_tokens=4096,
            n_special_tokens=2,
            pad_token_id=0,
            eos_token_id=1,
            use_eos_token=True,
            model_type="seq2seq",
            num_samples=CHRONOS_SAMPLES,
            temperature=1.0,
            top_k=50,
            top_p=1.0,
        )
        network = transformers.T5ForConditionalGeneration(
            transformers.T5Config(**t5, vocab_size=4096, eos_token_id=1, chronos_config=asdict(config))
        ).eval()
        pipeline = ChronosPipeline(tokenizer=config.create_tokenizer(), model=ChronosModel(config, network))
    else:
        config = transformers.T5Config(**t5)
        config.chronos_config = {
            "context_length": 2048,
            "prediction_length": 64,
            "input_patch_size": 16,
            "input_patch_stride": 16,
            "quantiles": BOLT_QUANTILES,
            "use_reg_token": True,
        }
        network = ChronosBoltModelForForecasting(config).eval()
        pipeline = ChronosBoltPipeline(network)
    return pipeline, network


def _median_seconds(run: Callable[[int], object], horizon: int, repeats: int, budget: float = 30.0) -> float:
    """Median wall time of ``run(horizon)`` over ``repeats`` runs, fewer once ``budget`` seconds are spent."""
    run(WARMUP_HORIZON)  # one-off allocation and compilation are not what is being compared
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        run(horizon)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timing_rows(
    weights: str,
    names: list[str],
    context: np.ndarray,
    horizon: int,
    repeats: int,
    progress: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Seconds per forecast of one univariate series for DynaMix (1 and 20 paths) and each Chronos model."""
    from ..weights import load_model

    series = context[:, None]
    dynamix_parameters = load_model(weights).parameter_count()
    rows = []
    for paths in (None, CHRONOS_SAMPLES):

        def run(steps: int, paths=paths):
            return forecast(weights, series, steps, random_state=0, n_samples=paths)

        rows.append(
            {
                "model": f"DynaMix ({weights})",
                "weights": "trained",
                "parameters": dynamix_parameters,
                "published_parameters": dynamix_parameters,
                "output": "1 path" if paths is None else f"{paths} sample paths",
                "seconds": _median_seconds(run, horizon, repeats),
            }
        )
        progress()
    import torch

    inputs = torch.as_tensor(context, dtype=torch.float32)
    for name in names:
        pipeline, network = build_chronos(name)
        rows.append(
            {
                "model": name,
                "weights": "random (timing only)",
                "parameters": sum(p.numel() for p in network.parameters()),
                "published_parameters": int(CHRONOS_MODELS[name][2]),
                "output": (
                    f"{CHRONOS_SAMPLES} sample paths" if CHRONOS_MODELS[name][0] == "t5" else "9 quantiles, one pass"
                ),
                "seconds": _median_seconds(
                    lambda steps, pipeline=pipeline: pipeline.predict(inputs, steps), horizon, repeats
                ),
            }
        )
        progress()
    base = rows[0]["seconds"]
    for row in rows:
        row.update(context_length=len(context), horizon=horizon, relative_to_dynamix=row["seconds"] / base)
    return rows
