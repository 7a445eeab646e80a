"""Options risk on each backend, against NumPy/SciPy vectorised implementations of the same math run
in the same process: greeks of 10^6 options, and portfolio margin of 10,000 accounts x 20
positions over the full scenario grid (9 moves x 3 vol states, each position at its worst, + 8
extended moves), the NumPy/SciPy side being accel.risk_numpy, the margin software-only validators
run."""
import numpy as np
from scipy.special import ndtr

import accel.risk as risk
from accel import risk_numpy
from accel.risk import CALL, FUTURE, PUT, Marks, Portfolio

N_OPTIONS = 10**6
ACCOUNTS, POSITIONS, INSTRUMENTS = 10_000, 20, 400


def options(n=N_OPTIONS, seed=1):
    rng = np.random.default_rng(seed)
    f = rng.uniform(1_000.0, 100_000.0, n)
    return (f, f * np.exp(rng.normal(0, 0.3, n)), rng.uniform(1 / 365, 1.0, n), 0.02,
            rng.uniform(0.2, 1.5, n), rng.random(n) < 0.5)


def numpy_greeks(f, k, t, r, vol, is_call):
    """Black-76 price and greeks, per 1.00, as a NumPy/SciPy user would write them."""
    w = np.where(is_call, 1.0, -1.0)
    disc = np.exp(-r * t)
    rt = np.sqrt(t)
    s = vol * rt
    d1 = np.log(f / k) / s + 0.5 * s
    d2 = d1 - s
    n1, n2 = ndtr(w * d1), ndtr(w * d2)
    pdf = np.exp(-0.5 * d1 * d1) / np.sqrt(2 * np.pi)
    price = w * disc * (f * n1 - k * n2)
    vega = disc * f * pdf * rt
    return (price, w * disc * n1, disc * pdf / (f * s), vega, r * price - vega * vol / (2 * t), -t * price)


def book(seed=2):
    rng = np.random.default_rng(seed)
    kind = rng.choice([CALL, PUT, FUTURE], INSTRUMENTS, p=[0.45, 0.45, 0.1]).astype(np.uint8)
    marks = Marks(index=60_000.0, rate=0.02, forward=60_000.0 * np.exp(rng.normal(0, 0.01, INSTRUMENTS)),
                  strike=60_000.0 * np.exp(rng.normal(0, 0.25, INSTRUMENTS)),
                  expiry=rng.uniform(1 / 365, 1.0, INSTRUMENTS), vol=rng.uniform(0.3, 1.2, INSTRUMENTS), kind=kind)
    pf = Portfolio(offsets=np.arange(ACCOUNTS + 1) * POSITIONS,
                   instrument=rng.integers(0, INSTRUMENTS, ACCOUNTS * POSITIONS),
                   size=np.round(rng.normal(0, 5, ACCOUNTS * POSITIONS), 1))
    return pf, marks


def test_greeks_numpy(benchmark):
    args = options()
    benchmark.group = f"greeks n={N_OPTIONS}"
    benchmark.extra_info.update(impl="numpy+scipy", n=N_OPTIONS, baseline=True)
    benchmark.pedantic(numpy_greeks, args=args, rounds=5, warmup_rounds=1)


def test_greeks_accel(benchmark, backend):
    args = options()
    expected = risk.greeks(*args, backend="cpu")
    got = risk.greeks(*args, backend=backend)  # also compiles / warms up
    assert all(a.tobytes() == b.tobytes() for a, b in zip(expected, got))
    assert np.all(np.abs(got.price - numpy_greeks(*args)[0]) <= 1e-9 * args[0])
    benchmark.group = f"greeks n={N_OPTIONS}"
    benchmark.extra_info.update(impl=f"accel-{backend.name}", device=backend.device, n=N_OPTIONS)
    benchmark.pedantic(risk.greeks, args=args, kwargs={"backend": backend}, rounds=10, warmup_rounds=1)


def test_margin_numpy(benchmark):
    pf, mk = book()
    benchmark.group = f"portfolio_margin {ACCOUNTS}x{POSITIONS}"
    benchmark.extra_info.update(impl="numpy+scipy", n=ACCOUNTS, baseline=True)
    benchmark.pedantic(risk_numpy.portfolio_margin, args=(pf, mk), rounds=3, warmup_rounds=0)


def test_margin_accel(benchmark, backend):
    pf, mk = book()
    expected = risk.portfolio_margin(pf, mk, backend="cpu")
    got = risk.portfolio_margin(pf, mk, backend=backend)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(expected, got))
    ref = risk_numpy.portfolio_margin(pf, mk)
    for a, b in ((got.maintenance, ref.maintenance), (got.initial, ref.initial)):  # ticks
        assert np.all(np.abs(a - b) <= 1e-9 * np.abs(b) + 2)
    benchmark.group = f"portfolio_margin {ACCOUNTS}x{POSITIONS}"
    benchmark.extra_info.update(impl=f"accel-{backend.name}", device=backend.device, n=ACCOUNTS)
    benchmark.pedantic(risk.portfolio_margin, args=(pf, mk), kwargs={"backend": backend}, rounds=5,
                       warmup_rounds=1)


def test_greeks_cpu_one_thread(benchmark):
    """The C fallback on one core, to separate vectorisation from the two-core split."""
    from accel.backends.cpu import CpuBackend
    args = options()
    benchmark.group = f"greeks n={N_OPTIONS}"
    benchmark.extra_info.update(impl="accel-cpu (1 thread)", n=N_OPTIONS)
    benchmark.pedantic(risk.greeks, args=args, kwargs={"backend": CpuBackend(1)}, rounds=5, warmup_rounds=1)
