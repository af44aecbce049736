//! Per-step records: one row per step and rank, gathered on every rank at the
//! end of a run, written by rank 0 as one `steps.csv`, and reduced to the
//! step-time statistics of the summary.

use serde::Serialize;

use super::stats::{mean, median, std_dev};
use crate::comm::Control;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub rank: usize,
    pub epoch: usize,
    pub loss: f32,
    pub lr: f64,
    /// Waiting for the loader thread.
    pub data_s: f64,
    /// Forward, backward and optimizer.
    pub compute_s: f64,
    /// At the barrier before the exchange: the load imbalance.
    pub wait_s: f64,
    /// The gradient exchange, as far as the step waited for it (overlapped
    /// with backward: only what was left after backward ended).
    pub comm_s: f64,
    /// The whole gradient exchange, overlapped or not (pack, all-reduce and
    /// unpack of every bucket); equals `comm_s` without overlap.
    pub exchange_s: f64,
    pub samples: usize,
    pub skipped: bool,
    /// Bytes the exchange sent to ranks on other hosts (MPI data planes).
    pub between_hosts_bytes: u64,
}

impl StepRecord {
    /// This rank's time for the step, every part included.
    pub fn total_s(&self) -> f64 {
        self.data_s + self.compute_s + self.wait_s + self.comm_s
    }
}

pub const CSV_HEADER: &str =
    "step,rank,epoch,loss,lr,data_s,compute_s,wait_s,comm_s,exchange_s,samples,skipped,between_hosts_bytes";

/// The rows as CSV, header first.
pub fn to_csv(rows: &[StepRecord]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{:.9},{:.9},{:.9},{:.9},{:.9},{},{},{}\n",
            r.step,
            r.rank,
            r.epoch,
            r.loss,
            r.lr,
            r.data_s,
            r.compute_s,
            r.wait_s,
            r.comm_s,
            r.exchange_s,
            r.samples,
            u8::from(r.skipped),
            r.between_hosts_bytes
        ));
    }
    out
}

/// Every rank's records, ordered by step then rank (collective). The step,
/// epoch and learning rate are the same on every rank; the rest travels.
pub fn gather(mine: &[StepRecord], control: &Control) -> anyhow::Result<Vec<StepRecord>> {
    const FIELDS: usize = 9;
    let mut flat = Vec::with_capacity(mine.len() * FIELDS);
    for r in mine {
        flat.extend([
            r.data_s,
            r.compute_s,
            r.wait_s,
            r.comm_s,
            r.loss as f64,
            r.samples as f64,
            f64::from(u8::from(r.skipped)),
            r.between_hosts_bytes as f64,
            r.exchange_s,
        ]);
    }
    let all = control.all_gather_f64s(&flat)?;
    let world = control.info().size;
    let mut out = Vec::with_capacity(mine.len() * world);
    for (i, template) in mine.iter().enumerate() {
        for rank in 0..world {
            let v = &all[rank * flat.len() + i * FIELDS..][..FIELDS];
            out.push(StepRecord {
                rank,
                data_s: v[0],
                compute_s: v[1],
                wait_s: v[2],
                comm_s: v[3],
                loss: v[4] as f32,
                samples: v[5] as usize,
                skipped: v[6] != 0.0,
                between_hosts_bytes: v[7] as u64,
                exchange_s: v[8],
                ..template.clone()
            });
        }
    }
    Ok(out)
}

/// Step times of a run, from the gathered records.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepStats {
    /// The first step (warm-up: allocation, first touches), slowest rank.
    pub first_step_s: f64,
    /// Over the later steps, each step's time on its slowest rank.
    pub step_s_median: f64,
    pub step_s_mean: f64,
    pub step_s_std: f64,
    /// Medians over the later steps of each part, averaged over the ranks.
    pub compute_s: f64,
    pub comm_s: f64,
    /// The whole exchange (more than `comm_s` when overlapped with backward).
    pub exchange_s: f64,
    pub wait_s: f64,
    pub data_s: f64,
    /// Bytes sent between hosts in a step, all ranks together (median over the later steps).
    pub between_hosts_bytes: f64,
}

