"""Churn risk and dormancy from each member's own rhythm (pure: no I/O, no clock).

The model (chosen by `bench/churn_cdnow.py`, CDNOW: calibrate to 1997-09-30, who buys again by 1998-06-30):
the MBG/NBD of Batislam, Denizel & Filiztekin (2007), BG/NBD's sibling. Each member visits as a Poisson process
of their own rate λ ~ Gamma(r, α) (per day) and, at their first visit and after each later one, drops out with
their own chance p ~ Beta(a, b). The four population parameters are fitted by maximum likelihood over every
member's summary (x repeat visit days, t_x first-to-last, T first-to-now); a member's estimates are Bayes'
posteriors given their own summary. BG/NBD (Fader, Hardie & Lee 2005; lifetimes' `BetaGeoFitter`) is kept as
`variant="bgnbd"` for the comparison; both give lifetimes' parameters (to 1e-6) and, at equal parameters, its
predictions to 1e-12.

Why MBG/NBD and not BG/NBD: in BG/NBD a member can only drop out after a *repeat* visit, so its P(alive) is
exactly 1 for every one-time buyer, however long ago they came (lifetimes' P(alive): AUC 0.32 on CDNOW, worse
than a coin). MBG/NBD lets the first visit be the last, so P(alive | x = 0) = 1 / (1 + a/b·((α+T)/α)^r) falls
with the silence, and it fits CDNOW better (log-likelihood −142,695 vs −142,726, same four parameters).
`p_active` is that P(alive); among CDNOW's one-time buyers (who all came 6 to 9 months before the cut) it still
separates those who come back only weakly (AUC 0.53, lifetimes: 0.50, every one 1.0), as it should: their
histories differ only by weeks of age.

What the estimate says (horizon h days after as_of):
- `p_active`: MBG/NBD P(alive | x, t_x, T), a real probability, 0..1, lower the longer the silence.
- `expected_visits`: E[visits in the next h | history] = p_active · E[visits | active]. This is the score to
  rank churn risk by (lowest first), chosen over p_active alone: p_active says whether a member is still a
  customer, not how often they buy (a twice-a-year shopper seen last week is about as "alive" as a weekly
  one), so it ranks who buys again
  on CDNOW at AUC 0.700, while expected visits, which is p_active weighted by the member's own rate, ranks at
  0.765 (holdout-length horizon; 0.765 at the service's 30 days too), beside lifetimes' BetaGeoFitter expected
  purchases 0.763 and its P(alive) 0.320. The issue's "ideally >= 0.78" is not reached, and no score built
  from this history is likely to: a gradient-boosted classifier trained *on the holdout labels themselves*
  (stratified 5-fold CV) reaches 0.767 from the same x, t_x, T and spread, 0.771 adding spend and CD counts.
- `p_visit_within_horizon`: P(at least one visit in the next h) = p_active · (1 − ((α+T)/(α+T+h))^(r+x)),
  exact under the model (an active member's first wait is exponential with λ | history ~ Gamma(r+x, α+T)).
- `expected_next_visit_days`: from the member's own rhythm while they are not yet due (mean interval − days
  since the last visit); once past due, or with no interval yet, the model's median wait of an active member
  like them, (α+T)·(2^(1/(r+x)) − 1) (the median: the mean is infinite when r + x <= 1); None when dormant,
  or when that wait is beyond ten years (a population of very rare buyers).
- `days_overdue`: member-profile's figure, days since the last visit − (mean + `sigmas`·spread), or None.
- `dormant` — overdue by the member's own standard, never a chain-wide number of days:
  * with 2 or more intervals between visit days: days since the last visit > mean + `sigmas`·spread of their
    own intervals (sigmas = 2), exactly member-profile's call-list rule (its `days_overdue` > 0; build the
    summary with `summary_of_rhythm` from its exact first/last purchase times and the two agree to the second);
  * with 0 or 1 interval (no spread to judge by): p_active < `dormant_below` (0.5: more likely gone than not)
    AND silent for longer than the median wait the model expects of an active member with their history,
    (α+t_x)·(2^(1/(r+x)) − 1), capped at `max_grace_days` (90). The wait keeps a new member from being dormant
    the day after joining just because the population's returning share b/(a+b) is under one half; the cap
    keeps a population of very rare buyers (r + x << 1: a median wait of years) from never flagging anyone.
  With CDNOW's parameters a one-time buyer is dormant after 91 days of silence (p_active passes 0.5 at ~48),
  a member with one 30-day interval after 70, one with a 7-day interval after 50. At 1997-09-30 the rule
  calls 78.7 % of CDNOW's customers dormant; 20.1 % of those buy again by mid-1998, against 66.1 % of the rest.

Fitting: the likelihood's Gamma functions are sums of logs over integer visit counts and the gradient is
analytic, so numpy and a small BFGS do it (CDNOW's 23,570 members: 28 iterations, 0.013 s, against lifetimes'
autograd/scipy fit of the same likelihood in 0.3-0.6 s, to the same parameters within 1e-6; 100,000 members:
0.25-0.7 s cold, 0.06-0.2 s for a warm refit from the last parameters). Distinct (x, t_x, T) rows are fitted once,
weighted by their counts. Per member, `estimate` is plain float arithmetic (~10 µs): it runs on every profile
update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

STATE_VERSION = 1
MAX_NEXT_VISIT_DAYS = 3650.0  # a next visit expected further out than ten years is no estimate
Variant = Literal["mbgnbd", "bgnbd"]
VARIANTS: tuple[Variant, ...] = ("mbgnbd", "bgnbd")
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PurchaseSummary:
    """A member's purchase history as the model sees it; a visit is a day with at least one purchase."""

    repeat_visits: int                 # number of distinct visit days after the first (BG/NBD "frequency", x)
    recency_days: float                # days from first to last visit day (BG/NBD "t_x")
    age_days: float                    # days from first visit to as_of (BG/NBD "T")
    mean_interval_days: float | None   # mean days between visit days (None if < 1 interval)
    spread_days: float | None          # std dev of intervals (None if < 2 intervals)

    def __post_init__(self) -> None:
        if self.repeat_visits < 0:
            raise ValueError(f"repeat_visits: must be >= 0, not {self.repeat_visits!r}")
        for name in ("recency_days", "age_days", "mean_interval_days", "spread_days"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}: must be a finite number of days >= 0, not {value!r}")

    @property
    def days_since_last_visit(self) -> float:
        return max(0.0, self.age_days - self.recency_days)


