//! Snapshots that know whether they are torn.
//!
//! A copy of live RAM races the guest's vCPUs: pages written during the copy may hold a mix of
//! old and new bytes. [`take_checked`] copies everything, then compares each page of the copy
//! with live memory again (volatile loads); pages that differ are copied again, up to a number
//! of attempts. The result says whether the last verification pass found every page unchanged.
//! That is a strong hint, not a proof (a guest can write a page and write it back between two
//! looks); only a paused VM gives a guaranteed image (see `Vm::paused_snapshot`).

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::guest_ram::GuestRam;
use super::BridgeError;

/// Granularity of the consistency check.
pub const PAGE_SIZE: usize = 4096;

/// Default number of copy attempts for a checked snapshot.
pub const DEFAULT_ATTEMPTS: u32 = 4;

/// The hash used for checksums, named in every output that shows a digest.
pub const CHECKSUM_ALGORITHM: &str = "sha256";

/// Whether a snapshot is known to be free of torn pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The final verification pass found every page equal to live memory.
    Consistent,
    /// Some pages still changed during the last attempt.
    Torn,
    /// The VM was paused for the copy: the image is exact.
    Paused,
    /// Copied once with no verification.
    Unchecked,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Consistent => "consistent",
            Self::Torn => "torn",
            Self::Paused => "paused",
            Self::Unchecked => "unchecked",
        })
    }
}

/// A copy of guest RAM (in file order) and what is known of its consistency.
#[derive(Clone)]
pub struct Snapshot {
    /// The bytes, in RAM-file order.
    pub data: Vec<u8>,
    /// Consistency verdict.
    pub verdict: Verdict,
    /// Copy attempts made (1 = the first copy verified clean).
    pub attempts: u32,
    /// Pages that differed in the last verification pass (0 when consistent).
    pub torn_pages: u64,
    /// Pages copied again over all attempts.
    pub recopied_pages: u64,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("len", &self.data.len())
            .field("verdict", &self.verdict)
            .field("attempts", &self.attempts)
            .field("torn_pages", &self.torn_pages)
            .field("recopied_pages", &self.recopied_pages)
            .finish()
    }
}

impl Snapshot {
    /// Whether the snapshot is known not to be torn.
    pub fn is_consistent(&self) -> bool {
        matches!(self.verdict, Verdict::Consistent | Verdict::Paused)
    }

    /// Lower-case hex SHA-256 of the data: equal to `sha256sum` of the same bytes on disk.
    pub fn checksum(&self) -> String {
        sha256_hex(&self.data)
    }

    /// One line: `sha256 <hex> <verdict> attempts=<n> torn_pages=<n> size=<bytes>`.
    pub fn summary_line(&self) -> String {
        Summary {
            digest: self.checksum(),
            verdict: self.verdict,
            attempts: self.attempts,
            torn_pages: self.torn_pages,
            size: self.data.len() as u64,
        }
        .to_string()
    }
}

/// What a snapshot's one-line summary says, wherever its bytes went (memory or a file); its
/// `Display` is the line `checksum` files and `qemu-bridge snapshot` print:
/// `sha256 <hex> <verdict> attempts=<n> torn_pages=<n> size=<bytes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lower-case hex SHA-256 of the bytes.
    pub digest: String,
    /// Consistency verdict.
    pub verdict: Verdict,
    /// Copy attempts made.
    pub attempts: u32,
    /// Pages that differed in the last verification pass.
    pub torn_pages: u64,
    /// Bytes.
    pub size: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CHECKSUM_ALGORITHM} {} {} attempts={} torn_pages={} size={}",
            self.digest, self.verdict, self.attempts, self.torn_pages, self.size
        )
    }
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex SHA-256 of everything `reader` yields (a file written to disk, say).
///
/// # Errors
///
/// When reading fails.
pub fn sha256_hex_of_reader(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Copies the whole mapping once, unchecked.
pub fn take_plain(mapping: &GuestRam) -> Result<Vec<u8>, BridgeError> {
    let mut data = vec![0u8; mapping.len()];
    mapping.copy_to_zeroed(0, &mut data)?;
    Ok(data)
}

/// Copies the whole mapping, then verifies and re-copies changed pages up to `max_attempts`
/// copies in all (at least 1).
pub fn take_checked(mapping: &GuestRam, max_attempts: u32) -> Result<Snapshot, BridgeError> {
    let mut data = vec![0u8; mapping.len()];
    mapping.copy_to_zeroed(0, &mut data)?;
    let report = verify(mapping, &mut data, max_attempts)?;
    Ok(Snapshot {
        data,
        verdict: report.verdict,
        attempts: report.attempts,
        torn_pages: report.torn_pages,
        recopied_pages: report.recopied_pages,
    })
}

/// What a checked copy found (the bytes went to the caller's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    /// Consistency verdict.
    pub verdict: Verdict,
    /// Copy attempts made.
    pub attempts: u32,
    /// Pages that differed in the last verification pass.
    pub torn_pages: u64,
    /// Pages copied again over all attempts.
    pub recopied_pages: u64,
}

