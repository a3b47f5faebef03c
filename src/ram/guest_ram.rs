//! All of a VM's RAM as one byte range: the RAM of each memory backend (the machine's, each
//! NUMA node's, each DIMM's), one after the other in the order of their lowest guest-physical
//! address. This is what `ram` serves and what snapshots and checksums cover; the layout says
//! where each guest-physical range lies in it.
//!
//! Each part is a [`Mapping`] (a file, a memfd, hugetlbfs or private RAM); a range that spans
//! two parts is split between them. Parts are whole pages, so page indexes carry over.

use std::borrow::Cow;
use std::fs::File;

use super::mapping::{Mapping, ReadMethod};
use super::{BridgeError, PAGE_SIZE};

/// The RAM of one VM, over one or more backends.
#[derive(Debug)]
pub struct GuestRam {
    /// (offset of the part in the whole, the part).
    parts: Vec<(usize, Mapping)>,
    len: usize,
}

impl From<Mapping> for GuestRam {
    fn from(mapping: Mapping) -> Self {
        Self::new(vec![mapping])
    }
}

impl GuestRam {
    /// The parts, in this order.
    pub fn new(mappings: Vec<Mapping>) -> Self {
        let mut parts = Vec::with_capacity(mappings.len());
        let mut len = 0;
        for mapping in mappings {
            let part_len = mapping.len();
            parts.push((len, mapping));
            len += part_len;
        }
        Self { parts, len }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no RAM.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts with their offsets in the whole.
    pub fn parts(&self) -> impl Iterator<Item = (usize, &Mapping)> {
        self.parts.iter().map(|(start, mapping)| (*start, mapping))
    }

    /// How the (first) part is read; see [`ReadMethod`].
    pub fn read_method(&self) -> ReadMethod {
        self.parts.first().map_or(ReadMethod::MappingWithHoles, |(_, m)| m.read_method())
    }

    /// Whether the RAM is all in one file (not private RAM, not several backends): what FUSE
    /// passthrough can hand to the kernel.
    pub fn is_one_file(&self) -> bool {
        matches!(self.parts.as_slice(), [(_, only)] if only.read_method() != ReadMethod::ProcessMemory)
    }

    /// A descriptor of the RAM file for FUSE passthrough: only when [`is_one_file`](Self::is_one_file).
    pub fn try_clone_file(&self) -> Option<std::io::Result<File>> {
        match self.parts.as_slice() {
            [(_, only)] if self.is_one_file() => only.try_clone_file(),
            _ => None,
        }
    }

    /// Bytes that hold data (allocated pages), over all parts, as `lseek(SEEK_DATA)` sees them;
    /// a hugetlbfs file, which reports everything as data, counts whole.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Io`] when a file cannot be examined.
    pub fn data_bytes(&self) -> Result<u64, BridgeError> {
        self.parts.iter().map(|(_, mapping)| mapping.data_bytes()).sum()
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), BridgeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BridgeError::InvalidAddress { addr: offset as u64, len, max: self.len }),
        }
    }

    /// The pieces of `offset..offset + len` by part: (part, offset in it, offset in the range,
    /// length). Callers checked the range.
    fn split(&self, offset: usize, len: usize) -> impl Iterator<Item = (&Mapping, usize, usize, usize)> {
        let end = offset + len;
        self.parts.iter().filter_map(move |(start, mapping)| {
            let (from, to) = (offset.max(*start), end.min(start + mapping.len()));
            (from < to).then(|| (mapping, from - start, from - offset, to - from))
        })
    }

    /// A zero-copy view (see [`Mapping::live_slice`]); only within one part.
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`] out of bounds or across parts; as [`Mapping::live_slice`].
    pub fn live_slice(&self, offset: usize, len: usize) -> Result<&[u8], BridgeError> {
        self.check_range(offset, len)?;
        match self.split(offset, len).collect::<Vec<_>>().as_slice() {
            [(mapping, at, _, part_len)] => mapping.live_slice(*at, *part_len),
            [] => Ok(&[]),
            _ => Err(BridgeError::InvalidAddress { addr: offset as u64, len, max: self.len }),
        }
    }

    /// See [`Mapping::read_for_reply`]; a range over two parts is copied.
    ///
    /// # Errors
    ///
    /// As [`Mapping::read_for_reply`].
    pub fn read_for_reply(&self, offset: usize, len: usize) -> Result<Cow<'_, [u8]>, BridgeError> {
        self.check_range(offset, len)?;
        let pieces: Vec<_> = self.split(offset, len).collect();
        if let [(mapping, at, _, part_len)] = pieces.as_slice() {
            return mapping.read_for_reply(*at, *part_len);
        }
        let mut bytes = Vec::with_capacity(len);
        for (mapping, at, _, part_len) in pieces {
            bytes.extend_from_slice(&mapping.read_for_reply(at, part_len)?);
        }
        Ok(Cow::Owned(bytes))
    }

    /// See [`Mapping::copy_to`].
    ///
    /// # Errors
    ///
    /// As [`Mapping::copy_to`].
    #[inline]
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        if let [(0, only)] = self.parts.as_slice() {
            return only.copy_to(offset, dst);
        }
        self.each_part(offset, dst, |mapping, at, part| mapping.copy_to(at, part))
    }

    /// [`copy_to`](Self::copy_to) into a buffer known to hold zeros (freshly allocated): holes
    /// are skipped instead of written, so a fresh buffer's untouched pages stay unallocated
    /// too (a copy of a mostly idle 4 GiB guest costs what the guest touched).
    ///
    /// # Errors
    ///
    /// As [`copy_to`](Self::copy_to).
    pub fn copy_to_zeroed(&self, offset: usize, dst: &mut [u8]) -> Result<(), BridgeError> {
        self.each_part(offset, dst, |mapping, at, part| mapping.copy_to_zeroed(at, part))
    }

    /// See [`Mapping::copy_with_threads`].
    ///
    /// # Errors
    ///
    /// As [`Mapping::copy_with_threads`].
    pub fn copy_with_threads(
        &self,
        offset: usize,
        dst: &mut [u8],
        threads: usize,
    ) -> Result<(), BridgeError> {
        self.each_part(offset, dst, |mapping, at, part| mapping.copy_with_threads(at, part, threads))
    }

    fn each_part(
        &self,
        offset: usize,
        dst: &mut [u8],
        copy: impl Fn(&Mapping, usize, &mut [u8]) -> Result<(), BridgeError>,
    ) -> Result<(), BridgeError> {
        self.check_range(offset, dst.len())?;
        for (mapping, at, into, part_len) in self.split(offset, dst.len()) {
            copy(mapping, at, &mut dst[into..into + part_len])?;
        }
        Ok(())
    }

    /// Calls `each(page, bytes)` for every 4 KiB page in order: the page's bytes copied out of
    /// live memory, or `None` for a page of a hole (never allocated: not read, so not allocated
    /// by reading either). The last page may be shorter. Page indexes are of the whole (every
    /// part is a whole number of pages, as QEMU sizes backends).
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`] when a file was truncated during it,
    /// [`BridgeError::Io`] when its holes cannot be found).
    pub fn for_each_page(&self, each: impl FnMut(usize, Option<&[u8]>)) -> Result<(), BridgeError> {
        self.for_each_page_in(0..self.pages(), each)
    }

    /// Pages of 4 KiB ([`PAGE_SIZE`]), the last one possibly short.
    pub fn pages(&self) -> usize {
        self.len.div_ceil(PAGE_SIZE)
    }

    /// [`for_each_page`](Self::for_each_page) over the pages `pages` of the whole only (clamped
    /// to it): what a scan that looks at a share of the RAM at a time needs.
    ///
    /// # Errors
    ///
    /// As [`for_each_page`](Self::for_each_page).
    pub fn for_each_page_in(
        &self,
        pages: std::ops::Range<usize>,
        each: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), BridgeError> {
        self.for_each_page_head(pages, PAGE_SIZE, each)
    }

    /// [`for_each_page_in`](Self::for_each_page_in) with only the first `head` bytes of each
    /// page copied and handed over: a scan for pages that start a certain way reads no more.
    pub(crate) fn for_each_page_head(
        &self,
        pages: std::ops::Range<usize>,
        head: usize,
        mut each: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), BridgeError> {
        for (start, mapping) in &self.parts {
            let first = start / PAGE_SIZE;
            let last = first + mapping.len().div_ceil(PAGE_SIZE);
            let (from, to) = (pages.start.max(first), pages.end.min(last));
            if from < to {
                mapping.for_each_page_in(from - first..to - first, head, |page, bytes| {
                    each(first + page, bytes)
                })?;
            }
        }
        Ok(())
    }

    /// Indexes of the `page_size` pages of `copy` (a copy of all the RAM, every part) whose live
    /// bytes differ from it now; each call looks at live memory again. A page whose look fails
    /// (a `pread` or `lseek` error) counts as changed: it proves nothing.
    ///
    /// # Errors
    ///
    /// [`BridgeError::BufferLength`] when `copy` is not as long as the RAM,
    /// [`BridgeError::FileShrunk`] when a file was truncated under its mapping,
    /// [`BridgeError::Io`] when a file's size cannot be checked.
    pub fn changed_pages(&self, copy: &[u8], page_size: usize) -> Result<Vec<usize>, BridgeError> {
        if copy.len() != self.len {
            return Err(BridgeError::BufferLength { expected: self.len, actual: copy.len() });
        }
        let page_size = page_size.max(1);
        let mut changed = Vec::new();
        for (start, mapping) in &self.parts {
            let part = &copy[*start..start + mapping.len()];
            changed.extend(
                mapping.changed_pages(part, page_size)?.into_iter().map(|page| page + start / page_size),
            );
        }
        Ok(changed)
    }

    /// Writes `len` bytes at `offset` to `file` from its current position on, the parts one
    /// after the other, sparse: holes of the RAM (and on hugetlbfs, pages of zeros) become
    /// holes of the output, which ends up exactly `len` bytes long past that position. Data of
    /// a mapped file goes straight from the mapping to the kernel, with no buffer of ours.
    ///
    /// # Errors
    ///
    /// [`BridgeError::InvalidAddress`] for a range past the end, [`BridgeError::Write`],
    /// [`BridgeError::FileShrunk`] when a file was truncated under its mapping,
    /// [`BridgeError::Io`] when a file cannot be examined or read.
    pub fn write_to(&self, file: &File, offset: usize, len: usize) -> Result<(), BridgeError> {
        self.check_range(offset, len)?;
        for (mapping, at, _, part_len) in self.split(offset, len) {
            mapping.write_to(file, at, part_len)?;
        }
        Ok(())
    }
}
