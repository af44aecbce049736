//! Wire buffers in shared memory, for ranks that share a host.
//!
//! On one host, MPI's messages copy every byte through the kernel (CMA) or a
//! bounce buffer. An MPI-3 shared window lets each rank pack its gradients
//! straight into its own slot, then:
//!
//! 1. barrier: every slot is packed;
//! 2. rank r sums segment r of every slot in f32, in rank order, rounds once,
//!    and writes the result into the result area of its own slot;
//! 3. barrier: every result segment is written;
//! 4. each rank reads segment q of the result from rank q's result area while
//!    unpacking to f32.
//!
//! Every rank reads the same result bits, with no message and no extra copy.
//! Results live apart from the packed inputs: a rank that runs ahead packs
//! its next step's inputs while slower ranks still read this step's results,
//! and the next reduction writes results only after the next step-1 barrier,
//! which no rank passes before it has finished reading.
//! The window is created collectively and freed collectively by `free`, at
//! a point every rank reaches (the clean end of a run); dropped otherwise, it
//! is left to the end of the process.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::rc::Rc;

use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};

use super::control::Control;
use super::segments::segments;
use super::wire::WireElem;

/// A window dropped without `free` is left to the end of the process (exit
/// or MPI_Abort): freeing is collective, and a rank that fails alone must
/// not wait in it for ranks that are still running.
pub struct SharedWindow {
    // Freed by `free` only, while MPI is still initialised.
    comm: ManuallyDrop<SimpleCommunicator>,
    win: ffi::MPI_Win,
    /// Base address of each rank's slot, in rank order.
    bases: Vec<*mut u8>,
    bytes: usize,
    rank: usize,
}

fn check(code: i32, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(code == 0, "{what} failed with MPI error {code}");
    Ok(())
}

impl SharedWindow {
    /// Collective: a window of `bytes` per rank when every rank of the
    /// world shares this host's memory, else None (the caller sends messages).
    pub fn new(control: &Control, bytes: usize) -> anyhow::Result<Option<Rc<SharedWindow>>> {
        let world = control.world();
        let info = world.info();
        if info.size < 2 || info.local_size != info.size {
            return Ok(None);
        }
        let comm = world.comm().split_shared(world.comm().rank());
        anyhow::ensure!(comm.size() as usize == info.size, "shared-memory split disagrees with the world size");
        let rank = comm.rank() as usize;
        let size = comm.size() as usize;
        let mut base: *mut c_void = std::ptr::null_mut();
        // SAFETY: plain MPI calls on a live communicator; out-pointers are valid locals.
        let win = unsafe {
            let mut win: ffi::MPI_Win = std::mem::zeroed();
            check(
                ffi::MPI_Win_allocate_shared(
                    bytes.max(1) as ffi::MPI_Aint,
                    1,
                    ffi::RSMPI_INFO_NULL,
                    comm.as_raw(),
                    &mut base as *mut *mut c_void as *mut c_void,
                    &mut win,
                ),
                "MPI_Win_allocate_shared",
            )?;
            win
        };
        let mut bases = Vec::with_capacity(size);
        for r in 0..size {
            let mut b: *mut c_void = std::ptr::null_mut();
            let mut got: ffi::MPI_Aint = 0;
            let mut unit: i32 = 0;
            // SAFETY: `win` is the window just created; out-pointers are valid locals.
            unsafe {
                check(
                    ffi::MPI_Win_shared_query(
                        win,
                        r as i32,
                        &mut got,
                        &mut unit,
                        &mut b as *mut *mut c_void as *mut c_void,
                    ),
                    "MPI_Win_shared_query",
                )?;
            }
            anyhow::ensure!(got as usize >= bytes, "rank {r}'s shared slot holds {got} bytes, {bytes} asked");
            bases.push(b as *mut u8);
        }
        // Passive-target epoch for the window's whole life; barriers order the accesses.
        // SAFETY: valid window.
        unsafe { check(ffi::MPI_Win_lock_all(0, win), "MPI_Win_lock_all")? };
        Ok(Some(Rc::new(SharedWindow { comm: ManuallyDrop::new(comm), win, bases, bytes, rank })))
    }

    pub fn size(&self) -> usize {
        self.bases.len()
    }

