//! Guest RAM: the read-only mapping, the guest-physical layout and snapshots.

// the parts are the crate's own (the parsers public to the fuzz targets only); what a user needs
// of them is re-exported below
// the mount's `physical` and `core` files, and the view's live pictures: a library built
// without them leaves parts of these unused
#[cfg_attr(not(all(feature = "mount", feature = "view")), allow(dead_code))]
pub(crate) mod dump;
mod guest_ram;
crate::internal_mod!(incremental);
crate::internal_mod!(layout);
// The one module exempt from the crate's deny: the mapping, the copies out of it and the SIGBUS
// guard.
#[allow(unsafe_code)]
mod mapping;
crate::internal_mod!(mtree);
#[cfg_attr(not(all(feature = "mount", feature = "view")), allow(dead_code))]
pub(crate) mod picture;
pub(crate) mod snapshot;
pub(crate) mod soft_dirty;
pub(crate) mod sparse;
pub(crate) mod tracker;

use std::path::{Path, PathBuf};

use crate::name::{NameError, VmName};

pub use guest_ram::GuestRam;
pub use incremental::{record_path, IncrementalError, SnapshotBuffer};
pub use layout::{GuestLayout, LayoutSource, Machine, Region};
pub use layout::{LayoutPiece, Pieces};
pub use mapping::{is_hugetlbfs, Mapping, ReadMethod};
pub use picture::{classify, hilbert_point, page_classes, PageClass};
pub use snapshot::{
    sha256_hex, CheckReport, HashAlgorithm, Snapshot, Summary, Verdict, CHECKSUM_ALGORITHM, DEFAULT_ATTEMPTS,
};
pub use soft_dirty::{host_has_soft_dirty, Generation, SoftDirty, SoftDirtyError, Unavailable};
pub use tracker::{soft_dirty_for, ChangeSet, Changes, Fingerprints, TrackingMethod};

/// Bytes per page wherever this crate counts pages (tmpfs and memfd pages, picture pixels,
/// snapshot comparisons, fingerprints, guest page tables): 4 KiB. hugetlbfs maps bigger pages
/// ([`Mapping::page_size`]); its files are still counted in 4 KiB pages.
pub const PAGE_SIZE: usize = 4096;

/// Where [`SharedMemoryBridge::new`] looks for a VM's RAM file.
pub const SHM_DIR: &str = "/dev/shm";

/// Prefix of RAM files created by `qemu-bridge launch`.
pub const RAM_FILE_PREFIX: &str = "qemu_ram_";

/// `<dir>/qemu_ram_<name>`: where `launch` puts a VM's RAM file and where
/// [`SharedMemoryBridge::new`] looks for it (with `dir` = [`SHM_DIR`]).
pub fn ram_file_path(dir: &Path, name: &VmName) -> PathBuf {
    dir.join(format!("{RAM_FILE_PREFIX}{name}"))
}

/// Where a VM's RAM lives, and so how qemu-bridge reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RamKind {
    /// A shared file on tmpfs (`/dev/shm`) or another file system: mapped, zero-copy.
    File,
    /// A shared file on hugetlbfs: read with `pread` (a copy) so that untouched huge pages are
    /// never allocated.
    Hugetlbfs,
    /// A memfd (`memory-backend-memfd`, as libvirt gives guests with shared memory): mapped
    /// through QEMU's descriptor, zero-copy.
    Memfd,
    /// Private to the QEMU process (no shared backend): copied with `process_vm_readv`.
    Private,
}

impl RamKind {
    /// Whether reads are served straight from a mapping of the guest's RAM.
    pub fn zero_copy(self) -> bool {
        matches!(self, RamKind::File | RamKind::Memfd)
    }
}

impl std::fmt::Display for RamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RamKind::File => "file",
            RamKind::Hugetlbfs => "hugetlbfs",
            RamKind::Memfd => "memfd",
            RamKind::Private => "private",
        })
    }
}

