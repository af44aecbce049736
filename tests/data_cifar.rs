//! The CIFAR-10 binary reader on files written here in that format (the real
//! set is 163 MB and is not shipped), and `train` reading them end to end.

use std::path::PathBuf;
use std::process::Command;

use candle_mpi::data::{load_cifar10, Dataset, Split};

const RECORD: usize = 1 + 3 * 32 * 32;

/// A record whose label is `label` and whose pixels encode (label, plane).
fn record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    for plane in 0..3u8 {
        r.extend(std::iter::repeat_n(label * 20 + plane, 32 * 32));
    }
    r
}

fn cifar_dir(tag: &str, per_file: usize) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-cifar-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in names.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file).flat_map(|i| record(((i + f) % 10) as u8)).collect();
        std::fs::write(d.join(name), bytes).unwrap();
    }
    d
}

#[test]
fn reads_records_as_channel_planes() {
    let d = cifar_dir("read", 7);
    let train = load_cifar10(&d, Split::Train).unwrap();
    let test = load_cifar10(&d, Split::Test).unwrap();
    assert_eq!((train.count, test.count), (35, 7));
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    // Sample 8 is file 2's second record: label (1 + 1) % 10 = 2.
    let mut px = vec![0f32; 3 * 32 * 32];
    assert_eq!(train.sample(8, 32, &mut px).unwrap(), 2);
    assert_eq!(px[0], 40.0 / 255.0, "red plane first");
    assert_eq!(px[32 * 32], 41.0 / 255.0, "then green");
    assert_eq!(px[2 * 32 * 32], 42.0 / 255.0, "then blue");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn truncated_and_missing_files_are_named() {
    let d = cifar_dir("bad", 3);
    let bytes = std::fs::read(d.join("test_batch.bin")).unwrap();
    std::fs::write(d.join("test_batch.bin"), &bytes[..bytes.len() - 5]).unwrap();
    let e = load_cifar10(&d, Split::Test).unwrap_err().to_string();
    assert!(e.contains("test_batch.bin") && e.contains(&format!("{RECORD}-byte")), "{e}");
    std::fs::remove_file(d.join("data_batch_3.bin")).unwrap();
    let e = load_cifar10(&d, Split::Train).unwrap_err().to_string();
    assert!(e.contains("data_batch_3.bin"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn train_reads_cifar_end_to_end() {
    let d = cifar_dir("train", 8);
    let spec = format!("cifar10:{}", d.display());
    let o = Command::new(env!("CARGO_BIN_EXE_candle-mpi"))
        .args(["train", "--model", "small", "--data", &spec, "--image-size", "16", "--batch-size", "8", "--steps", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("validation top-1"));
    std::fs::remove_dir_all(&d).unwrap();
}
