//! Per-step records: one row per step and rank, written as CSV (the machine
//! record the reports read; tables and plots are rendered from it).

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f32,
    pub lr: f64,
    pub data_s: f64,
    pub compute_s: f64,
    pub wait_s: f64,
    pub comm_s: f64,
    pub skipped: bool,
}

pub const CSV_HEADER: &str = "step,epoch,loss,lr,data_s,compute_s,wait_s,comm_s,skipped";

/// The rows as CSV, header first.
pub fn to_csv(rows: &[StepRecord]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{:.9},{:.9},{:.9},{:.9},{}\n",
            r.step, r.epoch, r.loss, r.lr, r.data_s, r.compute_s, r.wait_s, r.comm_s, u8::from(r.skipped)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_one_line_per_step() {
        let r = StepRecord { step: 3, epoch: 0, loss: 1.5, lr: 0.1, data_s: 0.001, compute_s: 0.5, wait_s: 0.0, comm_s: 0.25, skipped: true };
        let csv = to_csv(&[r.clone(), StepRecord { step: 4, skipped: false, ..r }]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "3,0,1.5,0.1,0.001000000,0.500000000,0.000000000,0.250000000,1");
        assert!(lines[2].starts_with("4,") && lines[2].ends_with(",0"));
    }
}
