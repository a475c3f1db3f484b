"""Seeded market paths for the reference engine, generated with numpy, one random stream per quantity.

Every quantity draws from its own generator, seeded with ``(seed, crc32(stream name))``, and every
path is built with operations whose i-th value depends only on draws 0..i (cumulative sums and
products, running maxima, a block-wise AR(1) recursion aligned to step 0). So the first k values
of a path do not depend on how long it is: an engine over a longer range, or a live source
re-created later with a larger horizon, reproduces the same history bit for bit.

What is simulated (one value per timestep unless said otherwise):

- ETH/USD and BTC/USD: correlated geometric Brownian motions (ETH 3,000 at 65 % a year, BTC
  60,000 at 50 %, correlation 0.8), driftless in expectation.
- weETH/ETH exchange rate: 1.04 growing at the 3 % staking APR, with a small mean-reverting
  wiggle (0.05 %, clipped at 0.2 %) and occasional dips of the rate's feed (about one every 45
  days, 0.5-2.8 % deep, recovering with a two-hour e-folding time) — the shocks that push
  leveraged positions over their maximum LTV now and then (the deeper quarter of the dips).
- Lending rates as mean-reverting (Ornstein-Uhlenbeck) APRs: USDT supply ~4.5 %, weETH supply
  ~0.3 % (collateral earns little), WETH borrow ~2.8 %.
- Perpetual funding per venue, per 8-hour interval (boundaries at 00:00, 08:00, 16:00 UTC): a
  common AR(1) factor around 0.01 % per interval (~11 % a year; negative about a fifth of the
  time) plus a small venue-specific part.
- Uniform draws for sporadic activity (gas-paying transactions, airdrops) that the portfolio
  simulation turns into events.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

__all__ = [
    "DEPEG_MAX",
    "FUNDING_INTERVAL_SECONDS",
    "ORACLE_NOISE_BOUND",
    "SECONDS_PER_YEAR",
    "FundingPaths",
    "Market",
    "ar1",
]

SECONDS_PER_YEAR = 365.0 * 86_400.0
FUNDING_INTERVAL_SECONDS = 8 * 3_600

ETH_START_USD = 3_000.0
BTC_START_USD = 60_000.0
ETH_VOL = 0.65
BTC_VOL = 0.50
ETH_BTC_CORRELATION = 0.8

WEETH_START_RATE = 1.04          # ETH per weETH at the start of every run
STAKING_APR = 0.03
DEPEG_MEAN_INTERVAL_S = 45 * 86_400.0
DEPEG_MIN, DEPEG_SPAN = 0.005, 0.023
DEPEG_MAX = DEPEG_MIN + DEPEG_SPAN
DEPEG_EFOLD_S = 2 * 3_600.0
ORACLE_NOISE_SD = 0.0005         # relative wiggle of the rate's feed around its drift
ORACLE_NOISE_REVERSION_PER_YEAR = 365.0
ORACLE_NOISE_BOUND = 4 * ORACLE_NOISE_SD   # the wiggle is clipped here, so it is a hard bound

RATE_REVERSION_PER_YEAR = 12.0   # a shock to a lending rate halves in about three weeks
# (mean APR, stationary standard deviation, floor) of each lending rate
LENDING_RATES: dict[str, tuple[float, float, float]] = {
    "usdt_supply": (0.045, 0.008, 0.005),
    "weeth_supply": (0.003, 0.001, 0.0),
    "weth_borrow": (0.028, 0.004, 0.005),
}

FUNDING_MEAN = 0.0001            # per 8-hour interval
FUNDING_PHI = 0.85               # interval-to-interval persistence of the common factor
FUNDING_COMMON_SD = 0.00011      # stationary standard deviation of the common factor
FUNDING_VENUE_SD = 0.00002
FUNDING_VENUE_OFFSET = 0.00001   # venues sit a little above/below each other on average

_AR1_BLOCK_GROWTH = 1e4          # largest phi**-j used inside one block of ar1()
_AR1_MAX_BLOCK = 4_096


def _rng(seed: int, stream: str) -> np.random.Generator:
    """The generator of one named quantity; independent of every other stream."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _libm(fn: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    """``fn`` (a ``math`` function) element by element. numpy's exp, log and power take a SIMD path
    chosen by the CPU (AVX-512 or AVX2) whose last bits differ between the two, and a seed must give
    the same market on every machine (tests pin the engine's snapshots to the bit; users compare
    runs across machines). The C library's scalar functions give the same bits on both; a year of
    1-minute steps costs ~30 ms a call."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    return np.fromiter(map(fn, flat.tolist()), dtype=np.float64, count=flat.size).reshape(np.shape(x))


def ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """``x[i] = phi * x[i-1] + shocks[i]`` with ``x[-1] = 0``, without a Python loop per element.

    Inside a block starting at s, ``x[s+j] = phi**j * (phi * x[s-1] + cumsum(phi**-m * shocks[s+m])[j])``.
    Blocks are aligned to index 0 and sized so that ``phi**-j`` stays below 1e4 (no loss of
    precision worth mentioning); that alignment keeps every prefix identical whatever the length.
    """
    n = len(shocks)
    out = np.empty(n)
    if n == 0:
        return out
    if not 0.0 < phi < 1.0:
        raise ValueError(f"ar1 needs 0 < phi < 1, got {phi}")
    block = int(min(_AR1_MAX_BLOCK, max(1, math.log(_AR1_BLOCK_GROWTH) // -math.log(phi))))
    exponents = np.arange(block, dtype=np.float64)
    grow = _libm(lambda j: phi ** j, -exponents)
    decay = _libm(lambda j: phi ** j, exponents)
    prev = 0.0
    for s in range(0, n, block):
        e = min(s + block, n)
        k = e - s
        seg = decay[:k] * (phi * prev + np.cumsum(grow[:k] * shocks[s:e]))
        out[s:e] = seg
        prev = float(seg[-1])
    return out


@dataclass(frozen=True)
class FundingPaths:
    """Funding rates per 8-hour boundary and where each timestep stands relative to them.

    ``rates[k, v]`` is the rate of venue v for the interval that ends at boundary ``first + k``
    (boundary b is at ``b * 8h`` since the epoch). ``cumulative[k + 1] - cumulative[j + 1]`` sums
    the rates of boundaries ``j+1..k``, which is what a step that crosses several boundaries (a
    timestep of a day) pays.
    """

    first: int
    rates: np.ndarray
    cumulative: np.ndarray

    def boundary_index(self, timestamps_ns: np.ndarray) -> np.ndarray:
        """Index into ``rates`` of the latest boundary at or before each timestamp."""
        return timestamps_ns // (FUNDING_INTERVAL_SECONDS * 1_000_000_000) - self.first


class Market:
    """The exogenous paths of one run, computed on first use and cached only where the engine keeps them.

    Prices and the weETH rate are cached (snapshots need them); lending rates and random draws are
    returned fresh, because the portfolio simulation consumes them once and they would otherwise
    sit in memory for the lifetime of the engine.
    """

    def __init__(self, timestamps: pd.DatetimeIndex, *, step: pd.Timedelta, seed: int, venues: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.timestamps = timestamps
        self.epoch_ns = timestamps.as_unit("ns").asi8  # pandas may keep s/us; boundary maths is in ns
        self.seed = seed
        self.venues = venues
        self.n = len(timestamps)
        # From the frequency, not the timestamps: a one-step range must simulate like a long one.
        self.step_seconds = float(step.total_seconds())
        self.dt_years = self.step_seconds / SECONDS_PER_YEAR

    # -- prices ---------------------------------------------------------------------------------
    def _eth_shocks(self) -> np.ndarray:
        return _rng(self.seed, "eth").standard_normal(self.n)

    @staticmethod
    def _gbm(start: float, vol: float, shocks: np.ndarray, dt: float) -> np.ndarray:
        log_returns = shocks * (vol * math.sqrt(dt)) - 0.5 * vol * vol * dt
        log_returns[:1] = 0.0  # the path starts exactly at its start price
        return start * _libm(math.exp, np.cumsum(log_returns))

    @cached_property
    def eth_usd(self) -> np.ndarray:
        """ETH price in USD."""
        return self._gbm(ETH_START_USD, ETH_VOL, self._eth_shocks(), self.dt_years)

    @cached_property
    def btc_usd(self) -> np.ndarray:
        """BTC price in USD, correlated with ETH."""
        rho = ETH_BTC_CORRELATION
        shocks = rho * self._eth_shocks() + math.sqrt(1.0 - rho * rho) * _rng(self.seed, "btc").standard_normal(self.n)
        return self._gbm(BTC_START_USD, BTC_VOL, shocks, self.dt_years)

    # -- staking --------------------------------------------------------------------------------
    @cached_property
    def weeth_rate(self) -> np.ndarray:
        """ETH per weETH: the staking drift times the feed's wiggle times (1 - the depth of a dip)."""
        n = self.n
        base = WEETH_START_RATE * _libm(math.exp, STAKING_APR * self.dt_years * np.arange(n, dtype=np.float64))
        draws = _rng(self.seed, "depeg").random((n, 2))
        starts = draws[:, 0] < min(1.0, self.step_seconds / DEPEG_MEAN_INTERVAL_S)
        starts[:1] = False  # a run opens on an undisturbed rate
        sizes = DEPEG_MIN + DEPEG_SPAN * draws[:, 1]
        # depth[i] = max over dips j <= i of size[j] * exp(-(i - j) * lam): a running maximum in
        # log space, so neither a loop nor overflowing exp(+j * lam) is needed.
        lam = self.step_seconds / DEPEG_EFOLD_S
        steps = np.arange(n, dtype=np.float64) * lam
        keys = np.where(starts, _libm(math.log, sizes) + steps, -np.inf)
        depth = _libm(math.exp, np.maximum.accumulate(keys) - steps)
        phi = math.exp(-ORACLE_NOISE_REVERSION_PER_YEAR * self.dt_years)
        shocks = _rng(self.seed, "oracle_noise").standard_normal(n) * (ORACLE_NOISE_SD * math.sqrt(1.0 - phi * phi))
        wiggle = np.clip(ar1(shocks, phi), -ORACLE_NOISE_BOUND, ORACLE_NOISE_BOUND) if phi < 1.0 else np.zeros(n)
        return base * (1.0 + wiggle) * (1.0 - depth)

    # -- lending rates --------------------------------------------------------------------------
    def apr(self, name: str) -> np.ndarray:
        """A lending APR path (``usdt_supply``, ``weeth_supply`` or ``weth_borrow``), floored."""
        mean, sd, floor = LENDING_RATES[name]
        phi = math.exp(-RATE_REVERSION_PER_YEAR * self.dt_years)
        shocks = _rng(self.seed, name).standard_normal(self.n) * (sd * math.sqrt(1.0 - phi * phi))
        return np.maximum(mean + ar1(shocks, phi), floor)

    def growth(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-step growth factors ``1 + apr * dt`` (1 at step 0) and their running product."""
        factor = 1.0 + self.apr(name) * self.dt_years
        factor[:1] = 1.0
        return factor, np.cumprod(factor)

    # -- funding --------------------------------------------------------------------------------
    @cached_property
    def funding(self) -> FundingPaths:
        """Funding rates of every 8-hour boundary from the first timestep's to the last one's."""
        ns = self.epoch_ns
        unit = FUNDING_INTERVAL_SECONDS * 1_000_000_000
        first = int(ns[0] // unit) if self.n else 0
        count = int(ns[-1] // unit) - first + 1 if self.n else 0
        venues = max(self.venues, 1)
        rng = _rng(self.seed, "funding")
        draws = rng.standard_normal((count, 1 + venues))
        common = FUNDING_MEAN + ar1(draws[:, 0] * FUNDING_COMMON_SD * math.sqrt(1 - FUNDING_PHI**2), FUNDING_PHI)
        offsets = FUNDING_VENUE_OFFSET * (np.arange(venues) % 3 - 1)
        rates = common[:, None] + offsets[None, :] + FUNDING_VENUE_SD * draws[:, 1:]
        cumulative = np.vstack([np.zeros((1, venues)), np.cumsum(rates, axis=0)])
        return FundingPaths(first=first, rates=rates, cumulative=cumulative)

    # -- draws for sporadic activity --------------------------------------------------------------
    def uniforms(self, stream: str, columns: int) -> np.ndarray:
        """``(n, columns)`` uniform draws of a named stream (row i depends only on the seed and i)."""
        return _rng(self.seed, stream).random((self.n, columns))

    def crossings(self, seconds: int) -> np.ndarray:
        """True where a multiple of ``seconds`` since the epoch falls in ``(t[i-1], t[i]]``; False at step 0."""
        period = self.epoch_ns // (seconds * 1_000_000_000)
        out = np.zeros(self.n, dtype=bool)
        out[1:] = period[1:] != period[:-1]
        return out
