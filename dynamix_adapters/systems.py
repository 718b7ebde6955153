"""Trajectories of dynamical systems for demos, tests and benchmarks.

Lorenz-63 is built in (scipy only). Any of the dysts systems is available through
:func:`dysts_trajectory` when dysts is installed (extra ``benchmark`` or ``training``).
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

ODE_TOLERANCE = 1e-9


def lorenz63(t, state, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    x, y, z = state
    return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]


def lorenz63_trajectory(n_steps: int, dt: float = 0.02, initial=(1.0, 1.0, 1.0), transient: int = 1000) -> np.ndarray:
    """Integrate Lorenz-63 with DOP853, drop a transient, and return (n_steps, 3) samples every ``dt``.

    >>> lorenz63_trajectory(10).shape
    (10, 3)
    """
    total = n_steps + transient
    times = np.arange(total) * dt
    solution = solve_ivp(
        lorenz63, (0.0, times[-1]), initial, t_eval=times, method="DOP853", rtol=ODE_TOLERANCE, atol=ODE_TOLERANCE
    )
    return solution.y.T[transient:]


def dysts_trajectory(name: str, n_steps: int, pts_per_period: int = 40, seed: int = 0) -> np.ndarray:
    """A dysts system's trajectory (n_steps, dims), integrated with DOP853 from a seeded random start."""
    try:
        from dysts import flows
    except ImportError as err:
        raise ImportError("dysts is needed here: pip install 'dynamix-adapters[benchmark]'") from err
    system = getattr(flows, name)()
    rng = np.random.default_rng(seed)
    system.ic = np.asarray(system.ic) * (1.0 + 0.1 * rng.standard_normal(len(system.ic)))
    trajectory = system.make_trajectory(
        n_steps, pts_per_period=pts_per_period, method="DOP853", rtol=ODE_TOLERANCE, atol=ODE_TOLERANCE
    )
    return np.asarray(trajectory)
