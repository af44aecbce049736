//! `--threads` holds a process to N compute threads, and the default shares the
//! host's cores among the processes of the job on it. (Its own test binary: the
//! rayon pool is per process and can be configured once.)

use candle_core::{DType, Device, Tensor};
use candle_mpi::host::threads;

/// Threads of this process, from the kernel.
fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn threads_configure_rayon_and_candle_and_the_default_divides_cores() {
    // The default for 2 local processes is half the cores (at least 1).
    std::env::set_var("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
    assert_eq!(threads::local_processes(), 2);
    assert_eq!(threads::default_threads(), (threads::host_cores() / 2).min(threads::available_cores()).max(1));
    assert!(threads::host_cores() >= threads::available_cores());
    std::env::remove_var("OMPI_COMM_WORLD_LOCAL_SIZE");

    let before = os_threads();
    assert_eq!(threads::configure(Some(1)).unwrap(), 1);
    assert_eq!(rayon::current_num_threads(), 1);
    assert_eq!(candle_core::utils::get_num_threads(), 1);
    // Real work: a convolution and a matmul must not start more threads than asked.
    let x = Tensor::randn(0f32, 1f32, (4, 16, 32, 32), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1f32, (32, 16, 3, 3), &Device::Cpu).unwrap();
    let y = x.conv2d(&w, 1, 1, 1, 1).unwrap();
    let m = y.flatten_from(1).unwrap();
    let _ = m.matmul(&m.t().unwrap()).unwrap().to_dtype(DType::F64).unwrap();
    // The 1-thread pool adds at most its one worker.
    assert!(os_threads() <= before + 1, "threads went from {before} to {}", os_threads());
    // Asking again for another count is refused rather than silently ignored.
    assert!(threads::configure(Some(2)).is_err());
}
