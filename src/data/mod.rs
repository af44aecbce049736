//! Data sets. Today: MNIST-layout directories of IDX files (MNIST itself, and
//! the 8x8 UCI digits the tests ship under tests/data/digits).

pub mod idx;

use std::path::Path;

use self::idx::read_idx;

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
            anyhow::bail!("{source}: sample {i} has label {l}, beyond --classes {classes} (labels must be 0..{})", classes - 1);
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
    anyhow::ensure!(images.dims.len() == 3, "{}: images must have 3 dimensions (N, H, W), found {:?}", images_path.display(), images.dims);
    anyhow::ensure!(labels.dims.len() == 1, "{}: labels must have 1 dimension, found {:?}", labels_path.display(), labels.dims);
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
