//! `--data` opened: the data set of one split, its labels checked against
//! the classifier.

use std::sync::Arc;

use super::folder::ImageFolder;
use super::{load_cifar10, load_mnist, DataSpec, Dataset, Split, Synthetic};

/// One split of `spec`, its labels checked against `classes`; None when the
/// data has no such split (synthetic data, or an image folder without train/
/// and val/ has no test split).
pub fn open(
    spec: &DataSpec,
    split: Split,
    classes: usize,
    seed: u64,
    synthetic_len: usize,
) -> anyhow::Result<Option<Arc<dyn Dataset>>> {
    if split == Split::Test && *spec == DataSpec::Synthetic {
        return Ok(None);
    }
    Ok(Some(match spec {
        DataSpec::Synthetic => Arc::new(Synthetic { len: synthetic_len, classes, seed }),
        DataSpec::Mnist(dir) => {
            let d = load_mnist(dir, split)?;
            d.check_labels(classes, &format!("--data mnist:{}", dir.display()))?;
            Arc::new(d)
        }
        DataSpec::Cifar10(dir) => {
            let d = load_cifar10(dir, split)?;
            d.check_labels(classes, &format!("--data cifar10:{}", dir.display()))?;
            Arc::new(d)
        }
        DataSpec::Folder(dir) => match ImageFolder::open(dir, split, seed)? {
            Some(d) => {
                let source = format!("--data folder:{}", dir.display());
                d.check_classes(classes, &source)?;
                if split == Split::Test {
                    d.check_files(&source)?;
                }
                Arc::new(d)
            }
            None => return Ok(None),
        },
    }))
}
