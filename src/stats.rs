//! Statistics for judging a customer health score against churn history.
//!
//! The data are observation rows: one (account, observation date) per row, each
//! with a feature vector (component scores 0..100, possibly missing = `NaN`) and
//! a label (did the account churn within N days after that date). Rows of the
//! same account are correlated, so the confidence intervals for row-level
//! statistics resample *accounts* ([`cluster_bootstrap`]), not rows.
//!
//! What is here:
//! * [`auc`] / [`auc_interval`]: ROC AUC (Mann–Whitney) with a cluster-bootstrap interval;
//! * [`cluster_bootstrap`]: generic percentile bootstrap over clusters;
//! * [`wilson`]: 95 % Wilson score interval for a proportion;
//! * [`poisson_rate`]: rate per unit exposure with a 95 % Garwood interval;
//! * [`median`] / [`median_interval`]: median with a plain bootstrap interval;
//! * [`Logistic`]: L2-regularised logistic regression on standardised features
//!   (fitted with `linfa-logistic`, see [`Logistic::fit`]);
//! * [`lift`]: churn rate in the lowest fraction of values over the overall rate.
//!
//! Nothing here panics on bad input: empty inputs, length mismatches,
//! single-class labels and `NaN` give `None` or an `Err`.
//!
//! `NaN` policy: [`auc`], [`auc_interval`], [`median`] and [`median_interval`]
//! return `None` when any value is `NaN` (filter the rows first); [`lift`]
//! ignores rows whose value is `NaN`; [`Logistic::fit`] and
//! [`Logistic::predict`] treat a `NaN` feature as missing and replace it by the
//! training mean.
//!
//! Every interval is a 95 % interval.

use std::cmp::Ordering;
use std::fmt;

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The 97.5 % quantile of the standard normal distribution.
const Z95: f64 = 1.959_963_984_540_054;

/// A point estimate with a 95 % confidence interval `[low, high]`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The point estimate (the statistic on the full sample).
    pub estimate: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

impl Interval {
    /// Whether `low <= x <= high` (always `false` for `NaN`).
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// `high - low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// Orders two non-NaN floats (`-0.0` and `0.0` compare equal).
fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

// ---------------------------------------------------------------------------
// AUC
// ---------------------------------------------------------------------------

/// Walks rows in ascending score order and returns the Mann–Whitney AUC, each
/// row counting `weight(row)` times. Ties (by `==`) count one half.
fn auc_walk(
    order: &[usize],
    scores: &[f64],
    labels: &[bool],
    weight: impl Fn(usize) -> u64,
) -> Option<f64> {
    let mut neg_below: u128 = 0;
    let mut n_pos: u128 = 0;
    // Twice the Mann–Whitney U, kept as an exact integer.
    let mut twice_u: u128 = 0;
    let mut k = 0;
    while k < order.len() {
        let s = scores[order[k]];
        let (mut p, mut q) = (0u128, 0u128);
        while k < order.len() && scores[order[k]] == s {
            let i = order[k];
            let w = u128::from(weight(i));
            if labels[i] {
                p += w;
            } else {
                q += w;
            }
            k += 1;
        }
        twice_u += 2 * p * neg_below + p * q;
        neg_below += q;
        n_pos += p;
    }
    let n_neg = neg_below;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    Some(twice_u as f64 / (2.0 * n_pos as f64 * n_neg as f64))
}

/// Row indices sorted by ascending score, or `None` if the lengths differ or a
/// score is `NaN`.
fn sorted_order(scores: &[f64], labels: &[bool]) -> Option<Vec<usize>> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| cmp_f64(scores[a], scores[b]));
    Some(order)
}

/// ROC AUC: the probability that a random positive row scores HIGHER than a
/// random negative row, ties counting one half (Mann–Whitney U / (n₊·n₋)).
///
/// `O(n log n)`. Pass a *risk* value (higher = more likely to churn): for a
/// health score pass `-score` or `100 - score`. Returns `None` when either
/// class is empty, the lengths differ, or any score is `NaN`. Infinite scores
/// are ranked normally.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let order = sorted_order(scores, labels)?;
    auc_walk(&order, scores, labels, |_| 1)
}

/// AUC with a 95 % cluster-bootstrap percentile interval.
///
/// `clusters[i]` is the cluster (account) of row `i`; see [`cluster_bootstrap`]
/// for the resampling. Replicates that happen to contain one class only are
/// skipped. Returns `None` when the lengths differ, any score is `NaN`, the
/// full-sample AUC is undefined, `n_boot == 0`, or fewer than half the
/// replicates give an AUC.
pub fn auc_interval(
    scores: &[f64],
    labels: &[bool],
    clusters: &[u32],
    n_boot: usize,
    seed: u64,
) -> Option<Interval> {
    if clusters.len() != scores.len() {
        return None;
    }
    let order = sorted_order(scores, labels)?;
    // Each replicate is a multiset of rows: count multiplicities and walk the
    // pre-sorted order, O(n) per replicate instead of a sort.
    let mut counts = vec![0u64; scores.len()];
    cluster_bootstrap(clusters, n_boot, seed, |rows| {
        counts.iter_mut().for_each(|c| *c = 0);
        for &r in rows {
            counts[r] += 1;
        }
        auc_walk(&order, scores, labels, |i| counts[i])
    })
}

// ---------------------------------------------------------------------------
// Bootstrap
// ---------------------------------------------------------------------------

/// Linear-interpolation quantile (R type 7) of sorted, non-empty, NaN-free data.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let h = (v.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let frac = h - lo as f64;
    if frac == 0.0 || v[lo] == v[hi] {
        v[lo]
    } else {
        v[lo] + frac * (v[hi] - v[lo])
    }
}

/// Percentile interval from replicate values; `None` if fewer than half of
/// `n_boot` replicates succeeded.
fn percentile_interval(estimate: f64, mut reps: Vec<f64>, n_boot: usize) -> Option<Interval> {
    if reps.is_empty() || reps.len() * 2 < n_boot {
        return None;
    }
    reps.sort_unstable_by(|a, b| cmp_f64(*a, *b));
    Some(Interval {
        estimate,
        low: quantile_sorted(&reps, 0.025),
        high: quantile_sorted(&reps, 0.975),
    })
}

