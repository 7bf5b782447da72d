//! Calibration: run the folded float graph over real images and choose each activation
//! tensor's int8 range.
//!
//! Two passes over the images: the first finds each tensor's min and max, the second fills
//! a histogram over that range. Methods then pick a clip range `[lo, hi]` (always holding
//! 0, so real zero is exact):
//! - `minmax`: the observed range;
//! - `percentile`: the range holding all but the (100 − p)% tails (p = 99.99 by default);
//! - `entropy`: the range minimising the KL divergence between the histogram and its
//!   quantised version (TensorRT's method, over both signs);
//! - `mse`: the range minimising the expected squared quantisation error.

use std::str::FromStr;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::graph::Graph;
use crate::reference;

pub const HISTOGRAM_BINS: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    MinMax,
    Percentile(f64),
    Entropy,
    Mse,
}

impl Method {
    pub const DEFAULT_PERCENTILE: f64 = 99.99;

    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile({p})"),
            Method::Entropy => "entropy".into(),
            Method::Mse => "mse".into(),
        }
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile(Method::DEFAULT_PERCENTILE)),
            "entropy" => Ok(Method::Entropy),
            "mse" => Ok(Method::Mse),
            other => match other.strip_prefix("percentile=").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 50.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(format!(
                    "unknown method '{other}' (minmax, percentile, percentile=P, entropy, mse)"
                )),
            },
        }
    }
}

/// What was observed of one tensor.
#[derive(Clone, Debug)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
    /// Counts over `[min, max]` in [`HISTOGRAM_BINS`] equal bins.
    pub histogram: Vec<u64>,
}

impl TensorStats {
    fn bin_width(&self) -> f64 {
        (self.max as f64 - self.min as f64).max(1e-12) / HISTOGRAM_BINS as f64
    }
    fn bin_of(&self, v: f32) -> usize {
        (((v as f64 - self.min as f64) / self.bin_width()) as usize).min(HISTOGRAM_BINS - 1)
    }
    fn edge(&self, bin: usize) -> f64 {
        self.min as f64 + bin as f64 * self.bin_width()
    }
}

/// Statistics of every value of the graph, indexed by value id.
pub fn collect(
    graph: &Graph,
    images: &[Vec<f32>],
    progress: bool,
) -> anyhow::Result<Vec<TensorStats>> {
    let n = graph.values.len();
    let bar = if progress {
        ProgressBar::new(2 * images.len() as u64).with_style(
            ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} passes×images")
                .expect("static template"),
        )
    } else {
        ProgressBar::hidden()
    };
    // Pass 1: ranges.
    let ranges = parallel_fold(
        images,
        || vec![(f32::INFINITY, f32::NEG_INFINITY); n],
        |acc, img| {
            observe(graph, img, |v, data| {
                let r = &mut acc[v];
                for &x in data {
                    r.0 = r.0.min(x);
                    r.1 = r.1.max(x);
                }
            })?;
            bar.inc(1);
            Ok(())
        },
        |a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x.0.min(y.0), x.1.max(y.1)))
                .collect()
        },
    )?;
    let mut stats: Vec<TensorStats> = ranges
        .iter()
        .map(|&(lo, hi)| TensorStats {
            min: if lo.is_finite() { lo } else { 0.0 },
            max: if hi.is_finite() { hi } else { 0.0 },
            histogram: Vec::new(),
        })
        .collect();
    // Pass 2: histograms over those ranges.
    let template = &stats;
    let hists = parallel_fold(
        images,
        || vec![vec![0u64; HISTOGRAM_BINS]; n],
        |acc, img| {
            observe(graph, img, |v, data| {
                let s = &template[v];
                for &x in data {
                    acc[v][s.bin_of(x)] += 1;
                }
            })?;
            bar.inc(1);
            Ok(())
        },
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.iter_mut().zip(y).for_each(|(p, q)| *p += q);
            }
            a
        },
    )?;
    bar.finish_and_clear();
    for (s, h) in stats.iter_mut().zip(hists) {
        s.histogram = h;
    }
    Ok(stats)
}

/// Calls `f(value_id, data)` for the graph input and every node output.
fn observe(graph: &Graph, input: &[f32], mut f: impl FnMut(usize, &[f32])) -> anyhow::Result<()> {
    f(graph.input, input);
    reference::run_observed(graph, input, |_, v, data| f(v, data))?;
    Ok(())
}

