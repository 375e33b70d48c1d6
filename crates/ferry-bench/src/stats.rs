//! Order statistics of a sample and the markdown table rows the scenarios print.

/// min, p50, p99, max of a sample (nearest-rank percentiles, so p99 is the maximum when there
/// are fewer than 100 samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub min: i64,
    pub p50: i64,
    pub p99: i64,
    pub max: i64,
}

/// The nearest-rank percentile `p` (0..=100) of sorted `v`.
fn rank(v: &[i64], p: u32) -> i64 {
    let n = v.len();
    let k = (p as usize * n).div_ceil(100).clamp(1, n);
    v[k - 1]
}

pub fn summarize(samples: impl IntoIterator<Item = i64>) -> Option<Summary> {
    let mut v: Vec<i64> = samples.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(Summary { n: v.len(), min: v[0], p50: rank(&v, 50), p99: rank(&v, 99), max: v[v.len() - 1] })
}

/// The header of a statistics table whose first column says what was measured.
pub fn header(first: &str, last: &str) -> String {
    format!("| {first} | n | min | p50 | p99 | max | {last} |\n|---|--:|--:|--:|--:|--:|---|")
}

/// One row: `what`, the summary of `samples` in ms, and `note` in the last column.
pub fn row(what: &str, samples: impl IntoIterator<Item = i64>, note: &str) -> String {
    match summarize(samples) {
        Some(s) => format!("| {what} | {} | {} | {} | {} | {} | {note} |", s.n, s.min, s.p50, s.p99, s.max),
        None => format!("| {what} | 0 | - | - | - | - | {note} |"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = summarize((1..=20).rev()).unwrap();
        assert_eq!((s.n, s.min, s.p50, s.p99, s.max), (20, 1, 10, 20, 20));
        let s = summarize((1..=200).map(|x| x as i64)).unwrap();
        assert_eq!((s.p50, s.p99), (100, 198));
        assert_eq!(summarize([7]).unwrap().p99, 7);
        assert!(summarize(Vec::<i64>::new()).is_none());
    }
}
