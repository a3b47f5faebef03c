//! Which parts of a RAM file hold data. Touching an untouched page of a tmpfs, memfd or
//! hugetlbfs mapping allocates it, so holes are found with `mincore` and `lseek(SEEK_DATA)` and
//! answered with zeros, never read through the mapping. Pages once seen as data are remembered
//! ([`KnownData`]) so that small reads of them need no system call.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{BridgeError, Mapping, ReadMethod, PAGE_SIZE};

/// A run of the file that is all data or all hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) data: bool,
}

/// Pages known to hold data, one bit each; bits are only ever set (a page the guest gives back
/// with a hole punch, say by a balloon, still counts as data: reading it maps one zero page).
#[derive(Debug, Default)]
pub(super) struct KnownData(Vec<AtomicU64>);

impl KnownData {
    const PAGE: usize = PAGE_SIZE;

    pub(super) fn new(len: usize) -> Self {
        Self((0..len.div_ceil(Self::PAGE).div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Whether every page of `offset..offset + len` (a checked, non-empty range) is known data.
    #[inline]
    pub(super) fn covers(&self, offset: usize, len: usize) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let (first, last) = (offset / Self::PAGE, (offset + len - 1) / Self::PAGE);
        if first == last {
            return self.0[first / 64].load(Ordering::Relaxed) & (1 << (first % 64)) != 0;
        }
        (first / 64..=last / 64).all(|word| {
            let low = if word == first / 64 { first % 64 } else { 0 };
            let high = if word == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - high)) & (u64::MAX << low);
            self.0[word].load(Ordering::Relaxed) & mask == mask
        })
    }