/// `all` ordered by step then rank, as `gather` returns it; the first
/// `warmup` steps (at least 1) are left out of all but `first_step_s`.
pub fn step_stats(all: &[StepRecord], world: usize, warmup: usize) -> StepStats {
    let steps: Vec<&[StepRecord]> = all.chunks(world.max(1)).collect();
    let slowest = |rows: &[StepRecord]| rows.iter().map(StepRecord::total_s).fold(0.0, f64::max);
    let Some(first) = steps.first() else {
        return StepStats::default();
    };
    // A run no longer than its warm-up has only those steps to report.
    let skip = warmup.max(1);
    let later: Vec<&[StepRecord]> = if steps.len() > skip { steps[skip..].to_vec() } else { steps.clone() };
    let times: Vec<f64> = later.iter().map(|rows| slowest(rows)).collect();
    let part = |f: fn(&StepRecord) -> f64| {
        median(&later.iter().map(|rows| mean(&rows.iter().map(f).collect::<Vec<_>>())).collect::<Vec<_>>())
    };
    StepStats {
        first_step_s: slowest(first),
        step_s_median: median(&times),
        step_s_mean: mean(&times),
        step_s_std: std_dev(&times),
        compute_s: part(|r| r.compute_s),
        comm_s: part(|r| r.comm_s),
        exchange_s: part(|r| r.exchange_s),
        wait_s: part(|r| r.wait_s),
        data_s: part(|r| r.data_s),
        between_hosts_bytes: median(
            &later.iter().map(|rows| rows.iter().map(|r| r.between_hosts_bytes as f64).sum()).collect::<Vec<_>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: usize, rank: usize, compute_s: f64, wait_s: f64) -> StepRecord {
        StepRecord {
            step,
            rank,
            epoch: 0,
            loss: 1.5,
            lr: 0.1,
            data_s: 0.0,
            compute_s,
            wait_s,
            comm_s: 0.25,
            exchange_s: 0.25,
            samples: 8,
            skipped: false,
            between_hosts_bytes: 0,
        }
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_step_and_rank() {
        let r = StepRecord { data_s: 0.001, skipped: true, ..rec(3, 1, 0.5, 0.0) };
        let csv = to_csv(&[r.clone(), StepRecord { step: 4, skipped: false, ..r }]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "3,1,0,1.5,0.1,0.001000000,0.500000000,0.000000000,0.250000000,0.250000000,8,1,0");
        assert!(lines[2].starts_with("4,1,") && lines[2].ends_with(",8,0,0"));
    }

    #[test]
    fn step_time_is_the_slowest_rank_and_the_first_step_stands_apart() {
        // Step 1 is slow (warm-up); in steps 2..4 rank 1 computes longer and rank 0 waits for it.
        let all = vec![
            rec(1, 0, 5.0, 0.0),
            rec(1, 1, 6.0, 0.0),
            rec(2, 0, 1.0, 0.5),
            rec(2, 1, 1.5, 0.0),
            rec(3, 0, 1.0, 1.0),
            rec(3, 1, 2.0, 0.0),
            rec(4, 0, 1.0, 0.5),
            rec(4, 1, 1.5, 0.0),
        ];
        let s = step_stats(&all, 2, 1);
        assert_eq!(s.first_step_s, 6.25);
        assert_eq!(s.step_s_median, 1.75);
        assert!((s.step_s_mean - 1.916_666_666).abs() < 1e-8);
        assert_eq!(s.compute_s, 1.25);
        assert_eq!(s.wait_s, 0.25);
        assert_eq!(s.comm_s, 0.25);
        let w = step_stats(&all, 2, 2);
        assert_eq!(
            (w.first_step_s, w.step_s_median),
            (6.25, 2.0),
            "two warm-up steps: steps 3 (2.25 s) and 4 (1.75 s) remain"
        );
    }
}