/// Cluster (account) bootstrap with a 95 % percentile interval.
///
/// `clusters[i]` is the cluster id of row `i` (any `u32` values; they need not
/// be contiguous). Each of the `n_boot` replicates draws as many clusters as
/// there are distinct ids, uniformly with replacement, from a `ChaCha8Rng`
/// seeded with `seed` (so the result is deterministic), and passes the ROW
/// indices of the drawn clusters (with repeats, whole clusters, in draw order)
/// to `statistic`. Replicates where `statistic` returns `None` or `NaN` are
/// skipped. The interval is the 2.5 % and 97.5 % percentiles (linear
/// interpolation) of the successful replicates; `estimate` is `statistic` on
/// all rows `0..clusters.len()`.
///
/// Returns `None` if `clusters` is empty, `n_boot == 0`, the full-sample
/// statistic is `None`/`NaN`, or fewer than half the replicates succeed.
/// The percentile interval need not contain the estimate for very skewed
/// statistics.
pub fn cluster_bootstrap<F>(
    clusters: &[u32],
    n_boot: usize,
    seed: u64,
    mut statistic: F,
) -> Option<Interval>
where
    F: FnMut(&[usize]) -> Option<f64>,
{
    let n = clusters.len();
    if n == 0 || n_boot == 0 {
        return None;
    }
    let all: Vec<usize> = (0..n).collect();
    let estimate = statistic(&all).filter(|v| !v.is_nan())?;

    // Rows grouped by cluster: order[starts[c]..starts[c + 1]] are cluster c's rows.
    let mut order = all;
    order.sort_by_key(|&i| clusters[i]); // stable: rows keep their order
    let mut starts = Vec::new();
    for pos in 0..n {
        if pos == 0 || clusters[order[pos]] != clusters[order[pos - 1]] {
            starts.push(pos);
        }
    }
    starts.push(n);
    let k = starts.len() - 1;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sample = Vec::with_capacity(n);
    let mut reps = Vec::with_capacity(n_boot);
    for _ in 0..n_boot {
        sample.clear();
        for _ in 0..k {
            let c = rng.random_range(0..k);
            sample.extend_from_slice(&order[starts[c]..starts[c + 1]]);
        }
        if let Some(v) = statistic(&sample)
            && !v.is_nan()
        {
            reps.push(v);
        }
    }
    percentile_interval(estimate, reps, n_boot)
}

// ---------------------------------------------------------------------------
// Proportions and rates
// ---------------------------------------------------------------------------

