//! The benchmark's table, in nccl-tests' order of columns, and its rows as
//! `--json` writes them.

use serde::Serialize;

use crate::comm::GradDtype;

/// One line of the table (and of `--json`). Times in microseconds, bandwidths in GB/s.
#[derive(Clone, Debug, Serialize)]
pub struct AllreduceRow {
    pub bytes: usize,
    pub count: usize,
    pub dtype: &'static str,
    pub ranks: usize,
    /// "shared-memory" or "messages": how this row's buffers were reduced.
    pub transport: &'static str,
    pub time_us: f64,
    pub algbw_gbs: f64,
    pub busbw_gbs: f64,
    /// Elements off the expected sum (`--check`), else None.
    pub wrong: Option<usize>,
    /// pack f32 -> wire type, all-reduce, unpack (`--baseline`).
    pub exchange_us: Option<f64>,
    /// MPI_Allreduce of `count` f32 values (`--baseline`).
    pub mpi_f32_us: Option<f64>,
    /// Local memcpy of `bytes` bytes (`--baseline`).
    pub memcpy_us: Option<f64>,
}

impl AllreduceRow {
    /// A row from the mean time of one all-reduce of `bytes` (`count` whole
    /// elements: a size asked for that is not a whole number of them is
    /// labelled with the bytes reduced) on `ranks` ranks.
    pub(super) fn timed(
        bytes: usize,
        count: usize,
        dtype: GradDtype,
        ranks: usize,
        transport: &'static str,
        time_s: f64,
        wrong: Option<usize>,
    ) -> Self {
        let algbw = bytes as f64 / time_s / 1e9;
        AllreduceRow {
            bytes,
            count,
            dtype: dtype.name(),
            ranks,
            transport,
            time_us: time_s * 1e6,
            algbw_gbs: algbw,
            busbw_gbs: algbw * 2.0 * (ranks as f64 - 1.0) / ranks as f64,
            wrong,
            exchange_us: None,
            mpi_f32_us: None,
            memcpy_us: None,
        }
    }
}

/// Table header, in nccl-tests' order of columns.
pub fn header(baseline: bool) -> String {
    let mut h = format!(
        "{:>12} {:>12} {:>5} {:>11} {:>8} {:>8} {:>7}",
        "size(B)", "count(elts)", "type", "time(us)", "algbw", "busbw", "#wrong"
    );
    if baseline {
        h.push_str(&format!(" {:>11} {:>11} {:>11} {:>9}", "exch(us)", "mpi_f32(us)", "memcpy(us)", "exch/f32"));
    }
    h.push_str(&format!("\n{:>12} {:>12} {:>5} {:>11} {:>8} {:>8} {:>7}", "", "", "", "", "(GB/s)", "(GB/s)", ""));
    h
}

pub fn format_row(r: &AllreduceRow) -> String {
    let wrong = r.wrong.map_or("N/A".to_string(), |w| w.to_string());
    let mut line = format!(
        "{:>12} {:>12} {:>5} {:>11.1} {:>8.2} {:>8.2} {:>7}",
        r.bytes, r.count, r.dtype, r.time_us, r.algbw_gbs, r.busbw_gbs, wrong
    );
    if let (Some(e), Some(m), Some(c)) = (r.exchange_us, r.mpi_f32_us, r.memcpy_us) {
        line.push_str(&format!(" {:>11.1} {:>11.1} {:>11.1} {:>9.2}", e, m, c, e / m));
    }
    line
}

/// nccl-tests' closing figure: the mean bus bandwidth over all sizes.
pub fn average_busbw(rows: &[AllreduceRow]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().map(|r| r.busbw_gbs).sum::<f64>() / rows.len() as f64
}