    /// Where rank `r`'s slot starts, as an address (for the watchdog's
    /// lock-free progress counters, read from another thread).
    pub fn slot_address(&self, r: usize) -> usize {
        self.bases[r] as usize
    }

    /// Makes every rank's writes visible to every rank.
    fn sync(&self) {
        // SAFETY: valid window and communicator.
        unsafe {
            ffi::MPI_Win_sync(self.win);
        }
        super::waiting::barrier(&*self.comm);
        // SAFETY: as above.
        unsafe {
            ffi::MPI_Win_sync(self.win);
        }
    }

    fn check_range<T>(&self, offset: usize, len: usize) {
        let end = offset + len * std::mem::size_of::<T>();
        assert!(
            end <= self.bytes && offset.is_multiple_of(std::mem::align_of::<T>()),
            "slot range {offset}..{end} outside {} bytes",
            self.bytes
        );
    }

    /// This rank's slot, `len` elements at byte `offset`. The window's memory
    /// is MPI's, not the struct's, so a shared reference to the window hands
    /// out writable ranges of it.
    ///
    /// # Safety
    /// No other reference to this range may be alive, and no reduction on it
    /// may be under way.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn mine<T>(&self, offset: usize, len: usize) -> &mut [T] {
        self.check_range::<T>(offset, len);
        // SAFETY: in range (checked); the caller holds the range alone.
        unsafe { std::slice::from_raw_parts_mut(self.bases[self.rank].add(offset) as *mut T, len) }
    }

    fn slot<T>(&self, rank: usize, offset: usize, len: usize) -> &[T] {
        self.check_range::<T>(offset, len);
        // SAFETY: in range (checked); between the barriers of `all_reduce_sum`
        // each range is written by one rank only and read by others only after.
        unsafe { std::slice::from_raw_parts(self.bases[rank].add(offset) as *const T, len) }
    }

    /// Sums the `len` elements at byte `offset` of every slot (all ranks call
    /// with the same range) into each rank's result area at byte `result`.
    /// Afterwards segment q of the sum is in rank q's result area: read it with
    /// `read_result`.
    pub fn all_reduce_sum<T: WireElem>(&self, offset: usize, result: usize, len: usize) {
        let n = self.size();
        self.sync();
        let (counts, displs) = segments(len, n);
        let (start, mine) = (displs[self.rank], counts[self.rank]);
        if mine > 0 {
            let srcs: Vec<&[T]> =
                (0..n).map(|q| self.slot::<T>(q, offset + start * std::mem::size_of::<T>(), mine)).collect();
            // SAFETY: my result area is mine alone between the barriers.
            T::sum_into(&srcs, unsafe { self.mine::<T>(result, mine) });
        }
        self.sync();
    }

    /// Collective, at a point every rank reaches: frees the window. The
    /// caller holds the last reference (buckets share one window).
    pub fn free(self: Rc<Self>) -> anyhow::Result<()> {
        let mut window =
            Rc::try_unwrap(self).map_err(|_| anyhow::anyhow!("shared window freed while buckets still use it"))?;
        anyhow::ensure!(!mpi::environment::is_finalized(), "shared window freed after MPI was finalised");
        // SAFETY: valid window and communicator, each freed once (`window` is
        // consumed here and has no Drop of its own).
        unsafe {
            ffi::MPI_Win_unlock_all(window.win);
            ffi::MPI_Win_free(&mut window.win);
            ManuallyDrop::drop(&mut window.comm);
        }
        Ok(())
    }

    /// Elements `from..from + dst.len()` of a reduced range (`result`, `len` as
    /// given to `all_reduce_sum`), converted to f32; returns how many are not finite.
    pub fn read_result<T: WireElem>(&self, result: usize, len: usize, from: usize, dst: &mut [f32]) -> usize {
        let (counts, displs) = segments(len, self.size());
        let mut nonfinite = 0;
        let mut i = from;
        let end = from + dst.len();
        while i < end {
            // The rank whose segment holds element i.
            let q = displs.partition_point(|&d| d <= i) - 1;
            let seg_end = (displs[q] + counts[q]).min(end);
            let src = self.slot::<T>(q, result + (i - displs[q]) * std::mem::size_of::<T>(), seg_end - i);
            nonfinite += T::unpack_counting(src, &mut dst[i - from..seg_end - from]);
            i = seg_end;
        }
        nonfinite
    }
}
