//! The read-only mapping of a guest RAM file: opening it and copying out of it. Every `unsafe`
//! block of the crate lives in this module and its parts: which runs of the file hold data
//! (`holes`), the comparison of a copy with live memory (`compare`), the sparse write to a file
//! (`write`) and the process-wide SIGBUS guard (`sigbus`).
//!
//! # The memory contract
//!
//! Guest RAM changes under every reader: QEMU's vCPUs write it, from another process, while we
//! read it, and nothing Rust can see synchronizes with those writes. Rust assumes the bytes
//! behind a `&[u8]` do not change while the reference lives and may merge, repeat or drop loads
//! through it, so the project's own logic (copies, checksums, comparisons, the consistency
//! check, the page scans) never forms a `&[u8]` over live memory. Every load of live memory is
//! `copy_unchecked`: a `std::ptr::copy_nonoverlapping` from a raw pointer into the mapping to a
//! buffer of ours, then `compiler_fence(SeqCst)`; code looks at the buffer, never at the mapping.
//! The other way out of the mapping is the kernel: `write` passes a raw pointer to `pwrite`.
//!
//! What the compiler may do with such a copy: split it, widen it, vectorize it, call `memcpy`
//! for it, and load the bytes of the range in any order and size. What it may not do: reuse,
//! after the fence, bytes it loaded before it. The compiler counts the fence as a possible
//! write to all memory, so a copy after it is neither merged with an earlier copy of the same
//! range nor moved above the fence: a second look at a page really loads again, which is what
//! the consistency check and the page scans rely on. Nor can it fold the bytes to a value it
//! knows: the mapping's contents come from `mmap`, opaque to it. (Rust's memory model defines
//! fences against atomic accesses only; that plain loads stay behind this one is a property of
//! rustc and LLVM, relied on as C code relies on a compiler barrier.) The copies are not
//! volatile: volatile loads may not be merged, widened or vectorized, and stable Rust has no
//! volatile copy of a range, only loads of one value at a time; the page scans, each copying a
//! page into a buffer that stays in the L1 cache and comparing it there at vector speed, cannot
//! afford a loop of word loads.
//!
//! What nobody promises: a copy that races a guest write may be torn, some bytes old and some
//! new, in any mix within a page or even within a word. By the letter of Rust's memory model a
//! non-atomic load racing a write is undefined behaviour. It is sound enough in practice
//! because the writer is another process, outside the program the compiler reasons about, the
//! loaded values are bytes, for which every bit pattern is valid, and no branch inside the copy
//! depends on them: the worst outcome is a torn copy, never a broken invariant of ours. The
//! consistency check (`ram::snapshot`) compares each copied page with live memory again and
//! copies the pages that differ again; only a paused VM gives a guaranteed image.
//!
//! rust-vmm's vm-memory, which VMMs use to access guest memory, makes the same trade. It hands
//! out no references into guest memory (it removed `as_slice` for this reason); a copy of at
//! most a machine word goes through aligned volatile loads, so a small aligned field is read in
//! one access; a longer copy is a plain `copy_nonoverlapping` through raw pointers, which may
//! tear. Our copies are plain at every length, the 8-byte reads of a page-table walk included.
//!
//! Two callers do hold a `&[u8]` over live memory, and neither lets Rust load from it: the
//! public API's [`live_slice`](Mapping::live_slice) (`SharedMemoryBridge::read_physical`), whose callers are
//! told the bytes change, and the FUSE read path, which passes the slice straight to the
//! kernel (`writev` on the FUSE device): the kernel copies the bytes, no Rust code reads them.

mod compare;
mod holes;
mod sigbus;
mod write;

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, Ordering};

use memmap2::{Mmap, MmapOptions};

use super::{BridgeError, PAGE_SIZE};
use holes::{KnownData, Segment};

/// Copies at least this large are split across threads when more than one core is available.
const PARALLEL_COPY_THRESHOLD: usize = 16 << 20;

