//! Snapshots that know whether they are torn.
//!
//! A copy of live RAM races the guest's vCPUs: pages written during the copy may hold a mix of
//! old and new bytes. [`take_checked`] copies everything, then compares each page of the copy
//! with live memory again (copied out again a page at a time, past a compiler fence that keeps
//! the second look a fresh load); pages that differ are copied again, up to a number
//! of attempts. The result says whether the last verification pass found every page unchanged.
//! That is a strong hint, not a proof (a guest can write a page and write it back between two
//! looks); only a paused VM gives a guaranteed image (see `Vm::paused_snapshot`).

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::guest_ram::GuestRam;
use super::{BridgeError, PAGE_SIZE};

/// Default number of copy attempts for a checked snapshot.
pub const DEFAULT_ATTEMPTS: u32 = 4;

/// The hash of the mount's `checksum` files, named in every output that shows a digest.
pub const CHECKSUM_ALGORITHM: &str = "sha256";

/// A hash for digests of guest RAM; both are well known and print what their standard tools
/// print for the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// SHA-256, as `sha256sum` prints it (the `checksum` files of the mount).
    #[default]
    Sha256,
    /// BLAKE3, as `b3sum` prints it: several times faster than SHA-256 for the same strength
    /// (the default of `qemu-bridge snapshot`, where the hash would otherwise take longer than
    /// the copy).
    Blake3,
}

impl HashAlgorithm {
    /// Its name in outputs: `sha256` or `blake3`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => CHECKSUM_ALGORITHM,
            HashAlgorithm::Blake3 => "blake3",
        }
    }

    /// A fresh hasher.
    pub(crate) fn hasher(self) -> Hasher {
        match self {
            HashAlgorithm::Sha256 => Hasher::Sha256(Box::default()),
            HashAlgorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    /// Lower-case hex digest of `data`.
    pub fn hex_digest(self, data: &[u8]) -> String {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finalize_hex()
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HashAlgorithm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sha256" => Ok(HashAlgorithm::Sha256),
            "blake3" => Ok(HashAlgorithm::Blake3),
            other => Err(format!("unknown hash {other:?} (sha256 or blake3)")),
        }
    }
}

/// A running digest of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(Box<Sha256>),
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(data),
            Hasher::Blake3(hasher) => {
                hasher.update(data);
            }
        }
    }

    /// The lower-case hex digest.
    pub fn finalize_hex(self) -> String {
        match self {
            Hasher::Sha256(hasher) => hex(&hasher.finalize()),
            Hasher::Blake3(hasher) => hasher.finalize().to_hex().to_string(),
        }
    }
}

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
        self.summary_line_with(HashAlgorithm::Sha256)
    }

    /// [`summary_line`](Self::summary_line) with the digest of `algorithm`.
    pub fn summary_line_with(&self, algorithm: HashAlgorithm) -> String {
        Summary {
            algorithm,
            digest: algorithm.hex_digest(&self.data),
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
    /// The hash of `digest`.
    pub algorithm: HashAlgorithm,
    /// Lower-case hex digest of the bytes.
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
            "{} {} {} attempts={} torn_pages={} size={}",
            self.algorithm, self.digest, self.verdict, self.attempts, self.torn_pages, self.size
        )
    }
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Bytes per step of [`write_hashed`]: small enough to stay in the caches between the copy,
/// the hash and the write.
const PIPELINE_CHUNK: usize = 512 << 10;

