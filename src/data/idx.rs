//! IDX files (MNIST's format), raw or gzipped: a magic number giving the
//! element type and the number of dimensions, the dimensions as big-endian
//! u32, then the elements. Only unsigned bytes (type 0x08) are read: images
//! and labels of MNIST-style data sets are stored that way.

use std::io::Read;
use std::path::Path;

/// An n-dimensional array of bytes read from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file; gzip is recognised by its magic bytes, whatever the name.
pub fn read_idx(path: &Path) -> anyhow::Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("{}: broken gzip stream: {e}", path.display()))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses IDX bytes; errors say what is wrong with them.
pub fn parse_idx(bytes: &[u8]) -> anyhow::Result<IdxArray> {
    anyhow::ensure!(bytes.len() >= 4, "not an IDX file: {} bytes, shorter than the 4-byte magic number", bytes.len());
    anyhow::ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "not an IDX file: magic number starts {:02x} {:02x}, expected 00 00",
        bytes[0],
        bytes[1]
    );
    anyhow::ensure!(
        bytes[2] == 0x08,
        "IDX element type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
        bytes[2]
    );
    let ndims = bytes[3] as usize;
    anyhow::ensure!(ndims >= 1, "IDX file declares 0 dimensions");
    let header = 4 + 4 * ndims;
    anyhow::ensure!(
        bytes.len() >= header,
        "truncated IDX file: {} bytes, the header of {ndims} dimensions needs {header}",
        bytes.len()
    );
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow::anyhow!("IDX dimensions {dims:?} overflow"))?;
    let found = bytes.len() - header;
    anyhow::ensure!(
        found == expected,
        "{} IDX file: dimensions {dims:?} need {expected} bytes of data, found {found}",
        if found < expected { "truncated" } else { "oversized" }
    );
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_refuses_with_reasons() {
        let a = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        let e = parse_idx(&idx(&[2, 3], &[1, 2, 3])).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("need 6 bytes") && e.contains("found 3"), "{e}");
        let e = parse_idx(&idx(&[2], &[1, 2, 3])).unwrap_err().to_string();
        assert!(e.contains("oversized"), "{e}");
        let e = parse_idx(b"\x1f\x8b\x08\x00").unwrap_err().to_string();
        assert!(e.contains("not an IDX file"), "{e}");
        let mut floats = idx(&[1], &[0, 0, 0, 0]);
        floats[2] = 0x0d;
        assert!(parse_idx(&floats).unwrap_err().to_string().contains("0x0d"));
        assert!(parse_idx(&[0, 0, 8, 2, 0, 0]).unwrap_err().to_string().contains("header"));
    }
}
