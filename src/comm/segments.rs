//! How a buffer is cut into one segment per rank, for the reductions in which
//! rank r sums segment r (messages and shared memory alike).

/// Counts and offsets of `len` elements over `n` ranks: the first `len % n`
/// ranks take one element more.
pub fn segments(len: usize, n: usize) -> (Vec<usize>, Vec<usize>) {
    let base = len / n;
    let extra = len % n;
    let counts: Vec<usize> = (0..n).map(|r| base + usize::from(r < extra)).collect();
    let mut displs = Vec::with_capacity(n);
    let mut at = 0;
    for c in &counts {
        displs.push(at);
        at += c;
    }
    (counts, displs)
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn segments_cover_the_buffer_and_differ_by_at_most_one() {
        for len in [0, 1, 2, 7, 1_000_003] {
            for n in 1..=8 {
                let (c, d) = segments(len, n);
                assert_eq!(c.iter().sum::<usize>(), len);
                assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
                for r in 1..n {
                    assert_eq!(d[r], d[r - 1] + c[r - 1]);
                }
            }
        }
    }
}