@dataclass(frozen=True, slots=True)
class ChurnEstimate:
    p_active: float                          # probability the member is still active, 0..1
    expected_next_visit_days: float | None   # days after as_of until the expected next visit (None if no estimate)
    expected_visits: float                   # expected visits in the next `horizon_days`
    dormant: bool                            # overdue by the member's OWN standard (not a chain-wide constant)
    p_visit_within_horizon: float = 0.0      # probability of at least one visit in the next `horizon_days`
    days_overdue: float | None = None        # days past mean + sigmas·spread of own intervals (None: < 2 intervals)


@dataclass(frozen=True, slots=True)
class Params:
    """Population parameters: visit rate λ ~ Gamma(shape r, rate α) per day, dropout chance p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_log(self) -> FloatArray:
        return np.log(np.array([self.r, self.alpha, self.a, self.b], dtype=np.float64))

    @classmethod
    def from_log(cls, theta: FloatArray) -> Params:
        r, alpha, a, b = (float(v) for v in np.exp(theta))
        return cls(r, alpha, a, b)


# Before any fit: members visit every ~3 weeks on average (mean λ = r/α = 1/20 per day) with a wide spread
# between members (r < 1), and one in eight drops out at a visit (E[p] = a/(a+b)): ~8 visits in a lifetime.
DEFAULT_PARAMS = Params(r=0.75, alpha=15.0, a=1.0, b=7.0)


# ---------------------------------------------------------------------------------------------
# Summaries


def summarise_visits(visit_days: Iterable[date], as_of: date) -> PurchaseSummary:
    """The summary of a member's visit days (duplicates and order do not matter) at `as_of`."""
    days = sorted(set(visit_days))
    if not days:
        raise ValueError("visit_days: a member with no visit has no summary")
    gaps = [float((later - earlier).days) for earlier, later in pairwise(days)]
    return PurchaseSummary(
        repeat_visits=len(gaps),
        recency_days=float((days[-1] - days[0]).days),
        age_days=float(max((as_of - days[0]).days, (days[-1] - days[0]).days)),
        mean_interval_days=sum(gaps) / len(gaps) if gaps else None,
        spread_days=_sample_std(gaps) if len(gaps) >= 2 else None,
    )


