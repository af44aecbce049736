//! Which samples each rank reads: every rank shuffles all indices with the
//! same (seed, epoch) and takes every world-th one from its rank on, so the
//! ranks' shards are disjoint and together cover the epoch. The tail that does
//! not divide by the world size is dropped, so every rank runs the same number
//! of steps (a rank with one step more would wait forever in a collective).

use crate::rng::Rng;

/// This rank's sample indices for `epoch`, in reading order.
pub fn shard(len: usize, epoch: u64, seed: u64, rank: usize, world: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = Rng::keyed(seed, 0x5a4d_0000 ^ epoch);
        for i in (1..len).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let usable = len - len % world;
    order[..usable].iter().skip(rank).step_by(world).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_equal_and_cover_the_usable_set() {
        for world in 1..=4 {
            let shards: Vec<Vec<usize>> = (0..world).map(|r| shard(103, 2, 7, r, world, true)).collect();
            let mut all: Vec<usize> = shards.concat();
            assert!(shards.iter().all(|s| s.len() == 103 / world));
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 103 - 103 % world);
        }
        assert_ne!(shard(50, 0, 1, 0, 1, true), shard(50, 1, 1, 0, 1, true), "epochs reshuffle");
        assert_eq!(shard(50, 3, 1, 1, 2, true), shard(50, 3, 1, 1, 2, true), "same seed, same shard");
        assert_eq!(shard(6, 0, 1, 1, 2, false), vec![1, 3, 5]);
    }
}
