//! Stands in for `nccl.rs` in a build without the `cuda` feature: a type
//! that cannot be made, so a rank of such a build never has NCCL and every
//! call site reads the same in both builds.

use super::wire::{Reduce, WireBuf};

/// NCCL, absent from this build: no value of it exists.
pub enum Nccl {}

impl Reduce for Nccl {
    fn all_reduce_sum(&self, _buf: WireBuf<'_>) -> anyhow::Result<()> {
        match *self {}
    }
}