/// 95 % Wilson score interval for a proportion `successes / trials`.
///
/// `estimate` is the plain proportion. The bounds are clamped to `[0, 1]`
/// (exactly 0 for 0 successes and 1 for all successes). Returns `None` for
/// `trials == 0` or `successes > trials`.
pub fn wilson(successes: u64, trials: u64) -> Option<Interval> {
    if trials == 0 || successes > trials {
        return None;
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let low = if successes == 0 {
        0.0
    } else {
        (center - half).clamp(0.0, 1.0)
    };
    let high = if successes == trials {
        1.0
    } else {
        (center + half).clamp(0.0, 1.0)
    };
    Some(Interval {
        estimate: p,
        low,
        high,
    })
}

/// Counts up to which [`poisson_rate`] inverts the Poisson CDF exactly.
const POISSON_EXACT_MAX: u64 = 300;

/// `P(X <= k)` for `X ~ Poisson(mu)`, by direct summation (`k` small).
fn poisson_cdf(k: u64, mu: f64) -> f64 {
    let mut term = (-mu).exp();
    let mut sum = term;
    for i in 1..=k {
        term *= mu / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The `mu` where `poisson_cdf(k, mu) == target` (the CDF decreases in `mu`).
fn poisson_cdf_root(k: u64, target: f64) -> f64 {
    let kf = k as f64;
    let (mut lo, mut hi) = (0.0_f64, kf + 10.0 * (kf + 1.0).sqrt() + 20.0);
    while poisson_cdf(k, hi) > target && hi < 1e6 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if poisson_cdf(k, mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-14 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Wilson–Hilferty approximation of the Garwood bounds for a count `k >= 1`:
/// `chi2_q(nu) ≈ nu (1 - 2/(9nu) + z_q sqrt(2/(9nu)))³`, halved.
fn garwood_wilson_hilferty(k: u64) -> (f64, f64) {
    let kf = k as f64;
    let k1 = kf + 1.0;
    let low = kf * (1.0 - 1.0 / (9.0 * kf) - Z95 / (3.0 * kf.sqrt())).powi(3);
    let high = k1 * (1.0 - 1.0 / (9.0 * k1) + Z95 / (3.0 * k1.sqrt())).powi(3);
    (low.max(0.0), high)
}

/// Garwood (exact Poisson) 95 % bounds for the mean of a count `k`.
fn garwood(k: u64) -> (f64, f64) {
    if k <= POISSON_EXACT_MAX {
        let low = if k == 0 {
            0.0
        } else {
            poisson_cdf_root(k - 1, 0.975)
        };
        (low, poisson_cdf_root(k, 0.025))
    } else {
        garwood_wilson_hilferty(k)
    }
}

/// Event rate per unit of exposure, `events / exposure`, with a 95 % Garwood
/// interval: `[chi2_0.025(2k)/2, chi2_0.975(2k+2)/2] / exposure`.
///
/// For `events <= 300` the bounds are computed exactly (bisection on the
/// Poisson CDF, so 0 events give `[0, 3.689/exposure]`); above that they use
/// the Wilson–Hilferty cube-root approximation of the chi-square quantiles,
/// whose relative error there is below 1e-4. Returns `None` when `exposure`
/// is not a finite number `> 0`, or the result overflows.
pub fn poisson_rate(events: u64, exposure: f64) -> Option<Interval> {
    if !(exposure.is_finite() && exposure > 0.0) {
        return None;
    }
    let (low, high) = garwood(events);
    let iv = Interval {
        estimate: events as f64 / exposure,
        low: low / exposure,
        high: high / exposure,
    };
    (iv.estimate.is_finite() && iv.low.is_finite() && iv.high.is_finite()).then_some(iv)
}

// ---------------------------------------------------------------------------
// Median
// ---------------------------------------------------------------------------

/// Median of NaN-free, non-empty data; reorders `buf`. O(n).
fn median_in_place(buf: &mut [f64]) -> f64 {
    let n = buf.len();
    let mid = n / 2;
    let (left, m, _) = buf.select_nth_unstable_by(mid, |a, b| cmp_f64(*a, *b));
    let upper = *m;
    if n % 2 == 1 {
        upper
    } else {
        let lower = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lower + upper)
    }
}

/// Median (mean of the two middle values for an even count). `None` when `xs`
/// is empty or contains `NaN`.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut buf = xs.to_vec();
    Some(median_in_place(&mut buf))
}

/// Median with a plain (row) bootstrap 95 % percentile interval: `n_boot`
/// resamples of `xs.len()` values with replacement from a `ChaCha8Rng` seeded
/// with `seed`. `None` when `xs` is empty, contains `NaN`, or `n_boot == 0`.
/// (For clustered data use [`cluster_bootstrap`] with [`median`].)
pub fn median_interval(xs: &[f64], n_boot: usize, seed: u64) -> Option<Interval> {
    let estimate = median(xs)?;
    if n_boot == 0 {
        return None;
    }
    let n = xs.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0.0; n];
    let mut reps = Vec::with_capacity(n_boot);
    for _ in 0..n_boot {
        for b in buf.iter_mut() {
            *b = xs[rng.random_range(0..n)];
        }
        reps.push(median_in_place(&mut buf));
    }
    percentile_interval(estimate, reps, n_boot)
}

// ---------------------------------------------------------------------------
// Lift
// ---------------------------------------------------------------------------

/// Lift of the lowest values: the churn rate among rows whose value is in the
/// lowest `low_fraction` of values, divided by the overall churn rate.
///
/// Rows whose value is `NaN` are ignored. The low group holds exactly
/// `low_fraction · n` rows of weight: rows tied at the cut-off value share the
/// remaining weight equally (fractional membership), so ties (common with
/// integer scores) neither inflate the group nor depend on row order.
/// Returns `None` when the lengths differ, `low_fraction` is not in `(0, 1]`,
/// no row has a value, or the overall churn rate is 0.
pub fn lift(values: &[f64], labels: &[bool], low_fraction: f64) -> Option<f64> {
    if values.len() != labels.len() || !(low_fraction > 0.0 && low_fraction <= 1.0) {
        return None;
    }
    let mut rows: Vec<(f64, bool)> = values
        .iter()
        .zip(labels)
        .filter(|(v, _)| !v.is_nan())
        .map(|(&v, &l)| (v, l))
        .collect();
    let n = rows.len();
    let n_pos = rows.iter().filter(|r| r.1).count();
    if n == 0 || n_pos == 0 {
        return None;
    }
    rows.sort_unstable_by(|a, b| cmp_f64(a.0, b.0));
    let target = low_fraction * n as f64;
    let (mut taken, mut taken_pos) = (0.0_f64, 0.0_f64);
    let mut k = 0;
    while k < n && taken < target {
        let v = rows[k].0;
        let (mut c, mut p) = (0usize, 0usize);
        while k < n && rows[k].0 == v {
            c += 1;
            p += usize::from(rows[k].1);
            k += 1;
        }
        let share = ((target - taken) / c as f64).min(1.0);
        taken += share * c as f64;
        taken_pos += share * p as f64;
    }
    let low_rate = taken_pos / target;
    let overall = n_pos as f64 / n as f64;
    Some(low_rate / overall)
}

// ---------------------------------------------------------------------------
// Logistic regression
// ---------------------------------------------------------------------------

/// Why [`Logistic::fit`] failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    /// There are no rows.
    NoRows,
    /// `x` and `y` have different lengths.
    LengthMismatch {
        /// Number of feature rows.
        rows: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A feature row has a different length from the first row.
    RaggedRow {
        /// Index of the offending row.
        row: usize,
        /// Length of the first row.
        expected: usize,
        /// Length of this row.
        found: usize,
    },
    /// A feature is `+inf` or `-inf` (`NaN` is fine: it means missing).
    InfiniteValue {
        /// Row index.
        row: usize,
        /// Column index.
        column: usize,
    },
    /// The L2 penalty is negative or not finite.
    InvalidPenalty,
    /// All labels are the same; there is nothing to separate.
    OnlyOneClass,
    /// The optimiser stopped away from the optimum (e.g. perfectly separable
    /// data with `l2 == 0`, or the iteration limit was reached).
    DidNotConverge {
        /// Euclidean norm of the objective's gradient at the returned point,
        /// divided by the number of rows.
        gradient_norm: f64,
    },
    /// The optimiser itself reported an error.
    Solver(String),
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::NoRows => write!(f, "no rows to fit"),
            FitError::LengthMismatch { rows, labels } => {
                write!(f, "{rows} feature rows but {labels} labels")
            }
            FitError::RaggedRow {
                row,
                expected,
                found,
            } => write!(f, "row {row} has {found} features, expected {expected}"),
            FitError::InfiniteValue { row, column } => {
                write!(f, "feature {column} of row {row} is infinite")
            }
            FitError::InvalidPenalty => write!(f, "L2 penalty must be finite and >= 0"),
            FitError::OnlyOneClass => write!(f, "only one class in the labels"),
            FitError::DidNotConverge { gradient_norm } => write!(
                f,
                "logistic regression did not converge (gradient norm per row {gradient_norm:e})"
            ),
            FitError::Solver(msg) => write!(f, "logistic regression solver failed: {msg}"),
        }
    }
}

impl std::error::Error for FitError {}

/// Iteration limit handed to the L-BFGS solver.
const MAX_ITERATIONS: u64 = 1000;
/// Solver stopping tolerance on the gradient norm, per row.
const SOLVER_TOL_PER_ROW: f64 = 1e-8;
/// Accepted gradient norm per row after the solver stops.
const CONVERGED_TOL_PER_ROW: f64 = 1e-4;

