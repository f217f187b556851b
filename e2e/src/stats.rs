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

/// The first command-line argument as a count named `what` (`PODS`,
/// `CREATES`), `default` when absent, within `range`.
pub fn count_arg(
    what: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let count = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("{what} `{arg}` is not a number"))?,
        None => default,
    };
    if *range.end() == usize::MAX {
        anyhow::ensure!(
            count >= *range.start(),
            "{what} must be at least {}",
            range.start()
        );
    } else {
        anyhow::ensure!(
            range.contains(&count),
            "{what} must be between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(count)
}

/// Runs `measure(arm, name)` `warm_up` times per arm (discarded), then
/// `rounds` times per arm, rotating which arm goes first so that none always
/// follows another and drift affects every arm alike. Names are `warm-N` and
/// `pod-N`. Returns the samples per arm.
pub async fn interleaved(
    arms: usize,
    warm_up: usize,
    rounds: usize,
    mut measure: impl AsyncFnMut(usize, String) -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    for i in 0..warm_up {
        for arm in 0..arms {
            measure(arm, format!("warm-{i}")).await?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); arms];
    for i in 0..rounds {
        for k in 0..arms {
            let arm = (i + k) % arms;
            samples[arm].push(measure(arm, format!("pod-{i}")).await?);
        }
    }
    Ok(samples)
}

/// A Markdown table of one summary per labelled arm, in milliseconds.
pub fn table(labels: &[&str], summaries: &[Summary]) -> String {
    let mut out = String::from("| webhook | median | p90 | p99 | mean |\n|---|---|---|---|---|\n");
    for (label, s) in labels.iter().zip(summaries) {
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} |\n",
            ms(s.median),
            ms(s.p90),
            ms(s.p99),
            ms(s.mean)
        ));
    }
    out
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
        let row = table(&["a"], &[s]);
        assert_eq!(
            row,
            "| webhook | median | p90 | p99 | mean |\n|---|---|---|---|---|\n| a | 50.000 | 90.000 | 99.000 | 50.500 |\n"
        );
    }

    #[tokio::test]
    async fn interleaving_rotates_the_first_arm_after_the_warm_up() {
        let mut calls = Vec::new();
        let samples = interleaved(2, 1, 2, async |arm, name| {
            calls.push((arm, name));
            Ok(Duration::from_millis(arm as u64))
        })
        .await
        .unwrap();
        let order: Vec<(usize, &str)> = calls.iter().map(|(a, n)| (*a, n.as_str())).collect();
        assert_eq!(
            order,
            [
                (0, "warm-0"),
                (1, "warm-0"),
                (0, "pod-0"),
                (1, "pod-0"),
                (1, "pod-1"),
                (0, "pod-1")
            ]
        );
        assert_eq!(
            samples,
            vec![vec![Duration::ZERO; 2], vec![Duration::from_millis(1); 2]]
        );
    }
}
