//! Plain-text tables for the terminal, rendered from the machine records.

use crate::models::{ModelKind, ModelSummary};

/// torchvision's published multiply-adds per image at 224 pixels and 1000
/// classes, in billions, for comparison with our count.
pub fn torchvision_gmacs(kind: ModelKind) -> Option<f64> {
    match kind {
        ModelKind::Alexnet => Some(0.714),
        ModelKind::Vgg16 => Some(15.47),
        ModelKind::Resnet50 => Some(4.089),
        ModelKind::Googlenet => Some(1.498),
        ModelKind::Small => None,
    }
}

/// Thousands separated by commas, as parameter counts are usually printed.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table `candle-mpi models` prints.
pub fn models_table(rows: &[ModelSummary]) -> String {
    let mut out = format!(
        "{:<10} {:>13} {:>11} {:>7} {:>8} {:>12} {:>16}\n",
        "model", "parameters", "params MiB", "input", "classes", "GMACs/image", "torchvision@224"
    );
    for r in rows {
        let reference = match (torchvision_gmacs(r.model), r.image_size, r.classes) {
            (Some(g), 224, 1000) => format!("{g:.3}"),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<10} {:>13} {:>11.1} {:>7} {:>8} {:>12.3} {:>16}\n",
            r.model.name(),
            thousands(r.parameters),
            r.param_mib,
            r.image_size,
            r.classes,
            r.gmacs_per_image,
            reference
        ));
    }
    out.push_str("GMACs: billions of multiply-adds per image in convolutions and linear layers (1 MAC = 2 FLOPs).\n");
    out
}

/// A duration for people: "850 us", "12.3 ms", "1.52 s".
pub fn duration(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.0} us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_right_unit() {
        assert_eq!(duration(0.000_85), "850 us");
        assert_eq!(duration(0.012_34), "12.3 ms");
        assert_eq!(duration(1.523), "1.52 s");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(61_100_840), "61,100,840");
    }
}
