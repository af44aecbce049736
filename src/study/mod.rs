//! The experiments around the trainer: the collective benchmark
//! (`allreduce/`), the speed-up sweep that starts trainings under mpirun
//! (`sweep/`), the report that turns a sweep's records into tables and
//! figures (`report/`), and the performance model that carries what was
//! measured to other worker counts and interconnects (`predict/`).

pub mod allreduce;
pub mod predict;
pub mod report;
pub mod sweep;