/// [`take_checked`] into a caller's buffer of exactly the mapping's length: no allocation, so a
/// caller taking snapshots in a loop (a visualizer at 60 Hz) pays no page faults for new memory.
///
/// # Errors
///
/// [`BridgeError::BufferLength`] when `data` is not the mapping's length,
/// [`BridgeError::FileShrunk`] when the file was truncated under the mapping.
pub fn check_into(
    mapping: &GuestRam,
    data: &mut [u8],
    max_attempts: u32,
) -> Result<CheckReport, BridgeError> {
    if data.len() != mapping.len() {
        return Err(BridgeError::BufferLength { expected: mapping.len(), actual: data.len() });
    }
    mapping.copy_to(0, data)?;
    verify(mapping, data, max_attempts)
}

/// The verification half of [`check_into`]: `data` holds a first copy of the whole mapping.
fn verify(mapping: &GuestRam, data: &mut [u8], max_attempts: u32) -> Result<CheckReport, BridgeError> {
    let max_attempts = max_attempts.max(1);
    let mut recopied_pages = 0u64;
    let mut attempts = 1;
    loop {
        let changed = mapping.changed_pages(data, PAGE_SIZE)?;
        if changed.is_empty() {
            return Ok(CheckReport { verdict: Verdict::Consistent, attempts, torn_pages: 0, recopied_pages });
        }
        if attempts >= max_attempts {
            return Ok(CheckReport {
                verdict: Verdict::Torn,
                attempts,
                torn_pages: changed.len() as u64,
                recopied_pages,
            });
        }
        for &page in &changed {
            let start = page * PAGE_SIZE;
            let end = (start + PAGE_SIZE).min(data.len());
            mapping.copy_to(start, &mut data[start..end])?;
        }
        recopied_pages += changed.len() as u64;
        attempts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapped(bytes: &[u8]) -> (tempfile::NamedTempFile, GuestRam) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        let mapping = GuestRam::from(super::super::mapping::Mapping::open(file.path()).unwrap());
        (file, mapping)
    }

    #[test]
    fn a_quiet_file_is_consistent_on_the_first_attempt() {
        let bytes: Vec<u8> = (0..5 * PAGE_SIZE + 10).map(|i| i as u8).collect();
        let (_file, mapping) = mapped(&bytes);
        let snapshot = take_checked(&mapping, 3).unwrap();
        assert_eq!(snapshot.data, bytes);
        assert_eq!((snapshot.verdict, snapshot.attempts, snapshot.torn_pages), (Verdict::Consistent, 1, 0));
        assert_eq!(snapshot.checksum(), sha256_hex(&bytes));
        assert_eq!(
            snapshot.summary_line(),
            format!("sha256 {} consistent attempts=1 torn_pages=0 size={}", sha256_hex(&bytes), bytes.len())
        );
    }

    #[test]
    fn a_buffer_of_the_wrong_length_is_a_length_error() {
        let (_file, mapping) = mapped(&[1u8; 100]);
        let mut short = vec![0u8; 99];
        assert!(matches!(
            check_into(&mapping, &mut short, 2),
            Err(BridgeError::BufferLength { expected: 100, actual: 99 })
        ));
    }

    #[test]
    fn hashing_a_reader_equals_hashing_the_bytes() {
        let data = b"guest ram".repeat(1000);
        assert_eq!(sha256_hex_of_reader(&data[..]).unwrap(), sha256_hex(&data));
        // the empty input's well-known digest
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
