//! Data sets: `synthetic` (generated from the seed and each sample's global
//! index, so every world size sees the same data), MNIST-layout directories
//! of IDX files (MNIST itself, and the 8x8 UCI digits under tests/data/digits),
//! CIFAR-10's binary batches, and folders of JPEG/PNG images (`folder.rs`);
//! `--data` opened as a data set (`source.rs`), which samples each rank reads
//! (`sampler.rs`), and the thread that makes batches ahead of the model
//! (`loader.rs`).

pub mod folder;
pub mod idx;
pub mod loader;
pub mod sampler;
pub mod source;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use self::idx::read_idx;
use crate::rng::Rng;

/// What `--data` names.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    Synthetic,
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Folder(PathBuf),
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Synthetic => write!(f, "synthetic"),
            DataSpec::Mnist(d) => write!(f, "mnist:{}", d.display()),
            DataSpec::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DataSpec::Folder(d) => write!(f, "folder:{}", d.display()),
        }
    }
}

impl std::str::FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "synthetic" => Ok(DataSpec::Synthetic),
            Some(("mnist", dir)) if !dir.is_empty() => Ok(DataSpec::Mnist(PathBuf::from(dir))),
            Some(("cifar10", dir)) if !dir.is_empty() => Ok(DataSpec::Cifar10(PathBuf::from(dir))),
            Some(("folder", dir)) if !dir.is_empty() => Ok(DataSpec::Folder(PathBuf::from(dir))),
            _ => Err(format!("'{s}' is not a data source: use synthetic, mnist:DIR, cifar10:DIR or folder:DIR")),
        }
    }
}

/// Samples the trainer can read: images of `channels` x `size` x `size` in
/// [0, 1] (or standard normal for synthetic data) and a class label.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn channels(&self) -> usize;
    /// Writes sample `i` into `out` (channels * size * size values) and
    /// returns its label, or an error naming what could not be read.
    fn sample(&self, i: usize, size: usize, out: &mut [f32]) -> anyhow::Result<u32>;
    /// Sample `i` as training sees it in `epoch`: augmented where the data set
    /// augments (a pure function of seed, epoch and index), else as `sample`.
    fn train_sample(&self, i: usize, size: usize, _epoch: u64, out: &mut [f32]) -> anyhow::Result<u32> {
        self.sample(i, size, out)
    }
}

/// Random images and labels, a pure function of (seed, index).
pub struct Synthetic {
    pub len: usize,
    pub classes: usize,
    pub seed: u64,
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }
    fn channels(&self) -> usize {
        3
    }
    fn sample(&self, i: usize, _size: usize, out: &mut [f32]) -> anyhow::Result<u32> {
        let mut rng = Rng::keyed(self.seed, 0xda7a_0000_0000 ^ i as u64);
        for v in out.iter_mut() {
            *v = rng.normal() as f32;
        }
        Ok(rng.below(self.classes as u64) as u32)
    }
}

impl Dataset for LabelledImages {
    fn len(&self) -> usize {
        self.count
    }
    fn channels(&self) -> usize {
        self.channels
    }
    /// Pixels / 255, resized by nearest neighbour when `size` differs.
    fn sample(&self, i: usize, size: usize, out: &mut [f32]) -> anyhow::Result<u32> {
        let (c, h, w) = (self.channels, self.height, self.width);
        let img = &self.images[i * c * h * w..(i + 1) * c * h * w];
        for ch in 0..c {
            for y in 0..size {
                for x in 0..size {
                    let (sy, sx) = (y * h / size, x * w / size);
                    out[(ch * size + y) * size + x] = img[(ch * h + sy) * w + sx] as f32 / 255.0;
                }
            }
        }
        Ok(self.labels[i] as u32)
    }
}

/// Samples `indices` of `ds` stacked on the host: pixels (N, C, size, size)
/// and labels; as training sees them in `epoch` when it is given.
pub fn stack(
    ds: &dyn Dataset,
    indices: &[usize],
    size: usize,
    epoch: Option<u64>,
) -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
    let per = ds.channels() * size * size;
    let mut pixels = vec![0f32; indices.len() * per];
    let labels = indices
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let out = &mut pixels[k * per..(k + 1) * per];
            match epoch {
                Some(e) => ds.train_sample(i, size, e, out),
                None => ds.sample(i, size, out),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((pixels, labels))
}