def summary_of_rhythm(first_visit_at: datetime, last_visit_at: datetime, intervals: int, mean_interval_days: float,
                      spread_days: float, as_of: datetime) -> PurchaseSummary:
    """The summary from what member-profile keeps (first/last purchase times, the rhythm of visit days).

    Recency and age come from the exact times, so `days_since_last_visit` is member-profile's `recency_days`
    and the dormant rule is its call-list rule."""
    recency = max(0.0, (last_visit_at - first_visit_at).total_seconds() / 86400)
    return PurchaseSummary(
        repeat_visits=intervals,
        recency_days=recency,
        age_days=max(recency, (as_of - first_visit_at).total_seconds() / 86400),
        mean_interval_days=mean_interval_days if intervals >= 1 else None,
        spread_days=spread_days if intervals >= 2 else None,
    )


def _sample_std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def days_overdue(s: PurchaseSummary, sigmas: float = 2.0) -> float | None:
    """member-profile's `days_overdue`: days since the last visit − (mean + sigmas·spread); None under 2 intervals."""
    if s.repeat_visits < 2 or s.mean_interval_days is None or s.spread_days is None:
        return None
    return s.days_since_last_visit - (s.mean_interval_days + sigmas * s.spread_days)


def simulate_members(params: Params, members: int, *, age_days: tuple[float, float], holdout_days: float = 0.0,
                     variant: Variant = "mbgnbd", seed: int = 0) -> list[tuple[PurchaseSummary, int]]:
    """Members drawn from the model itself (for tests and benchmarks): each one's summary at an age drawn
    uniformly from `age_days`, and the visits they make in the following `holdout_days`. Times are continuous."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(params.r, 1.0 / params.alpha, members)
    dropout = rng.beta(params.a, params.b, members)
    ages = rng.uniform(age_days[0], age_days[1], members)
    drawn: list[tuple[PurchaseSummary, int]] = []
    for rate, p, age in zip(rates.tolist(), dropout.tolist(), ages.tolist(), strict=True):
        visits: list[float] = []
        active = not (variant == "mbgnbd" and rng.random() < p)  # MBG/NBD: the first visit may be the last
        t = 0.0
        while active:
            t += rng.exponential(1.0 / rate)
            if t > age + holdout_days:
                break
            visits.append(t)
            active = rng.random() >= p
        before = [v for v in visits if v <= age]
        gaps = [later - earlier for earlier, later in pairwise([0.0, *before])]
        summary = PurchaseSummary(
            repeat_visits=len(before), recency_days=before[-1] if before else 0.0, age_days=age,
            mean_interval_days=sum(gaps) / len(gaps) if gaps else None,
            spread_days=_sample_std(gaps) if len(gaps) >= 2 else None)
        drawn.append((summary, len(visits) - len(before)))
    return drawn


# ---------------------------------------------------------------------------------------------
# Likelihood (vectorised over distinct (x, t_x, T) rows, with their counts as weights)


@dataclass(frozen=True, slots=True)
class _Data:
    x: npt.NDArray[np.int64]
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray


def _compress(summaries: Sequence[PurchaseSummary]) -> _Data:
    """Distinct (x, t_x, T) rows and how many members have each (day-granular histories repeat a lot)."""
    x = np.fromiter((s.repeat_visits for s in summaries), dtype=np.int64, count=len(summaries))
    t_x = np.fromiter((s.recency_days for s in summaries), dtype=np.float64, count=len(summaries))
    T = np.maximum(np.fromiter((s.age_days for s in summaries), dtype=np.float64, count=len(summaries)), t_x)
    order = np.lexsort((T, t_x, x))
    x, t_x, T = x[order], t_x[order], T[order]
    starts = np.flatnonzero(np.concatenate(([True], (np.diff(x) != 0) | (np.diff(t_x) != 0) | (np.diff(T) != 0))))
    counts = np.diff(np.append(starts, x.size)).astype(np.float64)
    return _Data(x[starts], t_x[starts], T[starts], counts)


def _log_rising(z: float, upto: int) -> tuple[FloatArray, FloatArray]:
    """ln Γ(z+n) − ln Γ(z) and ψ(z+n) − ψ(z) for n = 0..upto (sums over the integers: no special functions)."""
    steps = z + np.arange(upto, dtype=np.float64)
    log_sum = np.concatenate(([0.0], np.cumsum(np.log(steps))))
    inv_sum = np.concatenate(([0.0], np.cumsum(1.0 / steps)))
    return log_sum, inv_sum


def log_likelihood(theta: FloatArray, data: _Data, variant: Variant) -> tuple[float, FloatArray]:
    """Weighted sum of the per-member log-likelihood and its gradient in log-parameters (ln r, ln α, ln a, ln b).

    BG/NBD (Fader, Hardie & Lee 2005): L = B(a,b+x)/B(a,b) · Γ(r+x)α^r/Γ(r) · [(α+T)^-(r+x) + 1{x>0}·a/(b+x−1)·(α+t_x)^-(r+x)]
    MBG/NBD (Batislam et al. 2007, a dropout chance at the first visit too):
      L = Γ(b+x)Γ(a+b)/(Γ(b)Γ(a+b+x+1)) · Γ(r+x)α^r/Γ(r) · [(b+x)(α+T)^-(r+x) + a(α+t_x)^-(r+x)]
    """
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    x, t_x, T, w = data.x, data.t_x, data.T, data.weight
    top = int(x.max()) + 2 if x.size else 2
    lg_r, dg_r = _log_rising(r, top)
    lg_b, dg_b = _log_rising(b, top)
    lg_ab, dg_ab = _log_rising(a + b, top)
    rx = r + x
    log_at, log_atx = np.log(alpha + T), np.log(alpha + t_x)
    xf = x.astype(np.float64)
    if variant == "bgnbd":
        beta_part = lg_b[x] - lg_ab[x]
        d_beta_a, d_beta_b = -dg_ab[x], dg_b[x] - dg_ab[x]
        log_u = -rx * log_at
        has_v = x > 0
        bx1 = np.where(has_v, b + xf - 1.0, 1.0)
        log_v = np.where(has_v, math.log(a) - np.log(bx1) - rx * log_atx, -np.inf)
    else:
        beta_part = lg_b[x] - lg_ab[x + 1]
        d_beta_a, d_beta_b = -dg_ab[x + 1], dg_b[x] - dg_ab[x + 1]
        log_u = np.log(b + xf) - rx * log_at
        log_v = math.log(a) - rx * log_atx
    mix = np.logaddexp(log_u, log_v)
    wu, wv = np.exp(log_u - mix), np.exp(log_v - mix)
    per_row = lg_r[x] + r * math.log(alpha) + beta_part + mix
    d_r = dg_r[x] + math.log(alpha) - wu * log_at - wv * log_atx
    d_alpha = r / alpha - wu * rx / (alpha + T) - wv * rx / (alpha + t_x)
    d_a = d_beta_a + wv / a
    if variant == "bgnbd":
        d_b = d_beta_b - wv / bx1
    else:
        d_b = d_beta_b + wu / (b + xf)
    grad = np.array([r * (w @ d_r), alpha * (w @ d_alpha), a * (w @ d_a), b * (w @ d_b)])
    return float(w @ per_row), grad


def _bfgs(objective: Any, theta0: FloatArray, max_iter: int = 300, gtol: float = 1e-9) -> tuple[FloatArray, int]:
    """Minimise a smooth objective(theta) -> (value, gradient): BFGS with a backtracking (Armijo) line search."""
    theta = theta0.copy()
    value, grad = objective(theta)
    inverse_hessian = np.eye(theta.size)
    for iteration in range(1, max_iter + 1):
        if float(np.max(np.abs(grad))) < gtol:
            return theta, iteration - 1
        direction = -inverse_hessian @ grad
        if float(grad @ direction) >= 0:  # lost curvature: restart from steepest descent
            inverse_hessian = np.eye(theta.size)
            direction = -grad
        step = min(1.0, 2.0 / float(np.max(np.abs(direction))))  # at most a factor e² per parameter per step
        slope = float(grad @ direction)
        while True:
            candidate = theta + step * direction
            new_value, new_grad = objective(candidate)
            if math.isfinite(new_value) and new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return theta, iteration
        s, y = candidate - theta, new_grad - grad
        sy = float(s @ y)
        if sy > 1e-14:
            rho = 1.0 / sy
            eye = np.eye(theta.size)
            inverse_hessian = (eye - rho * np.outer(s, y)) @ inverse_hessian @ (eye - rho * np.outer(y, s)) + rho * np.outer(s, s)
        converged = abs(value - new_value) <= 1e-13 * max(1.0, abs(value))
        theta, value, grad = candidate, new_value, new_grad
        if converged:
            return theta, iteration
    return theta, max_iter


# ---------------------------------------------------------------------------------------------
# Per-member quantities (plain floats: called on every profile update)


def _hyp2f1(a: float, b: float, c: float, z: float, max_terms: int = 20_000) -> float:
    """Gauss' hypergeometric series, for 0 <= z < 1."""
    total, term = 1.0, 1.0
    for n in range(max_terms):
        term *= (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        total += term
        if abs(term) <= 1e-15 * abs(total):
            break
    return total


def _one_over_one_plus_exp(log_odds: float) -> float:
    """1 / (1 + e^log_odds) without overflow."""
    if log_odds > 0:
        e = math.exp(-log_odds)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds))


