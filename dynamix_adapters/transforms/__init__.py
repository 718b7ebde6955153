"""Transforms between data space and the model's space, array-wise over a whole batch of series.

``preprocessing`` holds the scaling, embedding and minimum-length rules, ``trend`` the
Box-Cox and power-law trend, ``encoding`` the batch encoding that applies them to every
series at once and inverts them on the forecast. ``selection`` chooses each series'
"auto" settings by in-context validation over all series, candidates and windows at once,
and ``calibration`` turns that validation's errors into the spread of the sample paths.
"""