/// Numerically stable logistic function.
fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// An L2-regularised logistic regression of a binary label (`true` = churn)
/// on standardised features.
///
/// Fitting standardises each feature with the training mean and (population)
/// standard deviation, after replacing missing values (`NaN`) by the training
/// mean; [`predict`](Logistic::predict) applies the same transformation.
/// `coef` are therefore per standard deviation and comparable across
/// features; [`coef_unscaled`](Logistic::coef_unscaled) gives them per
/// original unit.
///
/// The model is fitted with `linfa-logistic` (L-BFGS, More–Thuente line
/// search); this wrapper maps its labels to `true = positive`, checks
/// convergence itself and never panics.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Logistic {
    /// Intercept on the standardised scale (log-odds of churn for a row with
    /// every feature at its training mean).
    pub intercept: f64,
    /// Coefficients per training standard deviation of each feature
    /// (log-odds change of churn).
    pub coef: Vec<f64>,
    /// Training mean of each feature (over its non-missing values; 0 for a
    /// feature that is always missing).
    pub means: Vec<f64>,
    /// Training standard deviation of each feature (1 when it is 0 or
    /// undefined; such a feature gets coefficient 0).
    pub scales: Vec<f64>,
}

impl Logistic {
    /// Fits `P(y = true | x) = sigmoid(intercept + Σ coef_j z_j)` with
    /// `z_j = (x_j - means_j) / scales_j` (missing `x_j` gives `z_j = 0`),
    /// minimising
    /// `Σ_rows logloss + l2/2 · Σ_j coef_j²`
    /// (a penalty on the SUM of the row losses, not their mean; the intercept
    /// is not penalised). `l2 = 1.0` is a mild default. With `l2 = 0` and
    /// perfectly separable data there is no optimum: the gradient fades as the
    /// coefficients grow, so the result is either `DidNotConverge` or a model
    /// with huge coefficients (e.g. 160 per SD); use `l2 > 0`.
    ///
    /// The solver (`linfa-logistic`: L-BFGS, at most 1000 iterations) labels
    /// the more frequent class as its positive class; this function flips the
    /// signs so `coef` always refer to `true`. A panic inside the solver is
    /// caught and reported as [`FitError::Solver`] (unless the crate is built
    /// with `panic = "abort"`); the inputs are validated first so none is
    /// known to occur.
    ///
    /// Errors: [`FitError::NoRows`], [`FitError::LengthMismatch`],
    /// [`FitError::RaggedRow`], [`FitError::InfiniteValue`],
    /// [`FitError::InvalidPenalty`], [`FitError::OnlyOneClass`],
    /// [`FitError::DidNotConverge`] (the gradient norm per row at the
    /// solver's answer exceeds 1e-4) and [`FitError::Solver`].
    /// With zero features the intercept is the logit of the churn rate.
    pub fn fit(x: &[Vec<f64>], y: &[bool], l2: f64) -> Result<Logistic, FitError> {
        Self::fit_with_limit(x, y, l2, MAX_ITERATIONS)
    }

    fn fit_with_limit(
        x: &[Vec<f64>],
        y: &[bool],
        l2: f64,
        max_iterations: u64,
    ) -> Result<Logistic, FitError> {
        if x.len() != y.len() {
            return Err(FitError::LengthMismatch {
                rows: x.len(),
                labels: y.len(),
            });
        }
        if x.is_empty() {
            return Err(FitError::NoRows);
        }
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(FitError::InvalidPenalty);
        }
        let n = x.len();
        let d = x[0].len();
        for (row, r) in x.iter().enumerate() {
            if r.len() != d {
                return Err(FitError::RaggedRow {
                    row,
                    expected: d,
                    found: r.len(),
                });
            }
            if let Some(column) = r.iter().position(|v| v.is_infinite()) {
                return Err(FitError::InfiniteValue { row, column });
            }
        }
        let n_pos = y.iter().filter(|&&b| b).count();
        if n_pos == 0 || n_pos == n {
            return Err(FitError::OnlyOneClass);
        }

        // Column means and standard deviations over the non-missing values.
        let mut means = vec![0.0; d];
        let mut scales = vec![1.0; d];
        for j in 0..d {
            let present = || x.iter().map(|r| r[j]).filter(|v| !v.is_nan());
            let cnt = present().count();
            if cnt == 0 {
                continue;
            }
            let mean = present().sum::<f64>() / cnt as f64;
            let var = present().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cnt as f64;
            means[j] = mean;
            let sd = var.sqrt();
            if sd.is_finite() && sd > 1e-12 * mean.abs().max(1.0) {
                scales[j] = sd;
            }
        }

        if d == 0 {
            let p = n_pos as f64 / n as f64;
            return Ok(Logistic {
                intercept: (p / (1.0 - p)).ln(),
                coef: Vec::new(),
                means,
                scales,
            });
        }

