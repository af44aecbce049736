//! The shipped 8x8 digits read through the MNIST loader, raw and gzipped, and
//! the loader's refusals.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_mpi::data::{load_mnist, Split};

fn digits() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/digits")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn shipped_digits_load_with_every_class() {
    let train = load_mnist(&digits(), Split::Train).unwrap();
    let test = load_mnist(&digits(), Split::Test).unwrap();
    assert_eq!((train.count, test.count), (1438, 359));
    assert_eq!((train.channels, train.height, train.width), (1, 8, 8));
    assert_eq!(train.images.len(), 1438 * 64);
    for split in [&train, &test] {
        let mut seen = [0usize; 10];
        for &l in &split.labels {
            seen[l as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 20), "every digit appears: {seen:?}");
        assert_eq!(*split.images.iter().max().unwrap(), 255);
    }
    train.check_labels(10, "digits").unwrap();
    let e = train.check_labels(5, "digits").unwrap_err().to_string();
    assert!(e.contains("beyond --classes 5"), "{e}");
}

#[test]
fn gzipped_files_read_the_same() {
    let dir = scratch("gz");
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let raw = std::fs::read(digits().join(name)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        std::fs::write(dir.join(format!("{name}.gz")), gz.finish().unwrap()).unwrap();
    }
    let a = load_mnist(&dir, Split::Test).unwrap();
    let b = load_mnist(&digits(), Split::Test).unwrap();
    assert_eq!((a.images, a.labels), (b.images, b.labels));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_missing_and_mismatched_files_are_refused_by_name() {
    let dir = scratch("bad");
    let images = std::fs::read(digits().join("t10k-images-idx3-ubyte")).unwrap();
    let labels = std::fs::read(digits().join("t10k-labels-idx1-ubyte")).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images[..images.len() - 10]).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &labels).unwrap();
    let e = load_mnist(&dir, Split::Test).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"), "{e}");

    std::fs::write(dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), &labels[..labels.len() - 1]).unwrap();
    let e = load_mnist(&dir, Split::Test).unwrap_err().to_string();
    assert!(e.contains("t10k-labels-idx1-ubyte") && e.contains("truncated"), "{e}");

    let e = load_mnist(&dir, Split::Train).unwrap_err().to_string();
    assert!(e.contains("no train-images-idx3-ubyte"), "{e}");
    let e = load_mnist(&dir.join("nowhere"), Split::Train).unwrap_err().to_string();
    assert!(e.contains("no such directory"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