    /// Records the pages overlapping `start..end` as data.
    pub(super) fn mark(&self, start: usize, end: usize) {
        if self.0.is_empty() || start >= end {
            return;
        }
        for page in start / Self::PAGE..=(end - 1) / Self::PAGE {
            self.0[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }
}

impl Mapping {
    /// One part's [`GuestRam::data_bytes`](crate::ram::GuestRam::data_bytes): the sum of the data
    /// runs of the whole file.
    pub(crate) fn data_bytes(&self) -> Result<u64, BridgeError> {
        let segments = self.segments(0, self.len)?;
        Ok(segments
            .iter()
            .filter(|segment| segment.data)
            .map(|segment| (segment.end - segment.start) as u64)
            .sum())
    }

    /// The data and hole runs of `offset..offset + len`. Callers checked the range. Pages the
    /// guest touches after the look are data the next time; a read that saw them as holes
    /// returns zeros, as if it had happened just before the write.
    ///
    /// Pages in the file's page cache (`mincore` of the mapping: no fault, no allocation) are
    /// data. The others are asked of `lseek(SEEK_DATA)`, which also counts pages swapped out as
    /// data: only what it skips is a hole. (`SEEK_HOLE` would walk every page up to the next
    /// hole, the whole file for a guest that touched all of it, on every read.)
    pub(super) fn segments(&self, offset: usize, len: usize) -> Result<Vec<Segment>, BridgeError> {
        const PAGE: usize = PAGE_SIZE;
        let end = offset + len;
        if self.method != ReadMethod::MappingWithHoles || len == 0 || self.known_data.covers(offset, len) {
            return Ok(vec![Segment { start: offset, end, data: true }]);
        }
        let first_page = offset / PAGE;
        let last_page = end.div_ceil(PAGE).min(self.len.div_ceil(PAGE));
        let mut resident = vec![0u8; last_page - first_page];
        // SAFETY: `first_page * PAGE .. last_page * PAGE` lies inside the mapping (whose last
        // page is whole in the address space even when the file ends inside it), the address is
        // page-aligned as mincore requires, and `resident` has one byte per page. mincore only
        // reads the page tables and page cache; it touches no page.
        let status = unsafe {
            libc::mincore(
                self.map().as_ptr().add(first_page * PAGE) as *mut libc::c_void,
                (last_page - first_page) * PAGE,
                resident.as_mut_ptr(),
            )
        };
        if status != 0 {
            return Err(BridgeError::io("look up the resident pages of")(std::io::Error::last_os_error()));
        }
        let mut segments: Vec<Segment> = Vec::new();
        let mut push = |start: usize, stop: usize, data: bool| {
            let (start, stop) = (start.max(offset), stop.min(end));
            if start >= stop {
                return;
            }
            match segments.last_mut() {
                Some(last) if last.data == data && last.end == start => last.end = stop,
                _ => segments.push(Segment { start, end: stop, data }),
            }
        };
        let mut page = first_page;
        while page < last_page {
            if resident[page - first_page] & 1 != 0 {
                push(page * PAGE, (page + 1) * PAGE, true);
                page += 1;
                continue;
            }
            let data_at = match nix::unistd::lseek(
                self.file(),
                (page * PAGE) as libc::off_t,
                nix::unistd::Whence::SeekData,
            ) {
                Ok(at) => (at as usize).max(page * PAGE),
                // no data from here to the end of the file, or the file ends before `page`
                // (truncated): only the size tells which
                Err(nix::errno::Errno::ENXIO) => {
                    self.check_file_len(offset, len)?;
                    usize::MAX
                }
                Err(errno) => return Err(BridgeError::io("find the holes of")(errno.into())),
            };
            if data_at == page * PAGE {
                // allocated but not in memory now (swapped out): data, read through the mapping
                push(page * PAGE, (page + 1) * PAGE, true);
                page += 1;
            } else {
                let next = data_at.div_ceil(PAGE).min(last_page);
                push(page * PAGE, next * PAGE, false);
                page = next.max(page + 1);
            }
        }
        for segment in segments.iter().filter(|segment| segment.data) {
            self.known_data.mark(segment.start, segment.end);
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::write_at;
    use super::*;

    /// An 8 MiB file in /dev/shm (tmpfs) with data in three pages only, and its allocated bytes.
    fn sparse_shm_file() -> (tempfile::NamedTempFile, Mapping, Vec<u8>) {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        let mut expected = vec![0u8; 8 << 20];
        file.as_file().set_len(expected.len() as u64).unwrap();
        for (offset, byte) in [(0usize, 1u8), (3 << 20, 2), ((8 << 20) - 1, 3)] {
            write_at(&file, offset as u64, &[byte]);
            expected[offset] = byte;
        }
        let mapping = Mapping::open(file.path()).unwrap();
        (file, mapping, expected)
    }

    fn allocated(file: &tempfile::NamedTempFile) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.as_file().metadata().unwrap().blocks() * 512
    }

    /// Reading never allocates the guest's untouched pages: every way of reading a mostly empty
    /// tmpfs RAM file returns its bytes and leaves its allocated size as it was.
    #[test]
    fn reading_a_sparse_ram_file_allocates_nothing() {
        let (file, mapping, expected) = sparse_shm_file();
        let before = allocated(&file);
        assert!(before <= 3 * 4096, "{before}");
        assert_eq!(mapping.read_method(), ReadMethod::MappingWithHoles);
        assert_eq!(mapping.data_bytes().unwrap(), 3 * 4096);
        let mut copy = vec![0xaau8; expected.len()];
        mapping.copy_with_threads(0, &mut copy, 1).unwrap();
        assert!(copy == expected);
        copy.fill(0xaa);
        mapping.copy_with_threads(0, &mut copy, 3).unwrap();
        assert!(copy == expected);
        assert_eq!(mapping.changed_pages(&expected, 4096).unwrap(), Vec::<usize>::new());
        let mut wrong = expected.clone();
        wrong[5 << 20] = 9;
        assert_eq!(mapping.changed_pages(&wrong, 4096).unwrap(), vec![(5 << 20) / 4096], "a hole is zeros");
        for (offset, len) in
            [(0, 1 << 20), (1 << 20, 1 << 20), ((3 << 20) - 10, 20), ((8 << 20) - 4096, 4096)]
        {
            assert_eq!(*mapping.read_for_reply(offset, len).unwrap(), expected[offset..offset + len]);
        }
        let out = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        mapping.write_to(out.as_file(), 0, expected.len()).unwrap();
        assert_eq!(std::fs::read(out.path()).unwrap(), expected);
        assert!(allocated(&out) <= 3 * 4096, "the snapshot is sparse: {}", allocated(&out));
        assert_eq!(allocated(&file), before, "reading allocated guest pages");
    }

    #[test]
    fn known_data_covers_exactly_the_marked_pages() {
        let known = KnownData::new(300 * 4096);
        known.mark(4096 * 3 + 5, 4096 * 130);
        assert!(known.covers(4096 * 3, 1));
        assert!(known.covers(4096 * 3, 127 * 4096));
        assert!(!known.covers(4096 * 3, 127 * 4096 + 1), "page 130 was not marked");
        assert!(!known.covers(4096 * 2 + 4095, 2), "page 2 was not marked");
        assert!(known.covers(4096 * 63, 4096 * 2), "across a word boundary");
        assert!(!KnownData::default().covers(0, 1));
    }

    /// Small reads of pages seen as data skip the system calls; a hole read before is looked
    /// at again (the guest may have written it since), and neither read allocates a hole.
    #[test]
    fn small_reads_see_pages_the_guest_touches_later_and_allocate_nothing() {
        let (file, mapping, _) = sparse_shm_file();
        let before = allocated(&file);
        let mut word = [0xaau8; 8];
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0; 8], "a hole reads zeros");
        assert_eq!(allocated(&file), before, "reading a hole allocated it");
        write_at(&file, (5 << 20) + 3, &[7]);
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0, 0, 0, 7, 0, 0, 0, 0], "a page written after it read as a hole");
        write_at(&file, (5 << 20) + 4, &[8]);
        mapping.copy_to(5 << 20, &mut word).unwrap();
        assert_eq!(word, [0, 0, 0, 7, 8, 0, 0, 0], "a known page is read live");
    }
}