def p_alive(params: Params, s: PurchaseSummary, variant: Variant = "mbgnbd") -> float:
    """P(the member has not dropped out | history). BG/NBD's is 1 for x = 0 (no dropout before a repeat visit)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = s.repeat_visits, s.recency_days, max(s.age_days, s.recency_days)
    if variant == "bgnbd":
        if x == 0:
            return 1.0
        odds_factor = a / (b + x - 1)
    else:
        odds_factor = a / (b + x)
    return _one_over_one_plus_exp(math.log(odds_factor) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x)))


def median_wait_if_active(params: Params, s: PurchaseSummary, *, since_last_visit: bool = True) -> float:
    """Median days to the next visit of an active member with this history, counted from the last visit (or
    from as_of): λ | history ~ Gamma(r+x, α+t), so P(wait > w) = ((α+t)/(α+t+w))^(r+x)."""
    t = s.recency_days if since_last_visit else max(s.age_days, s.recency_days)
    return (params.alpha + t) * math.expm1(math.log(2.0) / (params.r + s.repeat_visits))


def _p_visit_within(params: Params, s: PurchaseSummary, horizon_days: float, alive: float) -> float:
    T = max(s.age_days, s.recency_days)
    shape = params.r + s.repeat_visits
    no_visit_if_active = math.exp(shape * (math.log(params.alpha + T) - math.log(params.alpha + T + horizon_days)))
    return alive * (1.0 - no_visit_if_active)


def p_visit_within(params: Params, s: PurchaseSummary, horizon_days: float, variant: Variant = "mbgnbd") -> float:
    """P(at least one visit in (T, T + horizon]): active, and an active member's first wait is short enough."""
    return _p_visit_within(params, s, horizon_days, p_alive(params, s, variant))