/// Zeros to answer reads of holes with, without allocating.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// How a RAM file is read so that reading never allocates a page the guest has not touched:
/// touching an untouched page of a tmpfs, memfd or hugetlbfs mapping allocates it, even for a
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMethod {
    /// `lseek(SEEK_DATA/SEEK_HOLE)` names the holes (tmpfs, memfd, regular files): holes read
    /// as zeros without touching the mapping, data is copied from the mapping (and handed to
    /// the kernel as is by the mount: zero copy).
    MappingWithHoles,
    /// hugetlbfs reports every page as data, and a fault on an untouched huge page allocates
    /// one (or raises SIGBUS when the pool is empty): every read is a `pread`, which returns
    /// zeros for untouched pages and allocates nothing. A copy, not zero-copy.
    Pread,
    /// Private guest RAM (no shared backend) is read out of the QEMU process with
    /// `process_vm_readv`: a copy, which needs root or the ptrace permission on QEMU. An
    /// untouched private page reads as the zero page and is not allocated.
    ProcessMemory,
}

/// Where the bytes come from.
#[derive(Debug)]
enum Source {
    /// A shared file, mapped read-only.
    File { map: Mmap, file: File },
    /// Another process's address space.
    Process { pid: nix::unistd::Pid, address: usize },
}

/// A read-only, shared mapping of a whole guest RAM file.
#[derive(Debug)]
pub struct Mapping {
    source: Source,
    len: usize,
    path: PathBuf,
    method: ReadMethod,
    page_size: usize,
    /// Slot in the SIGBUS guard's table, if one was free.
    guard_slot: Option<usize>,
    /// One bit per 4 KiB page seen as data (for [`ReadMethod::MappingWithHoles`]): a page the
    /// guest touched stays allocated, so a small read of known pages needs no system call.
    known_data: KnownData,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(slot) = self.guard_slot {
            sigbus::unregister(slot);
        }
    }
}

