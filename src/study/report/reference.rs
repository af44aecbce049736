//! Published figures a report can be drawn against.

/// Theano-MPI on 8 K80s with NCCL (fp16 branch), seconds per 5120 images as
/// training + communication at 1 / 2 / 4 / 8 GPUs (shared/design.md).
pub const THEANO_MPI_K80: [(&str, [(f64, f64); 4]); 5] = [
    ("AlexNet b128", [(20.50, 0.0), (10.35, 0.78), (5.13, 0.54), (2.63, 0.61)]),
    ("GoogLeNet b32", [(63.89, 0.0), (31.40, 1.00), (15.51, 0.71), (7.69, 0.80)]),
    ("VGG16 b16", [(358.29, 0.0), (176.08, 13.90), (90.44, 9.28), (55.12, 12.59)]),
    ("VGG16 b32", [(343.37, 0.0), (169.12, 7.14), (86.97, 4.80), (43.29, 5.41)]),
    ("ResNet50 b64", [(163.15, 0.0), (80.09, 0.81), (40.25, 0.56), (20.12, 0.56)]),
];

/// The reference's speed-ups at 1, 2, 4, 8 GPUs.
pub fn reference_speedups() -> Vec<(&'static str, [f64; 4])> {
    THEANO_MPI_K80
        .iter()
        .map(|(name, t)| {
            let t1 = t[0].0 + t[0].1;
            (*name, [t1 / (t[0].0 + t[0].1), t1 / (t[1].0 + t[1].1), t1 / (t[2].0 + t[2].1), t1 / (t[3].0 + t[3].1)])
        })
        .collect()
}
