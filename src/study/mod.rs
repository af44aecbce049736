//! The experiments around the trainer: the collective benchmark
//! (`allreduce/`), the speed-up sweep that starts trainings under mpirun
//! (`sweep/`), and the report that turns a sweep's records into tables and
//! figures (`report/`).

pub mod allreduce;
pub mod report;
pub mod sweep;