impl Mapping {
    /// Opens `path` read-only and maps all of it `PROT_READ`, `MAP_SHARED`.
    ///
    /// The first mapping opened in a process installs a process-wide SIGBUS handler (see the
    /// `sigbus` module); faults outside this crate's mappings go on to the handler that
    /// was installed before it, or get the default action.
    pub fn open(path: &Path) -> Result<Self, BridgeError> {
        // io::Error's message does not say which file; put the path in it.
        let with_path =
            |err: std::io::Error| std::io::Error::new(err.kind(), format!("{}: {err}", path.display()));
        let file = File::open(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => BridgeError::FileNotFound(path.display().to_string()),
            std::io::ErrorKind::PermissionDenied => BridgeError::PermissionDenied,
            _ => BridgeError::io("open")(with_path(err)),
        })?;
        Self::from_file(file, path).map_err(|err| match err {
            BridgeError::MmapFailed(err) => BridgeError::MmapFailed(with_path(err)),
            BridgeError::Io { what, source } => BridgeError::Io { what, source: with_path(source) },
            other => other,
        })
    }

    /// Maps an open file; `path` is what it is called in messages.
    pub(crate) fn from_file(file: File, path: &Path) -> Result<Self, BridgeError> {
        let metadata = file.metadata().map_err(BridgeError::io("stat"))?;
        if !metadata.is_file() {
            return Err(BridgeError::NotAFile(path.display().to_string()));
        }
        let (page_size, hugetlbfs) =
            page_size_of(&file).map_err(BridgeError::io("stat the file system of"))?;
        let method = if hugetlbfs { ReadMethod::Pread } else { ReadMethod::MappingWithHoles };
        let mut options = MmapOptions::new();
        if hugetlbfs {
            // Never touched (reads are preads), so it needs no huge pages of the pool reserved.
            options.no_reserve_swap();
        }
        // SAFETY: the mapping is read-only and shared; memmap2 keeps it alive as long as `Mmap`.
        // The file's contents change under it (that is its purpose), so no code of this crate
        // reads through references into it: `live_slice` is for callers who are told the bytes may
        // change, and `read_for_reply` hands its slice to the kernel; everything else copies
        // through raw pointers. A file that shrinks under the mapping is caught by
        // `check_file_len` before each copy and by the SIGBUS guard (`sigbus`) during one.
        let map = unsafe { options.map(&file) }.map_err(BridgeError::MmapFailed)?;
        let guard_slot = sigbus::register(map.as_ptr() as usize, map.len(), page_size);
        if guard_slot.is_none() && !map.is_empty() {
            log::warn!(
                "{}: no SIGBUS guard slot left; a truncated file could crash this process",
                path.display()
            );
        }
        let len = map.len();
        let known_data =
            if method == ReadMethod::MappingWithHoles { KnownData::new(len) } else { KnownData::default() };
        Ok(Self {
            source: Source::File { map, file },
            len,
            path: path.to_path_buf(),
            method,
            page_size,
            guard_slot,
            known_data,
        })
    }

    /// The `len` bytes at `address` in process `pid`'s memory (private guest RAM), read with
    /// `process_vm_readv`; `path` is what they are called in messages. Checks that the first
    /// byte can be read.
    ///
    /// # Errors
    ///
    /// [`BridgeError::ProcessMemory`] when the process's memory cannot be read (it is gone, or
    /// this user may not trace it).
    pub fn of_process(pid: u32, address: usize, len: usize, path: &Path) -> Result<Self, BridgeError> {
        let mapping = Self {
            source: Source::Process { pid: nix::unistd::Pid::from_raw(pid as i32), address },
            len,
            path: path.to_path_buf(),
            method: ReadMethod::ProcessMemory,
            page_size: PAGE_SIZE,
            guard_slot: None,
            known_data: KnownData::default(),
        };
        if len > 0 {
            mapping.process_read(0, &mut [0u8; 1])?;
        }
        Ok(mapping)
    }

    /// Mapped length in bytes (the file's size when it was opened).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping of a file source; reads through it happen only for [`ReadMethod::MappingWithHoles`].
    fn map(&self) -> &Mmap {
        match &self.source {
            Source::File { map, .. } => map,
            Source::Process { .. } => unreachable!("process memory is never read through a mapping"),
        }
    }

    fn file(&self) -> &File {
        match &self.source {
            Source::File { file, .. } => file,
            Source::Process { .. } => unreachable!("process memory has no file"),
        }
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new descriptor of the very file that is mapped (for FUSE passthrough, which must
    /// serve the file that was verified, not whatever its path names now); `None` for private
    /// RAM, which has no file.
    pub fn try_clone_file(&self) -> Option<std::io::Result<File>> {
        match &self.source {
            Source::File { file, .. } => Some(file.try_clone()),
            Source::Process { .. } => None,
        }
    }

    /// Where private RAM starts in its QEMU process's address space (`None` for a file).
    pub fn process_address(&self) -> Option<usize> {
        match &self.source {
            Source::File { .. } => None,
            Source::Process { address, .. } => Some(*address),
        }
    }

    /// How this file's bytes are read (see [`ReadMethod`]).
    pub fn read_method(&self) -> ReadMethod {
        self.method
    }

    /// The size of the pages the kernel maps the file with (2 MiB or 1 GiB on hugetlbfs).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The file's current length. A RAM file reused by a new QEMU can be truncated under the
    /// mapping; touching a page past its new end raises SIGBUS.
    pub fn current_file_len(&self) -> std::io::Result<u64> {
        match &self.source {
            Source::File { file, .. } => Ok(file.metadata()?.len()),
            Source::Process { .. } => Ok(self.len as u64),
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BridgeError::InvalidAddress { addr: offset as u64, len, max: self.len }),
        }
    }

    /// Fails when the file no longer holds `offset..offset + len`, or when a page of the
    /// mapping was ever lost to a truncation (the guard replaced it with zeros: the mapping no
    /// longer mirrors the file).
    fn check_file_len(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        if let Source::Process { .. } = self.source {
            return Ok(());
        }
        let current = self.current_file_len().map_err(BridgeError::io("stat"))?;
        let poisoned = self.guard_slot.is_some_and(sigbus::poisoned);
        if poisoned || (offset + len) as u64 > current {
            return Err(BridgeError::FileShrunk { mapped: self.len, current });
        }
        Ok(())
    }

    /// Before a copy into our own memory: with the SIGBUS guard, a page lost to a truncation
    /// during the copy reads as zeros and is reported after it ([`check_intact`]), so only the
    /// guard's flag is consulted here, no system call; without a guard slot, `fstat`.
    fn check_before_copy(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        if self.guard_slot.is_some() {
            return self.check_intact();
        }
        self.check_file_len(offset, len)
    }

    /// After a copy: fails when a page was lost to a truncation during it (the SIGBUS guard
    /// left zeros in the copy). A truncation that touched no copied page leaves the copy valid,
    /// so only the guard's flag is consulted; no `fstat` on the success path.
    fn check_intact(&self) -> Result<(), BridgeError> {
        if self.guard_slot.is_some_and(sigbus::poisoned) {
            let current = self.current_file_len().unwrap_or(0);
            return Err(BridgeError::FileShrunk { mapped: self.len, current });
        }
        Ok(())
    }

    /// Threads for a copy or scan of `len` bytes: all cores (at most 8) when large, else one.
    fn threads_for(len: usize) -> usize {
        if len >= PARALLEL_COPY_THRESHOLD {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
        } else {
            1
        }
    }

    /// A borrowed view of `len` bytes at `offset`. The guest may change them while the view
    /// lives; see [`crate::SharedMemoryBridge::read_physical`].
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`], and [`BridgeError::NotMapped`] for private RAM, which is
    /// read by copying only.
    pub fn live_slice(&self, offset: usize, len: usize) -> Result<&[u8], BridgeError> {
        self.check_range(offset, len)?;
        match &self.source {
            Source::File { map, .. } => Ok(&map[offset..offset + len]),
            Source::Process { .. } => Err(BridgeError::NotMapped),
        }
    }

    /// `len` bytes at `offset` for a reply that the kernel copies: the live mapping itself when
    /// the range is all data (zero copy: Rust never loads these bytes, the kernel copies them),
    /// zeros when it is all hole, and a copy otherwise (mixed ranges, hugetlbfs). Never touches
    /// a page the guest has not touched. The file can still shrink between the size check and
    /// the kernel's copy of a borrowed range: the window is one `fstat`.
    pub fn read_for_reply(&self, offset: usize, len: usize) -> Result<Cow<'_, [u8]>, BridgeError> {
        self.check_range(offset, len)?;
        self.check_file_len(offset, len)?;
        let segments = self.segments(offset, len)?;
        match segments.as_slice() {
            [only] if only.data && self.method == ReadMethod::MappingWithHoles => {
                Ok(Cow::Borrowed(&self.map()[offset..offset + len]))
            }
            [only] if !only.data && len <= ZEROS.len() => Ok(Cow::Borrowed(&ZEROS[..len])),
            _ => {
                let mut copy = vec![0u8; len];
                self.copy_segments(offset, &mut copy, &segments)?;
                self.check_intact()?;
                Ok(Cow::Owned(copy))
            }
        }
    }

    /// Copies `dst.len()` bytes at `offset` into `dst`, split across threads when large.
    #[inline]
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        if self.copy_known(offset, dst) {
            return Ok(());
        }
        self.copy_with_threads(offset, dst, Self::threads_for(dst.len()))
    }

    /// The path of small reads (a page-table walk's 8-byte loads): copies when the range is in
    /// bounds, every page of it is known data and the SIGBUS guard watches the mapping, with no
    /// system call; whether it did. A truncation seen before or during the copy leaves it to
    /// the full path, which reports it.
    #[inline]
    fn copy_known(&self, offset: usize, dst: &mut [u8]) -> bool {
        const SMALL: usize = 64 << 10;
        let Some(slot) = self.guard_slot else { return false };
        let in_bounds = offset.checked_add(dst.len()).is_some_and(|end| end <= self.len);
        if !in_bounds
            || dst.is_empty()
            || dst.len() > SMALL
            || sigbus::poisoned(slot)
            || !self.known_data.covers(offset, dst.len())
        {
            return false;
        }
        self.copy_unchecked(offset, dst);
        !sigbus::poisoned(slot)
    }

    /// One part's [`GuestRam::copy_to_zeroed`](crate::ram::GuestRam::copy_to_zeroed): only the
    /// data runs are copied, holes are left as the buffer has them.
    pub(crate) fn copy_to_zeroed(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        self.check_range(offset, dst.len())?;
        self.check_before_copy(offset, dst.len())?;
        let segments: Vec<Segment> =
            self.segments(offset, dst.len())?.into_iter().filter(|s| s.data).collect();
        self.copy_segments(offset, dst, &segments)?;
        self.check_intact()
    }

    /// Copies `dst.len()` bytes at `offset` into `dst` on `threads` threads (1 = this thread).
    pub fn copy_with_threads(
        &self,
        offset: usize,
        dst: &mut [u8],
        threads: usize,
    ) -> Result<(), BridgeError> {
        self.check_range(offset, dst.len())?;
        self.check_before_copy(offset, dst.len())?;
        if threads <= 1 || dst.len() < 2 * PAGE_SIZE {
            self.copy_range(offset, dst)?;
            // a truncation during the copy left zeros where pages were lost
            return self.check_intact();
        }
        // Page-aligned chunks so that each thread streams whole pages; the last chunk runs on
        // this thread.
        let chunk = dst.len().div_ceil(threads).next_multiple_of(PAGE_SIZE);
        let results: Vec<Result<(), BridgeError>> = std::thread::scope(|scope| {
            let mut parts = dst.chunks_mut(chunk).enumerate();
            let last = parts.next_back();
            let workers: Vec<_> = parts
                .map(|(index, part)| scope.spawn(move || self.copy_range(offset + index * chunk, part)))
                .collect();
            let mut results: Vec<_> =
                last.into_iter().map(|(index, part)| self.copy_range(offset + index * chunk, part)).collect();
            for worker in workers {
                results.push(worker.join().unwrap_or_else(|_| {
                    Err(BridgeError::io("copy from")(std::io::Error::other("a copy thread panicked")))
                }));
            }
            results
        });
        results.into_iter().collect::<Result<(), _>>()?;
        self.check_intact()
    }

    /// One part's [`GuestRam::for_each_page_in`](crate::ram::GuestRam::for_each_page_in): page
    /// indexes of this mapping, `pages` clamped to it; the data and hole runs are looked up a
    /// chunk at a time. Only the first `head` bytes of each page are copied and handed to
    /// `each` (all of it with [`PAGE_SIZE`]).
    pub(crate) fn for_each_page_in(
        &self,
        pages: std::ops::Range<usize>,
        head: usize,
        mut each: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), BridgeError> {
        const CHUNK: usize = 1 << 20;
        let end = (pages.end.saturating_mul(PAGE_SIZE)).min(self.len);
        let mut offset = pages.start.saturating_mul(PAGE_SIZE).min(end);
        self.check_before_copy(offset, end - offset)?;
        // one page at a time into a buffer that stays in the L1 cache for `each` to look at
        let mut buffer = [0u8; PAGE_SIZE];
        while offset < end {
            let len = CHUNK.min(end - offset);
            for segment in self.segments(offset, len)? {
                // segments are page-aligned inside a chunk (chunks are whole pages)
                for start in (segment.start..segment.end).step_by(PAGE_SIZE) {
                    let page = &mut buffer[..head.min(PAGE_SIZE).min(segment.end - start)];
                    if segment.data {
                        let part = Segment { start, end: start + page.len(), data: true };
                        self.copy_segments(start, page, &[part])?;
                        each(start / PAGE_SIZE, Some(page));
                    } else {
                        each(start / PAGE_SIZE, None);
                    }
                }
            }
            self.check_intact()?;
            offset += len;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` (a range callers checked), holes as zeros.
    fn copy_range(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        let segments = self.segments(offset, dst.len())?;
        self.copy_segments(offset, dst, &segments)
    }

    fn copy_segments(&self, offset: usize, dst: &mut [u8], segments: &[Segment]) -> Result<(), BridgeError> {
        for segment in segments {
            let part = &mut dst[segment.start - offset..segment.end - offset];
            match (segment.data, self.method) {
                (false, _) => part.fill(0),
                (true, ReadMethod::MappingWithHoles) => self.copy_unchecked(segment.start, part),
                (true, ReadMethod::Pread) => self.pread(segment.start, part)?,
                (true, ReadMethod::ProcessMemory) => self.process_read(segment.start, part)?,
            }
        }
        Ok(())
    }

    /// `process_vm_readv` of `dst.len()` bytes at `offset` of the process's RAM block.
    fn process_read(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        let Source::Process { pid, address } = &self.source else { unreachable!("not process memory") };
        let mut done = 0;
        while done < dst.len() {
            let remote =
                [nix::sys::uio::RemoteIoVec { base: address + offset + done, len: dst.len() - done }];
            let read = nix::sys::uio::process_vm_readv(
                *pid,
                &mut [std::io::IoSliceMut::new(&mut dst[done..])],
                &remote,
            )
            .map_err(|errno| BridgeError::ProcessMemory(errno.into()))?;
            if read == 0 {
                return Err(BridgeError::ProcessMemory(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            done += read;
        }
        Ok(())
    }

    /// A read for the consistency check and for buffered writes: `pread` or
    /// `process_vm_readv`.
    fn read_copy(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        match self.method {
            ReadMethod::ProcessMemory => self.process_read(offset, dst),
            _ => self.pread(offset, dst),
        }
    }

    /// `pread` of `dst.len()` bytes at `offset`; a file that ends early shrank.
    fn pread(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        self.file().read_exact_at(dst, offset as u64).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                BridgeError::FileShrunk { mapped: self.len, current: self.current_file_len().unwrap_or(0) }
            }
            _ => BridgeError::io("read")(err),
        })
    }

    /// Copy without checks; callers have checked the range against the mapping. The one load
    /// of live memory into our own (see the memory contract in the module doc).
    #[inline]
    fn copy_unchecked(&self, offset: usize, dst: &mut [u8]) {
        debug_assert!(offset + dst.len() <= self.len);
        // SAFETY: `offset + dst.len() <= self.len` (checked by every caller), so the
        // source range lies inside the live mapping, which cannot overlap `dst` (heap or stack
        // memory of ours). The copy goes through raw pointers: no `&[u8]` to changing memory is
        // created. Concurrent guest writes may tear the copy; the consistency check detects it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map().as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
        // No memory access moves across this fence, so a later copy of the same range loads
        // again instead of reusing these bytes (see the memory contract above).
        compiler_fence(Ordering::SeqCst);
    }
}

