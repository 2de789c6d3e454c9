//! Medians and ranges of repeated measurements.

use serde::Serialize;

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// The median of all `samples`, with the min and max of the medians
    /// of consecutive blocks of `block` samples (the last block may be
    /// shorter). For figures timed one command at a time and pushed in
    /// round order: a block is a stretch of interleaved rounds, so its
    /// median is that stretch's figure, and the spread of the blocks is
    /// how much the figure moves over the run. The min–max of single
    /// commands is the machine's largest hiccup (one preemption of a few
    /// ms in 100 rounds), not the figure's noise.
    pub fn of_blocks(samples: &[f64], block: usize) -> Summary {
        let all = Summary::of(samples);
        let medians: Vec<f64> = samples
            .chunks(block.max(1))
            .map(|c| Summary::of(c).median)
            .collect();
        let blocks = Summary::of(&medians);
        Summary {
            median: all.median,
            min: blocks.min,
            max: blocks.max,
            n: all.n,
        }
    }
}

/// Rounds per block in [`Summary::of_blocks`] (the `add` section's judge).
pub const ROUNDS_PER_BLOCK: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert_eq!(Summary::of(&[5.0, 1.0, 9.0]).median, 5.0);
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn blocks_spread_is_of_block_medians() {
        // Two blocks of three: medians 2 and 5; one 50 ms hiccup.
        let s = Summary::of_blocks(&[1.0, 2.0, 50.0, 5.0, 4.0, 6.0], 3);
        assert_eq!((s.median, s.min, s.max, s.n), (4.5, 2.0, 5.0, 6));
        // A shorter last block counts with its own median.
        let s = Summary::of_blocks(&[1.0, 1.0, 1.0, 9.0], 3);
        assert_eq!((s.min, s.max), (1.0, 9.0));
        assert_eq!(Summary::of_blocks(&[], 3).n, 0);
    }
}