        let z = Array2::from_shape_fn((n, d), |(i, j)| {
            let v = x[i][j];
            if v.is_nan() {
                0.0
            } else {
                (v - means[j]) / scales[j]
            }
        });
        let dataset = Dataset::new(z, Array1::from(y.to_vec()));
        let params = LogisticRegression::default()
            .alpha(l2)
            .max_iterations(max_iterations)
            .gradient_tolerance(SOLVER_TOL_PER_ROW * n as f64);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| params.fit(&dataset)));
        let fitted = match outcome {
            Ok(Ok(m)) => m,
            Ok(Err(linfa_logistic::error::Error::TooFewClasses)) => {
                return Err(FitError::OnlyOneClass);
            }
            Ok(Err(e)) => return Err(FitError::Solver(e.to_string())),
            Err(_) => return Err(FitError::Solver("the solver panicked".to_string())),
        };
        // linfa labels the MORE FREQUENT class as its positive class: flip the
        // signs when that class is `false`, so the model predicts P(true).
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let intercept = sign * fitted.intercept();
        let coef: Vec<f64> = fitted.params().iter().map(|w| sign * w).collect();

        // Check convergence: gradient of the penalised objective.
        let mut grad = vec![0.0; d + 1];
        let zv = dataset.records();
        for (row, &yi) in zv.rows().into_iter().zip(y) {
            let eta = intercept + row.iter().zip(&coef).map(|(a, b)| a * b).sum::<f64>();
            let resid = sigmoid(eta) - f64::from(u8::from(yi));
            grad[d] += resid;
            for (g, zij) in grad.iter_mut().zip(row.iter()) {
                *g += resid * zij;
            }
        }
        for (g, w) in grad.iter_mut().zip(&coef) {
            *g += l2 * w;
        }
        let gradient_norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt() / n as f64;
        if !(gradient_norm.is_finite()
            && gradient_norm <= CONVERGED_TOL_PER_ROW
            && intercept.is_finite()
            && coef.iter().all(|c| c.is_finite()))
        {
            return Err(FitError::DidNotConverge { gradient_norm });
        }
        Ok(Logistic {
            intercept,
            coef,
            means,
            scales,
        })
    }

    /// Log-odds of churn for a feature row in original units (`NaN` = missing
    /// = training mean). `NaN` when the row length differs from the number of
    /// features or a value is infinite.
    pub fn log_odds(&self, x: &[f64]) -> f64 {
        if x.len() != self.coef.len() || x.iter().any(|v| v.is_infinite()) {
            return f64::NAN;
        }
        let mut eta = self.intercept;
        for (j, &v) in x.iter().enumerate() {
            if !v.is_nan() {
                eta += self.coef[j] * (v - self.means[j]) / self.scales[j];
            }
        }
        eta
    }

    /// Predicted probability of churn (`true`) for a feature row in original
    /// units (`NaN` = missing = training mean). Returns `NaN` when the row
    /// length differs from the number of features or a value is infinite.
    pub fn predict(&self, x: &[f64]) -> f64 {
        let eta = self.log_odds(x);
        if eta.is_nan() { f64::NAN } else { sigmoid(eta) }
    }

    /// Coefficients per original unit of each feature: `coef_j / scales_j`.
    pub fn coef_unscaled(&self) -> Vec<f64> {
        self.coef
            .iter()
            .zip(&self.scales)
            .map(|(c, s)| c / s)
            .collect()
    }

    /// Intercept in original units, so that for a row without missing values
    /// `log_odds(x) = intercept_unscaled() + Σ coef_unscaled()_j · x_j`.
    pub fn intercept_unscaled(&self) -> f64 {
        self.intercept
            - self
                .coef
                .iter()
                .zip(&self.means)
                .zip(&self.scales)
                .map(|((c, m), s)| c * m / s)
                .sum::<f64>()
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn brute_auc(s: &[f64], l: &[bool]) -> Option<f64> {
        let (mut num, mut pairs) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    pairs += 1.0;
                    if s[i] > s[j] {
                        num += 1.0;
                    } else if s[i] == s[j] {
                        num += 0.5;
                    }
                }
            }
        }
        (pairs > 0.0).then(|| num / pairs)
    }

    /// `n_clusters` accounts with `per` rows each; `signal` = how strongly the
    /// label depends on the score (0 = independent).
    fn clustered(
        n_clusters: u32,
        per: u32,
        signal: f64,
        seed: u64,
    ) -> (Vec<f64>, Vec<bool>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut s, mut l, mut c) = (vec![], vec![], vec![]);
        for a in 0..n_clusters {
            let acct_score = normal(&mut rng);
            let acct_risk = 0.8 * normal(&mut rng);
            for _ in 0..per {
                let score = acct_score + 0.5 * normal(&mut rng);
                let eta = -1.0 + acct_risk + signal * score;
                s.push(score);
                l.push(rng.random::<f64>() < sigmoid(eta));
                c.push(a);
            }
        }
        (s, l, c)
    }

    #[test]
    fn auc_perfect_reverse_and_ties() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let l = [false, false, false, true, true, true];
        assert_eq!(auc(&s, &l), Some(1.0));
        let rev: Vec<f64> = s.iter().map(|v| -v).collect();
        assert_eq!(auc(&rev, &l), Some(0.0));
        assert_eq!(auc(&[7.0; 6], &l), Some(0.5));
        // -0.0 and 0.0 tie
        assert_eq!(auc(&[0.0, -0.0], &[true, false]), Some(0.5));
        // one tie across classes: 8 of 9 pairs won, 1 tied
        assert_eq!(
            auc(&[1.0, 2.0, 3.0, 3.0, 4.0, 5.0], &l),
            Some((8.0 + 0.5) / 9.0)
        );
    }

    #[test]
    fn auc_undefined_cases() {
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(auc(&[1.0, 2.0], &[false, false]), None);
        assert_eq!(auc(&[1.0, f64::NAN], &[true, false]), None);
        assert_eq!(auc(&[1.0, 2.0], &[true]), None);
        assert_eq!(
            auc(&[f64::NEG_INFINITY, f64::INFINITY], &[false, true]),
            Some(1.0)
        );
    }

    #[test]
    fn auc_matches_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..400 {
            let n = rng.random_range(0..60);
            let ties = case % 2 == 0;
            let s: Vec<f64> = (0..n)
                .map(|_| {
                    if ties {
                        rng.random_range(0..5) as f64
                    } else {
                        normal(&mut rng)
                    }
                })
                .collect();
            let p = rng.random::<f64>();
            let l: Vec<bool> = (0..n).map(|_| rng.random::<f64>() < p).collect();
            match (auc(&s, &l), brute_auc(&s, &l)) {
                (None, None) => {}
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "case {case}: {a} vs {b}"),
                other => panic!("case {case}: {other:?}"),
            }
        }
    }

    #[test]
    fn bootstrap_is_deterministic_and_contains_estimate() {
        let (s, l, c) = clustered(100, 5, 1.0, 1);
        let a = auc_interval(&s, &l, &c, 300, 42).unwrap();
        let b = auc_interval(&s, &l, &c, 300, 42).unwrap();
        assert_eq!(a, b);
        let other = auc_interval(&s, &l, &c, 300, 43).unwrap();
        assert_ne!(a, other);
        assert_eq!(a.estimate, auc(&s, &l).unwrap());
        assert!(a.contains(a.estimate), "{a:?}");
        assert!(a.low < a.high);
    }

    #[test]
    fn weighted_walk_matches_materialised_replicate() {
        // auc_interval's counting shortcut must equal the AUC of the copied rows.
        let (s, l, c) = clustered(50, 4, 1.0, 3);
        let mut direct = Vec::new();
        cluster_bootstrap(&c, 50, 9, |rows| {
            let ss: Vec<f64> = rows.iter().map(|&r| s[r]).collect();
            let ll: Vec<bool> = rows.iter().map(|&r| l[r]).collect();
            let v = auc(&ss, &ll);
            direct.push(v);
            v
        });
        let via = cluster_bootstrap(&c, 50, 9, |rows| {
            let ss: Vec<f64> = rows.iter().map(|&r| s[r]).collect();
            let ll: Vec<bool> = rows.iter().map(|&r| l[r]).collect();
            auc(&ss, &ll)
        })
        .unwrap();
        assert_eq!(auc_interval(&s, &l, &c, 50, 9).unwrap(), via);
        assert_eq!(direct.len(), 51);
    }

    #[test]
    fn bootstrap_draws_whole_clusters() {
        // Non-contiguous ids, unequal cluster sizes.
        let clusters: Vec<u32> = vec![10, 10, 10, 99, 5, 5, 7, 7, 7, 7];
        let size = |id: u32| clusters.iter().filter(|&&c| c == id).count();
        let mut calls = 0;
        let iv = cluster_bootstrap(&clusters, 200, 1, |rows| {
            calls += 1;
            if calls > 1 {
                let mut drawn = 0;
                for id in [10u32, 99, 5, 7] {
                    let got = rows.iter().filter(|&&r| clusters[r] == id).count();
                    assert_eq!(got % size(id), 0, "partial cluster {id}");
                    drawn += got / size(id);
                }
                assert_eq!(drawn, 4, "must draw as many clusters as there are");
            }
            Some(rows.len() as f64)
        })
        .unwrap();
        assert_eq!(calls, 201);
        assert_eq!(iv.estimate, 10.0);
        assert!(iv.low >= 4.0 && iv.high <= 16.0);
    }

    #[test]
    fn percentile_interval_uses_2_5_and_97_5_percent() {
        let reps: Vec<f64> = (0..=1000).rev().map(|i| i as f64 / 1000.0).collect();
        let iv = percentile_interval(0.5, reps, 1001).unwrap();
        assert!(
            (iv.low - 0.025).abs() < 1e-12 && (iv.high - 0.975).abs() < 1e-12,
            "{iv:?}"
        );
        // A bootstrap of a mean matches the normal-theory interval.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let xs: Vec<f64> = (0..400).map(|_| normal(&mut rng)).collect();
        let ids: Vec<u32> = (0..400).collect();
        let mean =
            |rows: &[usize]| Some(rows.iter().map(|&r| xs[r]).sum::<f64>() / rows.len() as f64);
        let iv = cluster_bootstrap(&ids, 2000, 6, mean).unwrap();
        let sd = (xs.iter().map(|x| (x - iv.estimate).powi(2)).sum::<f64>() / 399.0).sqrt();
        let half = Z95 * sd / 20.0;
        assert!(
            (iv.high - iv.estimate) / half > 0.85 && (iv.high - iv.estimate) / half < 1.15,
            "{iv:?}"
        );
        assert!(
            (iv.estimate - iv.low) / half > 0.85 && (iv.estimate - iv.low) / half < 1.15,
            "{iv:?}"
        );
    }

    #[test]
    fn bootstrap_none_cases() {
        assert_eq!(cluster_bootstrap(&[], 100, 1, |_| Some(1.0)), None);
        assert_eq!(cluster_bootstrap(&[1, 2], 0, 1, |_| Some(1.0)), None);
        assert_eq!(cluster_bootstrap(&[1, 2], 100, 1, |_| None), None);
        assert_eq!(cluster_bootstrap(&[1, 2], 100, 1, |_| Some(f64::NAN)), None);
        // Full sample fine, replicates succeed only when they draw cluster 1
        // then cluster 2 (about a quarter of them).
        assert_eq!(
            cluster_bootstrap(&[1, 2], 100, 1, |r| (r.len() == 2
                && r[0] == 0
                && r[1] == 1)
                .then_some(1.0)),
            None
        );
        // Exactly 25 of 100 replicates succeed.
        let mut i = 0;
        assert_eq!(
            cluster_bootstrap(&[1, 2], 100, 1, |_| {
                i += 1;
                (i % 4 == 1).then_some(1.0)
            }),
            None
        );
        // auc_interval: one-class, NaN, mismatched lengths.
        assert_eq!(
            auc_interval(&[1.0, 2.0], &[true, true], &[0, 1], 50, 1),
            None
        );
        assert_eq!(
            auc_interval(&[1.0, f64::NAN], &[true, false], &[0, 1], 50, 1),
            None
        );
        assert_eq!(auc_interval(&[1.0, 2.0], &[true, false], &[0], 50, 1), None);
        assert_eq!(auc_interval(&[], &[], &[], 50, 1), None);
    }

    #[test]
    fn random_scores_give_interval_containing_half() {
        let (s, l, c) = clustered(400, 10, 0.0, 11);
        assert_eq!(s.len(), 4000);
        let iv = auc_interval(&s, &l, &c, 1000, 5).unwrap();
        assert!(iv.contains(0.5), "{iv:?}");
        assert!(iv.width() < 0.15, "{iv:?}");
    }

    #[test]
    fn informative_scores_give_high_interval() {
        let (s, l, c) = clustered(400, 10, 3.0, 12);
        let iv = auc_interval(&s, &l, &c, 1000, 5).unwrap();
        assert!(iv.low > 0.75, "{iv:?}");
        assert!(iv.contains(iv.estimate));
    }

    #[test]
    fn cluster_bootstrap_is_wider_than_row_bootstrap_for_correlated_rows() {
        // Rows within an account are identical copies: 200 effective rows.
        let (s0, l0, _) = clustered(200, 1, 1.0, 13);
        let (mut s, mut l, mut c) = (vec![], vec![], vec![]);
        for a in 0..200 {
            for _ in 0..10 {
                s.push(s0[a]);
                l.push(l0[a]);
                c.push(a as u32);
            }
        }
        let rows: Vec<u32> = (0..s.len() as u32).collect();
        let by_account = auc_interval(&s, &l, &c, 500, 1).unwrap();
        let by_row = auc_interval(&s, &l, &rows, 500, 1).unwrap();
        assert!(
            by_account.width() > 2.0 * by_row.width(),
            "{by_account:?} vs {by_row:?}"
        );
    }

    #[test]
    fn wilson_known_values() {
        let iv = wilson(5, 10).unwrap();
        assert_eq!(iv.estimate, 0.5);
        assert!(
            (iv.low - 0.2366).abs() < 1e-3 && (iv.high - 0.7634).abs() < 1e-3,
            "{iv:?}"
        );
        let zero = wilson(0, 10).unwrap();
        assert_eq!(zero.low, 0.0);
        assert!((zero.high - 0.2775).abs() < 1e-3, "{zero:?}");
        let all = wilson(10, 10).unwrap();
        assert_eq!(all.high, 1.0);
        assert!((all.low - 0.7225).abs() < 1e-3, "{all:?}");
        assert_eq!(wilson(0, 0), None);
        assert_eq!(wilson(11, 10), None);
        for n in 1..60u64 {
            for k in 0..=n {
                let iv = wilson(k, n).unwrap();
                assert!(0.0 <= iv.low && iv.low <= iv.estimate && iv.estimate <= iv.high);
                assert!(iv.high <= 1.0);
            }
        }
        let big = wilson(u64::MAX / 2, u64::MAX).unwrap();
        assert!(big.contains(0.5));
    }

    #[test]
    fn poisson_known_values() {
        let z = poisson_rate(0, 1.0).unwrap();
        assert_eq!((z.estimate, z.low), (0.0, 0.0));
        assert!((z.high - 3.6889).abs() < 1e-3, "{z:?}");
        let ten = poisson_rate(10, 1.0).unwrap();
        assert!(
            (ten.low - 4.7954).abs() < 1e-3 && (ten.high - 18.3904).abs() < 1e-3,
            "{ten:?}"
        );
        let one = poisson_rate(1, 1.0).unwrap();
        assert!(
            (one.low - 0.02532).abs() < 1e-4 && (one.high - 5.5716).abs() < 1e-3,
            "{one:?}"
        );
        let scaled = poisson_rate(10, 4.0).unwrap();
        assert!((scaled.estimate - 2.5).abs() < 1e-12);
        assert!((scaled.low - ten.low / 4.0).abs() < 1e-12);
        assert_eq!(poisson_rate(3, 0.0), None);
        assert_eq!(poisson_rate(3, -1.0), None);
        assert_eq!(poisson_rate(3, f64::NAN), None);
        assert_eq!(poisson_rate(3, f64::INFINITY), None);
        assert_eq!(poisson_rate(3, 1e-320), None);
        // Exact and Wilson–Hilferty agree where they meet; bounds are monotone.
        let exact = garwood(POISSON_EXACT_MAX);
        let wh = garwood_wilson_hilferty(POISSON_EXACT_MAX);
        assert!((exact.0 / wh.0 - 1.0).abs() < 1e-4, "{exact:?} {wh:?}");
        assert!((exact.1 / wh.1 - 1.0).abs() < 1e-4, "{exact:?} {wh:?}");
        let mut prev = garwood(0);
        for k in 1..400 {
            let g = garwood(k);
            assert!(
                g.0 > prev.0 && g.1 > prev.1 && g.0 < k as f64 && (k as f64) < g.1,
                "k={k}"
            );
            prev = g;
        }
        let huge = poisson_rate(u64::MAX, 1.0).unwrap();
        assert!(huge.contains(huge.estimate));
    }

    #[test]
    fn median_and_interval() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let xs: Vec<f64> = (0..501).map(|_| 50.0 + 10.0 * normal(&mut rng)).collect();
        let a = median_interval(&xs, 500, 8).unwrap();
        assert_eq!(a, median_interval(&xs, 500, 8).unwrap());
        assert_eq!(a.estimate, median(&xs).unwrap());
        assert!(a.contains(a.estimate) && a.contains(50.0), "{a:?}");
        assert!(a.width() < 4.0, "{a:?}");
        assert_eq!(median_interval(&[], 100, 1), None);
        assert_eq!(median_interval(&[1.0], 0, 1), None);
        assert_eq!(median_interval(&[f64::NAN], 10, 1), None);
        assert_eq!(
            median_interval(&[2.0], 10, 1),
            Some(Interval {
                estimate: 2.0,
                low: 2.0,
                high: 2.0
            })
        );
    }

    #[test]
    fn lift_values() {
        // 10 rows, lowest 20% = values 1,2 (both churn); overall 4/10.
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let l = [
            true, true, false, false, true, false, false, true, false, false,
        ];
        assert!((lift(&v, &l, 0.2).unwrap() - 2.5).abs() < 1e-12);
        assert!((lift(&v, &l, 1.0).unwrap() - 1.0).abs() < 1e-12);
        // NaN rows ignored.
        let mut v2 = v.to_vec();
        v2.push(f64::NAN);
        let mut l2 = l.to_vec();
        l2.push(true);
        assert_eq!(lift(&v2, &l2, 0.2), lift(&v, &l, 0.2));
        // Ties at the cut: lowest 20% of 10 rows = 2 rows of weight, the three
        // rows at value 1 share it: churn 1 of 3 -> low rate 1/3, overall 0.3.
        let vt = [1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let lt = [
            true, false, false, false, false, true, false, true, false, false,
        ];
        assert!((lift(&vt, &lt, 0.2).unwrap() - (1.0 / 3.0) / 0.3).abs() < 1e-12);
        assert_eq!(lift(&v, &[false; 10], 0.2), None);
        assert_eq!(lift(&[], &[], 0.2), None);
        assert_eq!(lift(&[f64::NAN], &[true], 0.2), None);
        assert_eq!(lift(&v, &l, 0.0), None);
        assert_eq!(lift(&v, &l, 1.5), None);
        assert_eq!(lift(&v, &l, f64::NAN), None);
        assert_eq!(lift(&v, &l[..3], 0.2), None);
    }

    /// Rows with 3 features on a 0..100 scale; true standardised effects
    /// +1.5 (feature 0), -0.5 (feature 1), 0 (feature 2); ~5% missing.
    fn logistic_data(n: usize, intercept: f64, seed: u64) -> (Vec<Vec<f64>>, Vec<bool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, mut y) = (vec![], vec![]);
        for _ in 0..n {
            let z: Vec<f64> = (0..3).map(|_| normal(&mut rng)).collect();
            let eta = intercept + 1.5 * z[0] - 0.5 * z[1];
            y.push(rng.random::<f64>() < sigmoid(eta));
            let mut row: Vec<f64> = z.iter().map(|v| 50.0 + 15.0 * v).collect();
            for v in row.iter_mut() {
                if rng.random::<f64>() < 0.05 {
                    *v = f64::NAN;
                }
            }
            x.push(row);
        }
        (x, y)
    }

    #[test]
    fn logistic_recovers_known_coefficients() {
        // Churn as the minority (intercept -1.5) and as the majority (+1.5):
        // the second exercises the label flip.
        for intercept in [-1.5, 1.5] {
            let (x, y) = logistic_data(5000, intercept, 21);
            let m = Logistic::fit(&x, &y, 1.0).unwrap();
            assert!(m.coef[0] > 0.0 && m.coef[1] < 0.0, "{m:?}");
            assert!(m.coef[0].abs() > m.coef[1].abs() && m.coef[1].abs() > m.coef[2].abs());
            // Attenuated a little by the 5% imputed values, but close.
            assert!((m.coef[0] - 1.5).abs() < 0.25, "{m:?}");
            assert!((m.coef[1] + 0.5).abs() < 0.15, "{m:?}");
            assert!(m.coef[2].abs() < 0.15, "{m:?}");
            assert!((m.intercept - intercept).abs() < 0.3, "{m:?}");
            assert!((m.means[0] - 50.0).abs() < 1.0 && (m.scales[0] - 15.0).abs() < 1.0);
            // Higher feature 0 -> higher churn probability.
            let lo = m.predict(&[30.0, 50.0, 50.0]);
            let hi = m.predict(&[70.0, 50.0, 50.0]);
            assert!(0.0 < lo && lo < hi && hi < 1.0);
            // Missing = mean.
            let mean_row = m.predict(&[m.means[0], m.means[1], m.means[2]]);
            assert!((m.predict(&[f64::NAN; 3]) - mean_row).abs() < 1e-12);
            assert!((mean_row - sigmoid(m.intercept)).abs() < 1e-12);
            // Unscaled coefficients reproduce the log-odds.
            let row = [62.0, 41.0, 55.0];
            let cu = m.coef_unscaled();
            let eta = m.intercept_unscaled() + cu.iter().zip(&row).map(|(c, v)| c * v).sum::<f64>();
            assert!((eta - m.log_odds(&row)).abs() < 1e-9);
            assert!((cu[0] - m.coef[0] / m.scales[0]).abs() < 1e-15);
            // Mean predicted probability matches the churn rate (unpenalised intercept).
            let rate = y.iter().filter(|&&b| b).count() as f64 / y.len() as f64;
            let mean_p = x.iter().map(|r| m.predict(r)).sum::<f64>() / x.len() as f64;
            assert!((mean_p - rate).abs() < 0.01, "{mean_p} vs {rate}");
        }
    }

    #[test]
    fn logistic_errors_and_edge_cases() {
        let (x, y) = logistic_data(200, 0.0, 22);
        assert_eq!(
            Logistic::fit(&x, &[true; 200], 1.0),
            Err(FitError::OnlyOneClass)
        );
        assert_eq!(
            Logistic::fit(&x, &[false; 200], 1.0),
            Err(FitError::OnlyOneClass)
        );
        assert_eq!(Logistic::fit(&[], &[], 1.0), Err(FitError::NoRows));
        assert!(matches!(
            Logistic::fit(&x, &y[..10], 1.0),
            Err(FitError::LengthMismatch {
                rows: 200,
                labels: 10
            })
        ));
        assert_eq!(Logistic::fit(&x, &y, -1.0), Err(FitError::InvalidPenalty));
        assert_eq!(
            Logistic::fit(&x, &y, f64::NAN),
            Err(FitError::InvalidPenalty)
        );
        let mut ragged = x.clone();
        ragged[5].pop();
        assert!(matches!(
            Logistic::fit(&ragged, &y, 1.0),
            Err(FitError::RaggedRow { row: 5, .. })
        ));
        let mut inf = x.clone();
        inf[7][2] = f64::INFINITY;
        assert_eq!(
            Logistic::fit(&inf, &y, 1.0),
            Err(FitError::InfiniteValue { row: 7, column: 2 })
        );
        // Iteration limit too small: reported, not returned as a model.
        assert!(matches!(
            Logistic::fit_with_limit(&x, &y, 1.0, 1),
            Err(FitError::DidNotConverge { .. })
        ));
        // Errors display as text.
        assert!(FitError::OnlyOneClass.to_string().contains("one class"));

        // All-NaN column and constant column: coefficient 0, no panic.
        let mut odd = x.clone();
        for r in odd.iter_mut() {
            r[1] = f64::NAN;
            r[2] = 42.0;
        }
        let m = Logistic::fit(&odd, &y, 1.0).unwrap();
        assert_eq!((m.means[1], m.scales[1], m.scales[2]), (0.0, 1.0, 1.0));
        assert!(m.coef[1].abs() < 1e-9 && m.coef[2].abs() < 1e-9, "{m:?}");
        assert!(m.coef[0] > 0.0);

        // Wrong-length or infinite prediction input -> NaN.
        assert!(m.predict(&[1.0]).is_nan());
        assert!(m.predict(&[f64::INFINITY, 1.0, 1.0]).is_nan());

        // No features: intercept is the logit of the churn rate.
        let empty_rows = vec![Vec::new(); 4];
        let m0 = Logistic::fit(&empty_rows, &[true, false, false, false], 1.0).unwrap();
        assert!((m0.predict(&[]) - 0.25).abs() < 1e-12);

        // Perfectly separable data: with a penalty it fits; without one it
        // either errors or returns a finite model, never panics.
        let xs: Vec<Vec<f64>> = (0..20).map(|i| vec![i as f64]).collect();
        let ys: Vec<bool> = (0..20).map(|i| i >= 10).collect();
        let m = Logistic::fit(&xs, &ys, 1.0).unwrap();
        assert!(m.predict(&[19.0]) > 0.9 && m.predict(&[0.0]) < 0.1);
        if let Ok(m) = Logistic::fit(&xs, &ys, 0.0) {
            assert!(m.coef[0].is_finite());
        }
        // Two rows only.
        let _ = Logistic::fit(&[vec![1.0], vec![2.0]], &[true, false], 0.0);
        let _ = Logistic::fit(&[vec![f64::NAN], vec![f64::NAN]], &[true, false], 0.0);
    }
}