/// Writes all of `mapping` to `file` (sparse: zero pages become holes), unchecked, and returns
/// the digest of exactly the bytes written. Three stages run at once on a chunk each: a thread
/// copies chunks out of live memory (once), another hashes them and this one writes them, so
/// the whole takes about the time of the slowest stage when there are cores for them.
/// `progress` is told the bytes written so far after each chunk.
///
/// # Errors
///
/// As the copy ([`BridgeError::FileShrunk`]), and [`BridgeError::Write`] when writing fails.
pub fn write_hashed(
    mapping: &GuestRam,
    file: &std::fs::File,
    algorithm: HashAlgorithm,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<String, BridgeError> {
    write_hashed_tapped(mapping, file, &[], Some(algorithm), progress, &mut |_, _| {})
        .map(|digest| digest.unwrap_or_default())
}

/// [`write_hashed`], with `prefix` written (and hashed) before the RAM, which follows it in the
/// file, and `tap(offset in the file, bytes)` shown the prefix and then every chunk copied, in
/// order, on the hashing thread (what the file holds at that offset: a record of it can be
/// made from exactly those bytes). With no `algorithm`, no digest is computed.
///
/// # Errors
///
/// As [`write_hashed`].
pub fn write_hashed_tapped(
    mapping: &GuestRam,
    file: &std::fs::File,
    prefix: &[u8],
    algorithm: Option<HashAlgorithm>,
    progress: &(dyn Fn(u64) + Sync),
    tap: &mut (dyn FnMut(u64, &[u8]) + Send),
) -> Result<Option<String>, BridgeError> {
    use std::sync::{mpsc, Arc};
    // a few chunks in flight; the stage that finishes with a chunk last gives its buffer back
    let (to_hasher, to_hash) = mpsc::sync_channel::<Arc<Vec<u8>>>(2);
    let (to_writer, to_write) = mpsc::sync_channel::<Arc<Vec<u8>>>(2);
    let (give_back, returned) = mpsc::channel::<Vec<u8>>();
    let recycle = |chunk: Arc<Vec<u8>>, give_back: &mpsc::Sender<Vec<u8>>| {
        if let Ok(buffer) = Arc::try_unwrap(chunk) {
            let _ = give_back.send(buffer);
        }
    };
    std::thread::scope(|scope| {
        let copier = scope.spawn(move || -> Result<(), BridgeError> {
            let mut offset = 0;
            while offset < mapping.len() {
                let len = PIPELINE_CHUNK.min(mapping.len() - offset);
                let mut buffer = returned.try_recv().unwrap_or_else(|_| vec![0; PIPELINE_CHUNK]);
                buffer.truncate(len);
                mapping.copy_with_threads(offset, &mut buffer, 1)?;
                let chunk = Arc::new(buffer);
                if to_hasher.send(Arc::clone(&chunk)).is_err() || to_writer.send(chunk).is_err() {
                    break; // a later stage failed and says why
                }
                offset += len;
            }
            Ok(())
        });
        let hasher_give_back = give_back.clone();
        let hasher = scope.spawn(move || {
            let mut hasher = algorithm.map(HashAlgorithm::hasher);
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(prefix);
            }
            tap(0, prefix);
            let mut offset = prefix.len() as u64;
            for chunk in to_hash {
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                tap(offset, &chunk);
                offset += chunk.len() as u64;
                recycle(chunk, &hasher_give_back);
            }
            hasher.map(Hasher::finalize_hex)
        });
        let mut output = super::sparse::SparseWriter::at(file, 0);
        let written = (|| {
            output.write(prefix)?;
            for chunk in to_write.iter() {
                output.write(&chunk)?;
                progress(output.position());
                recycle(chunk, &give_back);
            }
            output.finish().map(drop)
        })();
        // a failed write drops the channel, which stops the copier at its next send
        drop(to_write);
        let panicked = |_| BridgeError::Write(std::io::Error::other("a snapshot thread panicked"));
        copier.join().map_err(panicked)??;
        let digest = hasher.join().map_err(panicked)?;
        written.map_err(BridgeError::Write)?;
        Ok(digest)
    })
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

    /// The pipelined write gives the file's exact bytes (holes where the RAM has zero pages)
    /// and the digest of those bytes, in both algorithms; the known BLAKE3 test vector of the
    /// empty input pins the encoding.
    #[test]
    fn written_snapshots_carry_the_digest_of_the_file() {
        let mut bytes = vec![0u8; 3 * PIPELINE_CHUNK + 5 * PAGE_SIZE + 7];
        for (index, byte) in bytes.iter_mut().enumerate().filter(|(index, _)| (index / PAGE_SIZE) % 3 != 1) {
            *byte = (index % 251) as u8 | 1;
        }
        let (_file, mapping) = mapped(&bytes);
        for algorithm in [HashAlgorithm::Sha256, HashAlgorithm::Blake3] {
            let out = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
            let written_so_far = std::sync::atomic::AtomicU64::new(0);
            let progress = |done: u64| written_so_far.store(done, std::sync::atomic::Ordering::Relaxed);
            let digest = write_hashed(&mapping, out.as_file(), algorithm, &progress).unwrap();
            assert_eq!(written_so_far.into_inner(), bytes.len() as u64, "progress reaches the end");
            let written = std::fs::read(out.path()).unwrap();
            assert!(written == bytes, "{algorithm}: other bytes written");
            assert_eq!(digest, algorithm.hex_digest(&written));
            let blocks = std::os::unix::fs::MetadataExt::blocks(&out.as_file().metadata().unwrap()) * 512;
            assert!(blocks < bytes.len() as u64 * 3 / 4, "{algorithm}: zero pages were written: {blocks}");
        }
        assert_eq!(
            HashAlgorithm::Blake3.hex_digest(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!("blake3".parse::<HashAlgorithm>(), Ok(HashAlgorithm::Blake3));
        assert!("md5".parse::<HashAlgorithm>().is_err());
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
    fn hashing_in_pieces_equals_hashing_the_bytes() {
        let data = b"guest ram".repeat(1000);
        for algorithm in [HashAlgorithm::Sha256, HashAlgorithm::Blake3] {
            let mut hasher = algorithm.hasher();
            data.chunks(333).for_each(|piece| hasher.update(piece));
            assert_eq!(hasher.finalize_hex(), algorithm.hex_digest(&data));
        }
        assert_eq!(HashAlgorithm::Sha256.hex_digest(&data), sha256_hex(&data));
        // the empty input's well-known digest
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