/// Errors of the RAM layer.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The RAM file does not exist.
    #[error("RAM file not found: {0}")]
    FileNotFound(String),
    /// The RAM file exists but may not be opened for reading.
    #[error("permission denied opening the RAM file")]
    PermissionDenied,
    /// Mapping the RAM file (`mmap`) failed.
    #[error("cannot map the RAM file")]
    MmapFailed(#[source] std::io::Error),
    /// Another system call on the RAM file failed: opening it, `fstat`, `fstatfs`, finding its
    /// holes (`mincore`, `lseek`), `pread`; or a copy thread died.
    #[error("cannot {what} the RAM file")]
    Io {
        /// What could not be done, as it reads before "the RAM file": "open", "stat", "read"...
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The range is not guest RAM: past the end, in a hole, or its end overflows.
    #[error("invalid address {addr:#x} (+{len:#x} bytes): not inside guest RAM of {max:#x} bytes")]
    InvalidAddress {
        /// First address of the range.
        addr: u64,
        /// Length of the range.
        len: usize,
        /// Size of guest RAM in bytes.
        max: usize,
    },
    /// The VM id is not a valid VM name (see [`VmName`]).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A caller's buffer does not have the length the operation needs.
    #[error("buffer of {actual} bytes given where {expected} bytes are needed")]
    BufferLength {
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The path is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// The RAM file shrank under the mapping (a new QEMU reused its path); reading the lost
    /// pages would raise SIGBUS.
    #[error("RAM file shrank under the mapping: mapped {mapped} bytes, file now {current} bytes")]
    FileShrunk {
        /// Bytes mapped.
        mapped: usize,
        /// The file's current size.
        current: u64,
    },
    /// The RAM is private to the QEMU process: it can be copied, not viewed in place.
    #[error(
        "the VM's RAM is private to its QEMU process: it can be copied (read_into), not viewed in place"
    )]
    NotMapped,
    /// Reading the QEMU process's memory failed (it exited, or this user may not trace it).
    #[error("cannot read the QEMU process's memory")]
    ProcessMemory(#[source] std::io::Error),
    /// Writing RAM to a file failed.
    #[error("cannot write RAM to the output file")]
    Write(#[source] std::io::Error),
    /// A layout that does not fit the file was given.
    #[error("layout reaches byte {layout} but the RAM file has {file}")]
    LayoutMismatch {
        /// Bytes the layout covers.
        layout: u64,
        /// Bytes in the file.
        file: usize,
    },
}

impl BridgeError {
    /// `map_err` for a failed system call on the RAM file other than `mmap`: what the
    /// [`BridgeError::Io`] message says could not be done to it.
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

/// Read-only, zero-copy access to one VM's RAM file.
///
/// # Examples
///
/// ```no_run
/// use qemu_bridge::SharedMemoryBridge;
///
/// // RAM of a VM started by `qemu-bridge launch demo`: /dev/shm/qemu_ram_demo
/// let bridge = SharedMemoryBridge::new("demo")?;
/// let mut boot_sector = [0u8; 512];
/// bridge.read_into(0x7c00, &mut boot_sector)?;
/// println!("{} bytes of RAM, boot signature {:02x?}", bridge.size(), &boot_sector[510..]);
/// # Ok::<(), qemu_bridge::BridgeError>(())
/// ```
#[derive(Debug)]
pub struct SharedMemoryBridge {
    vm_id: String,
    mapping: GuestRam,
    path: PathBuf,
    layout: GuestLayout,
}

impl SharedMemoryBridge {
    /// Opens `/dev/shm/qemu_ram_{vm_id}` read-only, with guest addresses equal to file offsets.
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidName`] for an id that is not a [`VmName`],
    /// [`BridgeError::FileNotFound`] (with the path), [`BridgeError::PermissionDenied`],
    /// [`BridgeError::Io`] and [`BridgeError::MmapFailed`] (whose causes name the path) as the
    /// open, the look at the file and the map go.
    pub fn new(vm_id: &str) -> Result<Self, BridgeError> {
        let name = VmName::new(vm_id)?;
        Self::open(vm_id, &ram_file_path(Path::new(SHM_DIR), &name))
    }

    /// Opens any RAM file read-only, with guest addresses equal to file offsets.
    ///
    /// # Errors
    ///
    /// As [`SharedMemoryBridge::new`].
    pub fn open(vm_id: &str, path: &Path) -> Result<Self, BridgeError> {
        Ok(Self::of_parts(vm_id, vec![Mapping::open(path)?], path))
    }

    /// Maps an already open RAM file read-only, with guest addresses equal to file offsets;
    /// `path` is what it is called in messages. The caller chose and checked the file (see
    /// `Vm::open_bridge`, which maps exactly the descriptor it verified).
    ///
    /// # Errors
    ///
    /// [`BridgeError::NotAFile`], [`BridgeError::Io`] when the file cannot be examined,
    /// [`BridgeError::MmapFailed`].
    pub fn from_file(vm_id: &str, file: std::fs::File, path: &Path) -> Result<Self, BridgeError> {
        Ok(Self::of_parts(vm_id, vec![Mapping::from_file(file, path)?], path))
    }

    /// Private guest RAM: `len` bytes at `address` in QEMU process `pid`, read with
    /// `process_vm_readv` (copies only: [`read_physical`](Self::read_physical) fails with
    /// [`BridgeError::NotMapped`]). `path` is what it is called in messages.
    ///
    /// # Errors
    ///
    /// [`BridgeError::ProcessMemory`] when this user may not read that process's memory.
    pub fn of_process(
        vm_id: &str,
        pid: u32,
        address: usize,
        len: usize,
        path: &Path,
    ) -> Result<Self, BridgeError> {
        Ok(Self::of_parts(vm_id, vec![Mapping::of_process(pid, address, len, path)?], path))
    }

    /// RAM over several backends (NUMA nodes, DIMMs), one after the other as [`GuestRam`]
    /// orders them; `path` names the first. Guest addresses equal offsets until a layout is set.
    pub fn of_parts(vm_id: &str, parts: Vec<Mapping>, path: &Path) -> Self {
        let mapping = GuestRam::new(parts);
        let layout = GuestLayout::identity(mapping.len() as u64);
        Self { vm_id: vm_id.to_string(), mapping, path: path.to_path_buf(), layout }
    }

    /// Replaces the guest-physical layout (e.g. from QMP, see `Vm::layout`).
    ///
    /// # Errors
    ///
    /// [`BridgeError::LayoutMismatch`] when the layout maps bytes past the end of the file, or
    /// (when it is not QEMU's own map, which may leave ROM-covered bytes out) does not cover
    /// exactly the file.
    pub fn with_layout(mut self, layout: GuestLayout) -> Result<Self, BridgeError> {
        let file = self.mapping.len() as u64;
        let fits = match layout.source() {
            LayoutSource::Mtree => layout.file_end() <= file,
            _ => layout.ram_size() == file,
        };
        if !fits {
            return Err(BridgeError::LayoutMismatch { layout: layout.file_end(), file: self.mapping.len() });
        }
        self.layout = layout;
        Ok(self)
    }

    /// The VM's id (its name).
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The RAM file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The RAM file's path, owned.
    pub fn path_buf(&self) -> PathBuf {
        self.path.clone()
    }

    /// Size of guest RAM in bytes (the RAM file's size when opened).
    pub fn size(&self) -> usize {
        self.mapping.len()
    }

    /// The guest-physical layout in use.
    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// The RAM in file order (offsets of `ram`), over all its backends.
    pub fn mapping(&self) -> &GuestRam {
        &self.mapping
    }

    /// File offset of `len` bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`] when any byte of the range is not guest RAM.
    #[inline]
    pub fn translate(&self, addr: u64, len: usize) -> Result<usize, BridgeError> {
        self.layout
            .translate(addr, len as u64)
            .map(|offset| offset as usize)
            .ok_or(BridgeError::InvalidAddress { addr, len, max: self.size() })
    }

    /// A zero-copy view of `len` bytes at guest-physical `addr`, in O(1).
    ///
    /// **The bytes can change while you hold the slice**: the guest keeps running and writes
    /// its RAM. Two reads of the same element may differ, and the compiler is entitled to
    /// assume they do not, so do not base comparisons or checksums on this view; use
    /// [`read_into`](Self::read_into) or [`consistent_snapshot`](Self::consistent_snapshot).
    /// The slice also dangles if the file is truncated under the mapping (SIGBUS on access).
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`] when any byte of the range is not guest RAM.
    pub fn read_physical(&self, addr: u64, len: usize) -> Result<&[u8], BridgeError> {
        let offset = self.translate(addr, len)?;
        self.mapping.live_slice(offset, len)
    }

    /// Copies `buf.len()` bytes at guest-physical `addr` into `buf`.
    ///
    /// The copy goes through raw pointers and forms no reference to guest memory, so Rust never
    /// assumes the bytes are stable. It is still a plain copy racing the guest's vCPUs: bytes
    /// the guest writes meanwhile may be torn (some old, some new), and neither Rust's memory
    /// model nor this function makes that race well-defined. The consistency check
    /// ([`consistent_snapshot`](Self::consistent_snapshot)) detects such pages afterwards.
    ///
    /// A range that crosses from one RAM region into the next (guest-physical addresses that
    /// touch, backed by other parts of the file) is read piece by piece, as every copying
    /// reader of guest-physical memory reads it ([`GuestLayout::pieces`]); only
    /// [`read_physical`](Self::read_physical), which hands out one slice of the file, refuses it.
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`] when any byte is not guest RAM (then nothing is read),
    /// [`BridgeError::FileShrunk`] when the file was truncated under the mapping.
    #[inline]
    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), BridgeError> {
        let len = buf.len();
        let copied =
            self.layout.copy_ram(addr, buf, |offset, part| self.mapping.copy_to(offset as usize, part));
        copied.unwrap_or(Err(BridgeError::InvalidAddress { addr, len, max: self.size() }))
    }

    /// A copy of all guest RAM in file order, unchecked; infallible, as the first version of this API was.
    ///
    /// # Panics
    ///
    /// When the copy fails, which only happens when the RAM file was truncated under the
    /// mapping: an empty or partial vector would pass for guest RAM. Use
    /// [`try_snapshot`](Self::try_snapshot) to get the error instead.
    pub fn snapshot(&self) -> Vec<u8> {
        match self.try_snapshot() {
            Ok(data) => data,
            Err(err) => panic!("snapshot of VM {} failed: {}", self.vm_id, crate::error::chain(&err)),
        }
    }

    /// A copy of all guest RAM in file order, unchecked.
    ///
    /// # Errors
    ///
    /// [`BridgeError::FileShrunk`] when the file was truncated under the mapping.
    pub fn try_snapshot(&self) -> Result<Vec<u8>, BridgeError> {
        snapshot::take_plain(&self.mapping)
    }

    /// Copies all guest RAM (file order) into `buffer`, which must be [`size`](Self::size)
    /// bytes long. Reusing one buffer avoids the page faults a fresh allocation costs.
    ///
    /// # Errors
    ///
    /// [`BridgeError::BufferLength`] for a buffer of the wrong length,
    /// [`BridgeError::FileShrunk`] when the file was truncated under the mapping.
    pub fn snapshot_into(&self, buffer: &mut [u8]) -> Result<(), BridgeError> {
        if buffer.len() != self.size() {
            return Err(BridgeError::BufferLength { expected: self.size(), actual: buffer.len() });
        }
        self.mapping.copy_to(0, buffer)
    }

    /// [`consistent_snapshot`](Self::consistent_snapshot) into a reused buffer of
    /// [`size`](Self::size) bytes.
    ///
    /// # Errors
    ///
    /// As [`snapshot_into`](Self::snapshot_into).
    pub fn consistent_snapshot_into(
        &self,
        buffer: &mut [u8],
        max_attempts: u32,
    ) -> Result<CheckReport, BridgeError> {
        snapshot::check_into(&self.mapping, buffer, max_attempts)
    }

    /// Writes all guest RAM (file order) to `file`, straight from the mapping: no intermediate
    /// buffer. Unchecked: pages the guest writes meanwhile may be torn.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Write`], [`BridgeError::FileShrunk`].
    pub fn write_snapshot_to(&self, file: &std::fs::File) -> Result<(), BridgeError> {
        self.mapping.write_to(file, 0, self.size())
    }

    /// [`write_snapshot_to`](Self::write_snapshot_to), hashing on another thread what is
    /// written; returns the lower-case hex digest of exactly the bytes in the file. `progress`
    /// is told the bytes written so far as the write goes on.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Write`], [`BridgeError::FileShrunk`].
    pub fn write_snapshot_hashed(
        &self,
        file: &std::fs::File,
        algorithm: snapshot::HashAlgorithm,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<String, BridgeError> {
        snapshot::write_hashed(&self.mapping, file, algorithm, progress)
    }

    /// A copy of all guest RAM verified page by page against live memory, re-copying changed
    /// pages up to `max_attempts` copies in all. See `snapshot` for what the verdict means.
    ///
    /// # Errors
    ///
    /// [`BridgeError::FileShrunk`] when the file was truncated under the mapping.
    pub fn consistent_snapshot(&self, max_attempts: u32) -> Result<Snapshot, BridgeError> {
        snapshot::take_checked(&self.mapping, max_attempts)
    }
}
