//! What was measured, and how it is kept: one row per step and rank
//! (`steps.rs`), the statistics they reduce to (`stats.rs`), a run's summary
//! (`summary.rs`), a sweep's run records and machine (`sweep.rs`), figures
//! written for people (`human.rs`), and files written whole or not at all
//! (`files.rs`). Machine-readable records come first; tables and plots are
//! rendered from them.

pub mod files;
pub mod human;
pub mod stats;
pub mod steps;
pub mod summary;
pub mod sweep;

pub use self::steps::CSV_HEADER;