/// Whether `file` is on hugetlbfs.
///
/// # Errors
///
/// When its file system cannot be examined.
pub fn is_hugetlbfs(file: &File) -> std::io::Result<bool> {
    page_size_of(file).map(|(_, hugetlbfs)| hugetlbfs)
}

/// The size of the pages the kernel maps `file` with, and whether it is on hugetlbfs: the huge
/// page size there (2 MiB or 1 GiB), the system page size elsewhere.
fn page_size_of(file: &File) -> std::io::Result<(usize, bool)> {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let stats = nix::sys::statfs::fstatfs(file)?;
    if stats.filesystem_type().0 as i64 == HUGETLBFS_MAGIC {
        return Ok((stats.block_size() as usize, true));
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten();
    Ok((page.map_or(PAGE_SIZE, |size| size as usize), false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapped temporary file of `len` bytes of a pattern, and the file to change under it.
    pub(super) fn mapped(len: usize) -> (tempfile::NamedTempFile, Mapping, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        file.flush().unwrap();
        let mapping = Mapping::open(file.path()).unwrap();
        (file, mapping, bytes)
    }

    pub(super) fn write_at(file: &tempfile::NamedTempFile, offset: u64, bytes: &[u8]) {
        std::os::unix::fs::FileExt::write_all_at(file.as_file(), bytes, offset).unwrap();
    }

    #[test]
    fn copies_see_changes_made_through_the_file() {
        let (file, mapping, bytes) = mapped(3 * 4096);
        let mut copy = vec![0u8; bytes.len()];
        mapping.copy_to(0, &mut copy).unwrap();
        assert_eq!(copy, bytes);
        write_at(&file, 5000, b"changed");
        let mut part = [0u8; 7];
        mapping.copy_to(5000, &mut part).unwrap();
        assert_eq!(&part, b"changed");
    }

    #[test]
    fn ranges_past_the_end_are_refused_before_any_copy() {
        let (_file, mapping, _) = mapped(4096);
        let mut buffer = [0u8; 16];
        assert!(matches!(mapping.copy_to(4090, &mut buffer), Err(BridgeError::InvalidAddress { .. })));
        assert!(matches!(
            mapping.copy_to(usize::MAX - 4, &mut buffer),
            Err(BridgeError::InvalidAddress { .. })
        ));
        assert!(matches!(mapping.live_slice(4096, 1), Err(BridgeError::InvalidAddress { .. })));
        assert!(mapping.live_slice(4095, 1).is_ok());
    }

    #[test]
    fn large_copies_and_scans_split_across_threads_agree_with_one_thread() {
        let len = PARALLEL_COPY_THRESHOLD + 3 * 4096 + 17;
        let (file, mapping, bytes) = mapped(len);
        let mut one = vec![0u8; len];
        let mut many = vec![0u8; len];
        mapping.copy_with_threads(0, &mut one, 1).unwrap();
        mapping.copy_with_threads(0, &mut many, 3).unwrap();
        assert!(one == bytes && many == bytes);
        write_at(&file, (len - 1) as u64, &[bytes[len - 1] ^ 1]);
        write_at(&file, 4096, &[bytes[4096] ^ 1]);
        assert_eq!(mapping.changed_pages(&bytes, 4096).unwrap(), vec![1, (len - 1) / 4096]);
    }

    #[test]
    fn a_shrunk_file_is_reported_not_read() {
        let (file, mapping, _) = mapped(3 * 4096);
        file.as_file().set_len(4096).unwrap();
        let mut buffer = [0u8; 8];
        assert!(matches!(
            mapping.copy_to(2 * 4096, &mut buffer),
            Err(BridgeError::FileShrunk { current: 4096, .. })
        ));
        mapping.copy_to(0, &mut buffer).unwrap();
    }

    #[test]
    fn open_errors_name_the_file() {
        match Mapping::open(Path::new("/nonexistent/qemu-bridge-ram")) {
            Err(BridgeError::FileNotFound(path)) => assert_eq!(path, "/nonexistent/qemu-bridge-ram"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Mapping::open(dir.path()), Err(BridgeError::NotAFile(_))));
        // an open that fails otherwise is an I/O error, not a failed mmap, and its cause names
        // the file
        let file = tempfile::NamedTempFile::new().unwrap();
        let below_a_file = file.path().join("ram");
        let err = Mapping::open(&below_a_file).unwrap_err();
        assert!(matches!(err, BridgeError::Io { what: "open", .. }), "{err:?}");
        let message = crate::error::chain(&err);
        assert!(message.starts_with("cannot open the RAM file: "), "{message}");
        assert!(message.contains(&below_a_file.display().to_string()), "{message}");
    }

    /// Without a size check before each copy, a known page lost to a truncation is still
    /// reported (the SIGBUS guard), and so is a range past the new end that was never read.
    #[test]
    fn a_truncated_known_page_is_reported_not_read() {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        write_at(&file, 0, &[1u8; 3 * 4096]);
        let mapping = Mapping::open(file.path()).unwrap();
        let mut word = [0u8; 8];
        mapping.copy_to(2 * 4096, &mut word).unwrap();
        assert_eq!(word, [1; 8]);
        file.as_file().set_len(4096).unwrap();
        assert!(matches!(mapping.copy_to(2 * 4096, &mut word), Err(BridgeError::FileShrunk { .. })));
        assert!(matches!(mapping.copy_to(4096, &mut word), Err(BridgeError::FileShrunk { .. })));
    }

    #[test]
    fn tmpfs_pages_are_the_system_page_size() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(page_size_of(&file).unwrap(), (4096, false));
    }
}