/// Samples `indices` of `ds` as an (N, C, size, size) tensor and labels on `device`.
pub fn batch(ds: &dyn Dataset, indices: &[usize], size: usize, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let (pixels, labels) = stack(ds, indices, size, None)?;
    Ok(to_tensors(pixels, labels, ds.channels(), size, device)?)
}

/// Host pixels and labels as tensors on `device`.
pub fn to_tensors(
    pixels: Vec<f32>,
    labels: Vec<u32>,
    channels: usize,
    size: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = labels.len();
    let x = Tensor::from_vec(pixels, (n, channels, size, size), &Device::Cpu)?.to_device(device)?;
    let y = Tensor::from_vec(labels, n, &Device::Cpu)?.to_device(device)?;
    Ok((x, y))
}

/// Images (N, C, H, W) as bytes and their labels.
#[derive(Clone, Debug)]
pub struct LabelledImages {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub count: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl LabelledImages {
    /// Refuses labels the classifier cannot output, naming the first one.
    pub fn check_labels(&self, classes: usize, source: &str) -> anyhow::Result<()> {
        if let Some((i, l)) = self.labels.iter().enumerate().find(|(_, l)| **l as usize >= classes) {
            anyhow::bail!(
                "{source}: sample {i} has label {l}, beyond --classes {classes} (labels must be 0..{})",
                classes - 1
            );
        }
        Ok(())
    }
}

/// Which half of an MNIST-layout directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Finds `stem` in `dir` as it is, or gzipped (`stem.gz`).
fn find(dir: &Path, stem: &str) -> anyhow::Result<std::path::PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("{}: no {stem} (or {stem}.gz) in this directory", dir.display())
}

/// Reads one split of an MNIST-layout directory (`train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-*`), raw or gzipped.
pub fn load_mnist(dir: &Path, split: Split) -> anyhow::Result<LabelledImages> {
    anyhow::ensure!(dir.is_dir(), "--data mnist:{}: no such directory", dir.display());
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    anyhow::ensure!(
        images.dims.len() == 3,
        "{}: images must have 3 dimensions (N, H, W), found {:?}",
        images_path.display(),
        images.dims
    );
    anyhow::ensure!(
        images.dims[1] >= 1 && images.dims[2] >= 1,
        "{}: images of {}x{} pixels; an image needs at least one",
        images_path.display(),
        images.dims[1],
        images.dims[2]
    );
    anyhow::ensure!(
        labels.dims.len() == 1,
        "{}: labels must have 1 dimension, found {:?}",
        labels_path.display(),
        labels.dims
    );
    anyhow::ensure!(
        images.dims[0] == labels.dims[0],
        "{} holds {} images but {} holds {} labels",
        images_path.display(),
        images.dims[0],
        labels_path.display(),
        labels.dims[0]
    );
    Ok(LabelledImages {
        count: images.dims[0],
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        images: images.data,
        labels: labels.data,
    })
}

/// Bytes of one CIFAR-10 record: the label, then 32x32 red, green and blue planes.
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Reads one split of the CIFAR-10 binary version (`data_batch_1.bin` ..
/// `data_batch_5.bin` for training, `test_batch.bin` for testing).
pub fn load_cifar10(dir: &Path, split: Split) -> anyhow::Result<LabelledImages> {
    anyhow::ensure!(dir.is_dir(), "--data cifar10:{}: no such directory", dir.display());
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("--data cifar10:{}: cannot read {name}: {e}", dir.display()))?;
        anyhow::ensure!(
            !bytes.is_empty() && bytes.len() % CIFAR_RECORD == 0,
            "{}: {} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records (truncated?)",
            path.display(),
            bytes.len()
        );
        for record in bytes.chunks_exact(CIFAR_RECORD) {
            labels.push(record[0]);
            images.extend_from_slice(&record[1..]);
        }
    }
    Ok(LabelledImages { count: labels.len(), channels: 3, height: 32, width: 32, images, labels })
}