/// Folds `items` on all cores, one accumulator per thread, then merges them.
fn parallel_fold<T: Sync, A: Send>(
    items: &[T],
    init: impl Fn() -> A + Sync,
    step: impl Fn(&mut A, &T) -> anyhow::Result<()> + Sync,
    merge: impl Fn(A, A) -> A,
) -> anyhow::Result<A> {
    let parts = crate::parallel::map_chunks(items, |part| {
        let mut acc = init();
        for item in part {
            step(&mut acc, item)?;
        }
        Ok(acc)
    })?;
    Ok(parts.into_iter().fold(init(), merge))
}

/// The clip range `[lo, hi]` a method picks for a tensor (always holds 0).
pub fn choose_range(stats: &TensorStats, method: Method) -> (f32, f32) {
    let (lo, hi) = match method {
        Method::MinMax => (stats.min as f64, stats.max as f64),
        Method::Percentile(p) => percentile_range(stats, p),
        Method::Entropy => best_candidate(stats, kl_divergence),
        Method::Mse => best_candidate(stats, expected_squared_error),
    };
    let lo = lo.min(0.0);
    let hi = hi.max(0.0).max(lo + 1e-6);
    (lo as f32, hi as f32)
}

fn percentile_range(s: &TensorStats, p: f64) -> (f64, f64) {
    let total: u64 = s.histogram.iter().sum();
    if total == 0 {
        return (s.min as f64, s.max as f64);
    }
    let tail = ((1.0 - p / 100.0) * total as f64).max(0.0);
    let mut cum = 0.0;
    let mut lo_bin = 0;
    for (i, &c) in s.histogram.iter().enumerate() {
        cum += c as f64;
        if cum > tail {
            lo_bin = i;
            break;
        }
    }
    let mut cum = 0.0;
    let mut hi_bin = HISTOGRAM_BINS;
    for (i, &c) in s.histogram.iter().enumerate().rev() {
        cum += c as f64;
        if cum > tail {
            hi_bin = i + 1;
            break;
        }
    }
    // A non-negative tensor keeps 0 as its lower end: only the upper tail is clipped.
    let lo = if s.min >= 0.0 {
        s.min as f64
    } else {
        s.edge(lo_bin)
    };
    (lo, s.edge(hi_bin))
}

/// Candidate ranges shrink `[min, max]` towards 0 by a common factor (bin-aligned), and the
/// one with the lowest `cost` wins.
fn best_candidate(s: &TensorStats, cost: fn(&TensorStats, usize, usize) -> f64) -> (f64, f64) {
    let zero_bin = if s.min >= 0.0 { 0 } else { s.bin_of(0.0) };
    let mut best = (f64::INFINITY, 0, HISTOGRAM_BINS);
    for step in 0..=128 {
        let alpha = 1.0 - step as f64 * 0.0070; // down to ~10% of the range
        let a = zero_bin - ((zero_bin as f64) * alpha).round() as usize;
        let b = zero_bin + (((HISTOGRAM_BINS - zero_bin) as f64) * alpha).round() as usize;
        if b <= a + 16 {
            continue;
        }
        let c = cost(s, a, b);
        if c < best.0 {
            best = (c, a, b);
        }
    }
    (s.edge(best.1), s.edge(best.2))
}

/// Quantisation level (0..=255) of bin `j` when `[edge(a), edge(b))` spans 256 levels.
fn level(j: usize, a: usize, b: usize) -> usize {
    (((j.clamp(a, b - 1) - a) as f64 + 0.5) * 256.0 / (b - a) as f64) as usize
}

fn expected_squared_error(s: &TensorStats, a: usize, b: usize) -> f64 {
    let (lo, hi) = (s.edge(a), s.edge(b));
    let step = (hi - lo) / 255.0;
    s.histogram
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(j, &c)| {
            let v = s.edge(j) + 0.5 * s.bin_width();
            let q = (((v - lo) / step).round().clamp(0.0, 255.0)) * step + lo;
            c as f64 * (v - q) * (v - q)
        })
        .sum()
}

