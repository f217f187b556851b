//! Latency summaries for the suite's benchmark programs (e2e/examples).

use std::time::Duration;

/// Median, tail and mean of one arm's samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

/// Sorts `samples` and summarizes them (nearest-rank percentiles).
/// An empty slice gives zeros.
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            return Duration::ZERO;
        }
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index]
    };
    let total: Duration = samples.iter().sum();
    Summary {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: total / u32::try_from(samples.len().max(1)).unwrap_or(u32::MAX),
    }
}

/// Milliseconds with three decimals.
pub fn ms(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_mean() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summarize(&mut samples);
        assert_eq!(s.median, Duration::from_millis(50));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(ms(Duration::from_micros(1_234)), "1.234");
        assert_eq!(summarize(&mut []).median, Duration::ZERO);
    }
}
