//! `--data folder:DIR`: one sub-folder per class of JPEG and PNG files, as
//! torchvision's ImageFolder reads them. DIR either holds the class folders
//! (training only) or `train/` and `val/` with the same class folders
//! (ImageNet's layout; `val/` is then the validation set).
//!
//! Only file names are listed at start; each image is decoded when its batch
//! is made, so a rank reads only its own shard. Training images are resized so
//! that the shorter side is 8/7 of the input side (256 for 224), randomly
//! cropped and flipped with a generator keyed by (seed, epoch, index): the same
//! on every run, so `--resume` stays exact. Validation images are centre-cropped.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use super::{Dataset, Split};
use crate::rng::Rng;

pub struct ImageFolder {
    files: Vec<(PathBuf, u32)>,
    pub class_names: Vec<String>,
    seed: u64,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot list the directory: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// The class folders under `root`, sorted by name.
fn class_folders(dir: &Path, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let classes: Vec<PathBuf> = sorted_entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
    anyhow::ensure!(
        !classes.is_empty(),
        "--data folder:{}: no class sub-folders in {} (expected one folder of images per class)",
        dir.display(),
        root.display()
    );
    Ok(classes)
}

fn folder_name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

impl ImageFolder {
    /// Lists the images of one split. `Test` exists only in the train/ + val/
    /// layout; its labels are those of the training folders of the same name
    /// (a validation class the training set lacks is refused).
    pub fn open(dir: &Path, split: Split, seed: u64) -> anyhow::Result<Option<Self>> {
        anyhow::ensure!(dir.is_dir(), "--data folder:{}: no such directory", dir.display());
        let split_layout = dir.join("train").is_dir() && dir.join("val").is_dir();
        let root = match (split, split_layout) {
            (Split::Train, true) => dir.join("train"),
            (Split::Test, true) => dir.join("val"),
            (Split::Train, false) => dir.to_path_buf(),
            (Split::Test, false) => return Ok(None),
        };
        let classes = class_folders(dir, &root)?;
        let class_names: Vec<String> = match split {
            Split::Train => classes.iter().map(|c| folder_name(c)).collect(),
            Split::Test => class_folders(dir, &dir.join("train"))?.iter().map(|c| folder_name(c)).collect(),
        };
        let mut files = vec![];
        for class in &classes {
            let name = folder_name(class);
            let label = class_names.iter().position(|n| *n == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--data folder:{}: val/{name} is a class the training set lacks (train/ has {})",
                    dir.display(),
                    class_names.join(", ")
                )
            })?;
            files.extend(
                sorted_entries(class)?.into_iter().filter(|p| p.is_file() && is_image(p)).map(|p| (p, label as u32)),
            );
        }
        anyhow::ensure!(
            !files.is_empty(),
            "--data folder:{}: no .jpg, .jpeg or .png files in the class folders of {}",
            dir.display(),
            root.display()
        );
        Ok(Some(Self { files, class_names, seed }))
    }

    /// Reads every file's header (format by content, then dimensions), so
    /// that a broken image is named before training rather than after it.
    pub fn check_files(&self, source: &str) -> anyhow::Result<()> {
        for (path, _) in &self.files {
            open_image(path)?
                .into_dimensions()
                .map_err(|e| anyhow::anyhow!("{source}: cannot read {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Refuses more class folders than the classifier has outputs.
    pub fn check_classes(&self, classes: usize, source: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.class_names.len() <= classes,
            "{source}: {} class folders but --classes {classes}; pass --classes {}",
            self.class_names.len(),
            self.class_names.len()
        );
        Ok(())
    }

    /// Decodes image `i`, resizes its shorter side to 8/7 of `size`, crops a
    /// `size` square (at `crop`, or the centre) and writes it as planar RGB in [0, 1].
    fn load(&self, i: usize, size: usize, augment: Option<&mut Rng>, out: &mut [f32]) -> anyhow::Result<u32> {
        let (path, label) = &self.files[i];
        let img = open_image(path)?
            .decode()
            .map_err(|e| anyhow::anyhow!("--data folder: cannot decode {}: {e}", path.display()))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        let short = (size * 8).div_ceil(7) as f64;
        let scale = short / f64::from(w.min(h));
        let (nw, nh) = (
            ((f64::from(w) * scale).round() as u32).max(size as u32),
            ((f64::from(h) * scale).round() as u32).max(size as u32),
        );
        let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
        let (room_x, room_y) = ((nw as usize - size) as u64, (nh as usize - size) as u64);
        let (x0, y0, flip) = match augment {
            Some(rng) => (rng.below(room_x + 1) as usize, rng.below(room_y + 1) as usize, rng.below(2) == 1),
            None => ((room_x / 2) as usize, (room_y / 2) as usize, false),
        };
        let plane = size * size;
        for y in 0..size {
            for x in 0..size {
                let sx = if flip { size - 1 - x } else { x };
                let p = resized.get_pixel((x0 + sx) as u32, (y0 + y) as u32);
                for c in 0..3 {
                    out[c * plane + y * size + x] = f32::from(p[c]) / 255.0;
                }
            }
        }
        Ok(*label)
    }
}

/// An image file opened with its format taken from its content, not its name.
fn open_image(path: &Path) -> anyhow::Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow::anyhow!("--data folder: cannot read {}: {e}", path.display()))
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn channels(&self) -> usize {
        3
    }
    fn sample(&self, i: usize, size: usize, out: &mut [f32]) -> anyhow::Result<u32> {
        self.load(i, size, None, out)
    }
    fn train_sample(&self, i: usize, size: usize, epoch: u64, out: &mut [f32]) -> anyhow::Result<u32> {
        let mut rng = Rng::keyed(self.seed ^ 0xa0c3_0000_0000_0000 ^ epoch, i as u64);
        self.load(i, size, Some(&mut rng), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
        // A horizontal ramp on top of the colour, so that flips and crops show.
        let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([colour[0], colour[1], (x * 255 / w.max(1)) as u8]));
        img.save(path).unwrap();
    }

    fn tiny_set(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("candle-mpi-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (class, colour) in [("cat", [200, 10, 0]), ("dog", [10, 200, 0])] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            write_image(&dir.join(class).join("a.png"), 20, 12, colour);
            write_image(&dir.join(class).join("b.jpg"), 12, 16, colour);
        }
        std::fs::write(dir.join("cat").join("notes.txt"), "not an image").unwrap();
        dir
    }

    #[test]
    fn lists_classes_in_order_and_reads_centre_crops() {
        let dir = tiny_set("list");
        let ds = ImageFolder::open(&dir, Split::Train, 0).unwrap().unwrap();
        assert_eq!(ds.class_names, ["cat", "dog"]);
        assert_eq!(ds.len(), 4, "the .txt file is not an image");
        assert!(ImageFolder::open(&dir, Split::Test, 0).unwrap().is_none(), "no val/ folder: no test split");
        let mut out = vec![0f32; 3 * 8 * 8];
        assert_eq!(ds.sample(2, 8, &mut out).unwrap(), 1);
        // Green class: the green plane is ~200/255 everywhere (PNG is lossless).
        assert!(out[64..128].iter().all(|&g| (g - 200.0 / 255.0).abs() < 0.02), "{:?}", &out[64..72]);
        ds.check_classes(2, "--data").unwrap();
        assert!(ds.check_classes(1, "--data").unwrap_err().to_string().contains("2 class folders but --classes 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn augmentation_is_a_function_of_seed_epoch_and_index() {
        let dir = tiny_set("aug");
        let ds = ImageFolder::open(&dir, Split::Train, 5).unwrap().unwrap();
        let crop = |epoch| {
            let mut out = vec![0f32; 3 * 8 * 8];
            ds.train_sample(0, 8, epoch, &mut out).unwrap();
            out
        };
        assert_eq!(crop(3), crop(3), "same epoch and index: same pixels");
        let distinct: std::collections::HashSet<Vec<u32>> =
            (0..16).map(|e| crop(e).iter().map(|v| v.to_bits()).collect()).collect();
        assert!(distinct.len() > 2, "crops and flips vary over epochs ({} distinct of 16)", distinct.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// train/ {cat, dog} and val/ folders in another order or with a class
    /// of their own: labels go by name, and an unknown class is refused.
    #[test]
    fn validation_classes_are_matched_by_name() {
        let dir = std::env::temp_dir().join(format!("candle-mpi-folder-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for class in ["train/cat", "train/dog", "val/dog"] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            write_image(&dir.join(class).join("a.png"), 10, 10, [0, 0, 0]);
        }
        let val = ImageFolder::open(&dir, Split::Test, 0).unwrap().unwrap();
        let mut out = vec![0f32; 3 * 4 * 4];
        assert_eq!(val.sample(0, 4, &mut out).unwrap(), 1, "val/dog is train/dog's class 1, not class 0");
        std::fs::create_dir_all(dir.join("val/bird")).unwrap();
        write_image(&dir.join("val/bird/b.png"), 10, 10, [0, 0, 0]);
        let e = ImageFolder::open(&dir, Split::Test, 0).err().unwrap().to_string();
        assert!(e.contains("val/bird is a class the training set lacks (train/ has cat, dog)"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files are decoded by content, a broken one is an error naming it
    /// (it was a panic), and the check before training finds it.
    #[test]
    fn broken_images_are_errors_that_name_the_file() {
        let dir = tiny_set("broken");
        // A PNG under a .jpg name decodes: the content decides the format.
        write_image(&dir.join("dog").join("c.jpg"), 9, 9, [1, 2, 3]);
        std::fs::copy(dir.join("dog").join("a.png"), dir.join("dog").join("c.jpg")).unwrap();
        std::fs::write(dir.join("cat").join("z.png"), b"this is not a png at all").unwrap();
        let ds = ImageFolder::open(&dir, Split::Train, 0).unwrap().unwrap();
        let broken = ds.files.iter().position(|(p, _)| p.ends_with("z.png")).unwrap();
        let renamed = ds.files.iter().position(|(p, _)| p.ends_with("c.jpg")).unwrap();
        let mut out = vec![0f32; 3 * 8 * 8];
        assert_eq!(ds.sample(renamed, 8, &mut out).unwrap(), 1);
        let e = ds.sample(broken, 8, &mut out).unwrap_err().to_string();
        assert!(e.contains("z.png"), "{e}");
        let e = ds.check_files("--data folder:x").unwrap_err().to_string();
        assert!(e.contains("--data folder:x") && e.contains("z.png"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_folders_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("candle-mpi-folder-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = |d: &Path| ImageFolder::open(d, Split::Train, 0).err().unwrap().to_string();
        assert!(err(&dir).contains("no such directory"));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(err(&dir).contains("no class sub-folders"));
        std::fs::create_dir_all(dir.join("cat")).unwrap();
        assert!(err(&dir).contains("no .jpg, .jpeg or .png files"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