fn kl_divergence(s: &TensorStats, a: usize, b: usize) -> f64 {
    // The bin holding 0 is left out: zero is exact in every candidate range, and after a
    // ReLU that bin holds half the mass, which merged with its neighbours into one level
    // would make every wide range look lossy and the chosen range far too narrow.
    let zero_bin = if s.min >= 0.0 { 0 } else { s.bin_of(0.0) };
    let mut raw = s.histogram[a..b].to_vec();
    if (a..b).contains(&zero_bin) {
        raw[zero_bin - a] = 0;
    }
    // P: the histogram inside [a, b) with the clipped outliers folded into the edge bins.
    let mut p: Vec<f64> = raw.iter().map(|&c| c as f64).collect();
    p[0] += s.histogram[..a].iter().sum::<u64>() as f64;
    let last = p.len() - 1;
    p[last] += s.histogram[b..].iter().sum::<u64>() as f64;
    // Q: the in-range histogram quantised to 256 levels, each level's mass spread evenly
    // over its non-empty bins. Built without the outliers (as TensorRT does), so the mass
    // that clipping piles onto the edges is what the divergence measures.
    let mut mass = [0.0f64; 257];
    let mut nonzero = [0usize; 257];
    for (i, &c) in raw.iter().enumerate() {
        let l = level(a + i, a, b);
        mass[l] += c as f64;
        nonzero[l] += (c > 0) as usize;
    }
    let q: Vec<f64> = raw
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let l = level(a + i, a, b);
            if c > 0 {
                mass[l] / nonzero[l] as f64
            } else {
                0.0
            }
        })
        .collect();
    let (p_total, q_total) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if p_total == 0.0 || q_total == 0.0 {
        return 0.0;
    }
    // Bins that P has and Q lacks get a small floor instead of an infinite divergence.
    const FLOOR: f64 = 1e-4;
    p.iter()
        .zip(&q)
        .filter(|(&pv, _)| pv > 0.0)
        .map(|(&pv, &qv)| {
            let (pn, qn) = (pv / p_total, (qv / q_total).max(FLOOR / q_total));
            pn * (pn / qn).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(values: &[f32]) -> TensorStats {
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = TensorStats {
            min,
            max,
            histogram: vec![0; HISTOGRAM_BINS],
        };
        for &v in values {
            let b = s.bin_of(v);
            s.histogram[b] += 1;
        }
        s
    }

    /// 100,000 values in [0, 3] and one outlier at 100: percentile and entropy cut the
    /// outlier off, minmax keeps it, and mse lands near its analytic optimum: rounding
    /// error 100000·(c/255)²/12 ≈ 0.128·c² against clipping error (100 − c)², least at
    /// c ≈ 88.6.
    #[test]
    fn methods_treat_a_lone_outlier_as_their_objective_says() {
        let mut values: Vec<f32> = (0..100_000)
            .map(|i| ((i % 1000) as f32 / 1000.0).powi(2) * 3.0)
            .collect();
        values.push(100.0);
        let s = stats_of(&values);
        assert_eq!(choose_range(&s, Method::MinMax), (0.0, 100.0));
        for m in [Method::Percentile(99.9), Method::Entropy] {
            let (lo, hi) = choose_range(&s, m);
            assert_eq!(lo, 0.0, "{m:?}");
            assert!(hi < 50.0 && hi > 2.0, "{m:?} picked {hi}");
        }
        let (_, hi) = choose_range(&s, Method::Mse);
        assert!(hi > 80.0 && hi < 97.0, "mse picked {hi}");
    }

    /// A ReLU output: half exact zeros, half an exponential tail. The zero spike must not
    /// drive entropy calibration to a range far narrower than the tail.
    #[test]
    fn entropy_is_not_fooled_by_the_relu_zero_spike() {
        let n = 50_000;
        let mut values = vec![0.0f32; n];
        values.extend((0..n).map(|i| -(((i as f64 + 0.5) / n as f64).ln()) as f32));
        let s = stats_of(&values);
        let (_, p) = choose_range(&s, Method::Percentile(99.99));
        let (lo, e) = choose_range(&s, Method::Entropy);
        assert_eq!(lo, 0.0);
        assert!(
            e > 0.4 * p,
            "entropy picked {e}, the 99.99th percentile is {p}"
        );
    }

    #[test]
    fn signed_tensors_keep_both_signs_and_zero() {
        let values: Vec<f32> = (0..20_001)
            .map(|i| (i as f32 - 10_000.0) / 1000.0)
            .collect();
        let s = stats_of(&values);
        for m in [
            Method::MinMax,
            Method::Percentile(99.99),
            Method::Entropy,
            Method::Mse,
        ] {
            let (lo, hi) = choose_range(&s, m);
            assert!(lo < -5.0 && hi > 5.0, "{m:?}: [{lo}, {hi}]");
        }
    }

    #[test]
    fn methods_parse_by_name() {
        assert_eq!(
            "percentile=99.9".parse::<Method>(),
            Ok(Method::Percentile(99.9))
        );
        assert!("lloyd".parse::<Method>().unwrap_err().contains("lloyd"));
    }
}