def _expected_visits(params: Params, s: PurchaseSummary, horizon_days: float, variant: Variant, alive: float) -> float:
    if horizon_days <= 0:
        return 0.0
    r, alpha, b = params.r, params.alpha, params.b
    a = params.a if abs(params.a - 1.0) > 1e-6 else 1.0 + 1e-6  # the closed form's removable singularity at a = 1
    x, T = s.repeat_visits, max(s.age_days, s.recency_days)
    z = horizon_days / (alpha + T + horizon_days)
    c = a + b + x - 1 if variant == "bgnbd" else a + b + x
    bracket = 1.0 - math.exp((a - 1) * math.log1p(-z)) * _hyp2f1(c - (r + x), a - 1, c, z)
    return max(0.0, c / (a - 1) * bracket * alive)


def expected_visits(params: Params, s: PurchaseSummary, horizon_days: float, variant: Variant = "mbgnbd") -> float:
    """E[visits in (T, T + horizon] | history]: FHL 2005 eq. 10 (BG/NBD), Wagner & Hoppe 2008 (MBG/NBD), in the
    Euler-transformed form c/(a−1)·[1 − (1−z)^(a−1)·2F1(c−r−x, a−1; c; z)]·P(alive), z = h/(α+T+h), whose series
    converges fast however many visits the member has (c = a+b+x−1, MBG/NBD: a+b+x)."""
    return _expected_visits(params, s, horizon_days, variant, p_alive(params, s, variant))


# ---------------------------------------------------------------------------------------------
# The model


