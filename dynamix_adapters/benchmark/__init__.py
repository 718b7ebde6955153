"""The benchmark suite: DynaMix against ARIMA, ETS, Theta, naive forecasters and Chronos.

Run ``python -m dynamix_adapters.benchmark`` (or ``dynamix-adapters benchmark``);
``--quick`` is the small CI variant. Three parts, each optional with ``--tracks``:

- Track A (:mod:`.dynamical`): long-term statistics (D_stsp, D_H, MASE over 10 steps)
  on chaotic 3-D dysts systems the bundled weights never saw; DynaMix with every weight
  set available offline, statsforecast AutoARIMA and AutoETS per dim, a last-value
  naive and a seasonal naive forecaster at the context's dominant period.
- Track B (:mod:`.real_world`): short-term accuracy (MASE, sMAPE, coverage of 80% and
  95% intervals) on real series through sktime ``evaluate`` with expanding windows;
  DynaMix with every embedding, AutoARIMA, AutoETS, AutoTheta, seasonal naive, and
  Chronos when its weights are in the local Hugging Face cache. One dataset also runs
  through darts ``backtest``.
- Timing (:mod:`.chronos_timing`): Chronos-T5 and Chronos-Bolt built from their
  published configs with random weights, timed next to DynaMix (timing only).

Results (CSV), ``report.md`` with median and interquartile range per model and
metric, and plots go to ``--output`` (default ``outputs/benchmark``). Every model runs
on one thread. The official weights count as available when ``DYNAMIX_MODEL_DIR``
points at a folder holding them; the bundled weights when they ship in the package.

The orchestration lives in :mod:`.suite`.
"""
