"""Transforms between data space and the model's space, array-wise over a whole batch of series.

``preprocessing`` holds the scaling, embedding and minimum-length rules, ``trend`` the
Box-Cox and power-law trend, ``encoding`` the batch encoding that applies them to every
series at once and inverts them on the forecast.
"""