class ChurnModel:
    """Population parameters fitted to every member's summary; per-member estimates from them.

    `sigmas` is member-profile's call-list setting (mean + sigmas·spread of own intervals);
    `dormant_below` is the P(active) under which a member with fewer than 2 intervals is dormant, once
    silent for longer than the median wait of an active member like them, but at most `max_grace_days`;
    `prior_weight` weighs a weak Gaussian prior on the log-parameters centred on `DEFAULT_PARAMS`
    (log-density −prior_weight·|θ − θ₀|², sd ≈ 7 at 0.01: it only keeps a fit on a handful of members, or
    on one-time buyers only, finite, and moves CDNOW's fit by < 0.1 %)."""

    def __init__(self, params: Params = DEFAULT_PARAMS, *, variant: Variant = "mbgnbd", sigmas: float = 2.0,
                 dormant_below: float = 0.5, max_grace_days: float = 90.0, prior_weight: float = 0.01) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant: one of {VARIANTS}, not {variant!r}")
        if not 0.0 < dormant_below < 1.0:
            raise ValueError(f"dormant_below: a probability strictly between 0 and 1, not {dormant_below!r}")
        if sigmas < 0 or prior_weight < 0 or max_grace_days < 0:
            raise ValueError("sigmas, max_grace_days, prior_weight: must not be negative")
        self.params = params
        self.variant: Variant = variant
        self.sigmas = sigmas
        self.dormant_below = dormant_below
        self.max_grace_days = max_grace_days
        self.prior_weight = prior_weight
        self.fitted_members = 0
        self.log_likelihood: float | None = None   # at the fitted parameters, summed over members
        self.iterations = 0

    def fit(self, summaries: Sequence[PurchaseSummary]) -> None:
        """Maximum-likelihood (MAP with the weak prior) population parameters, warm-started from the current ones.

        Numpy only: the likelihood's Gamma functions are sums of logs over the integer visit counts, the gradient
        is analytic, BFGS does the rest. CDNOW's 23,570 members: ~30 iterations, well under 0.1 s."""
        if not summaries:
            return
        data = _compress(summaries)
        members = float(data.weight.sum())
        anchor = DEFAULT_PARAMS.as_log()
        strength = self.prior_weight

        def objective(theta: FloatArray) -> tuple[float, FloatArray]:
            value, grad = log_likelihood(theta, data, self.variant)
            gap = theta - anchor
            return (-(value - strength * float(gap @ gap)) / members, -(grad - 2.0 * strength * gap) / members)

        start = np.clip(self.params.as_log(), -8.0, 8.0)
        theta, self.iterations = _bfgs(objective, start)
        self.params = Params.from_log(theta)
        self.fitted_members = int(members)
        self.log_likelihood = log_likelihood(theta, data, self.variant)[0]

    def estimate(self, s: PurchaseSummary, horizon_days: float = 30.0) -> ChurnEstimate:
        if not horizon_days >= 0:
            raise ValueError(f"horizon_days: must be >= 0, not {horizon_days!r}")
        params, variant = self.params, self.variant
        alive = p_alive(params, s, variant)
        overdue = days_overdue(s, self.sigmas)
        silence = s.days_since_last_visit
        if overdue is not None:
            dormant = overdue > 0
        else:
            grace = min(median_wait_if_active(params, s), self.max_grace_days)
            dormant = alive < self.dormant_below and silence > grace
        next_visit: float | None
        if dormant:
            next_visit = None
        elif s.mean_interval_days is not None and silence < s.mean_interval_days:
            next_visit = s.mean_interval_days - silence
        else:
            next_visit = median_wait_if_active(params, s, since_last_visit=False)
            if not next_visit <= MAX_NEXT_VISIT_DAYS:  # rare buyers (r + x << 1): no date worth giving
                next_visit = None
        return ChurnEstimate(
            p_active=alive,
            expected_next_visit_days=next_visit,
            expected_visits=_expected_visits(params, s, horizon_days, variant, alive),
            dormant=dormant,
            p_visit_within_horizon=_p_visit_within(params, s, horizon_days, alive),
            days_overdue=overdue,
        )

    def to_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "variant": self.variant,
                "params": {"r": self.params.r, "alpha": self.params.alpha, "a": self.params.a, "b": self.params.b},
                "sigmas": self.sigmas, "dormant_below": self.dormant_below, "max_grace_days": self.max_grace_days,
                "prior_weight": self.prior_weight,
                "fitted_members": self.fitted_members, "log_likelihood": self.log_likelihood,
                "iterations": self.iterations}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ChurnModel:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"version: churn model state {state.get('version')!r}, this code reads {STATE_VERSION}")
        p = state["params"]
        model = cls(Params(float(p["r"]), float(p["alpha"]), float(p["a"]), float(p["b"])), variant=state["variant"],
                    sigmas=float(state["sigmas"]), dormant_below=float(state["dormant_below"]),
                    max_grace_days=float(state["max_grace_days"]), prior_weight=float(state["prior_weight"]))
        model.fitted_members = int(state["fitted_members"])
        model.log_likelihood = None if state["log_likelihood"] is None else float(state["log_likelihood"])
        model.iterations = int(state["iterations"])
        return model
