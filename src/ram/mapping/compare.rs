//! Comparing a copy with live memory again: the consistency check's second look.

use super::{BridgeError, Mapping, ReadMethod, Segment, PAGE_SIZE};

impl Mapping {
    /// One part's [`GuestRam::changed_pages`](crate::ram::GuestRam::changed_pages): `copy` is a
    /// copy of this mapping from offset 0. Each call copies live memory again, past a compiler
    /// fence, so it really looks again (the memory contract in the module doc).
    pub(crate) fn changed_pages(&self, copy: &[u8], page_size: usize) -> Result<Vec<usize>, BridgeError> {
        self.check_range(0, copy.len())?;
        self.check_file_len(0, copy.len())?;
        let page_size = page_size.max(1);
        let pages = copy.len().div_ceil(page_size);
        // Pages whose look fails (pread error, lseek error) count as changed: they prove nothing.
        let scan = |first: usize, last: usize| -> Vec<usize> {
            let start = first * page_size;
            let end = (last * page_size).min(copy.len());
            if start >= end {
                return Vec::new();
            }
            let Ok(live) = self.live_view(start, end - start) else { return (first..last).collect() };
            (first..last)
                .filter(|&page| {
                    let page_start = page * page_size;
                    let page_end = (page_start + page_size).min(copy.len());
                    !live.equals(self, page_start, &copy[page_start..page_end])
                })
                .collect()
        };
        let threads = Self::threads_for(copy.len());
        if threads <= 1 {
            let changed = scan(0, pages);
            self.check_intact()?;
            return Ok(changed);
        }
        let per_thread = pages.div_ceil(threads);
        let scan = &scan;
        let mut changed = std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads)
                .map(|index| {
                    let range = (index * per_thread).min(pages)..((index + 1) * per_thread).min(pages);
                    (range.clone(), scope.spawn(move || scan(range.start, range.end)))
                })
                .collect();
            let mut changed = scan(0, per_thread.min(pages));
            for (range, worker) in workers {
                // a worker that died proves nothing: count its pages as changed
                changed.extend(worker.join().unwrap_or_else(|_| range.collect()));
            }
            changed
        });
        changed.sort_unstable();
        self.check_intact()?;
        Ok(changed)
    }

    /// How to look at live memory again over `offset..offset + len`: its data and hole runs
    /// (holes are compared with zeros, never touched), or for hugetlbfs a fresh `pread`.
    fn live_view(&self, offset: usize, len: usize) -> Result<LiveView, BridgeError> {
        match self.method {
            ReadMethod::MappingWithHoles => Ok(LiveView::Mapped(self.segments(offset, len)?)),
            ReadMethod::Pread | ReadMethod::ProcessMemory => {
                let mut bytes = vec![0u8; len];
                self.read_copy(offset, &mut bytes)?;
                Ok(LiveView::Read { offset, bytes })
            }
        }
    }

    /// Whether live memory at `offset` equals `expected` now. Callers guarantee
    /// `offset + expected.len() <= self.len`.
    fn live_equals_unchecked(&self, offset: usize, expected: &[u8]) -> bool {
        debug_assert!(offset + expected.len() <= self.len);
        // a page at a time into a buffer that stays in the L1 cache, then compared there: the
        // copy really loads live memory again (the fence in `copy_unchecked`), and both the
        // copy and the comparison run at vector speed, which volatile loads would not
        let mut buffer = [0u8; PAGE_SIZE];
        expected.chunks(buffer.len()).enumerate().all(|(index, part)| {
            let live = &mut buffer[..part.len()];
            self.copy_unchecked(offset + index * PAGE_SIZE, live);
            live == part
        })
    }
}

/// Live memory looked at again, for the consistency check.
enum LiveView {
    /// The data and hole runs of the range: data is copied from the mapping again, a page at a
    /// time (`live_equals_unchecked`).
    Mapped(Vec<Segment>),
    /// A fresh `pread` of the range (hugetlbfs).
    Read { offset: usize, bytes: Vec<u8> },
}

impl LiveView {
    /// Whether the live bytes at `offset` (inside the view) equal `expected`.
    fn equals(&self, mapping: &Mapping, offset: usize, expected: &[u8]) -> bool {
        let end = offset + expected.len();
        match self {
            LiveView::Read { offset: start, bytes } => bytes[offset - start..end - start] == *expected,
            LiveView::Mapped(segments) => {
                segments.iter().filter(|s| s.start < end && s.end > offset).all(|segment| {
                    let (from, to) = (segment.start.max(offset), segment.end.min(end));
                    let part = &expected[from - offset..to - offset];
                    if segment.data {
                        mapping.live_equals_unchecked(from, part)
                    } else {
                        part.iter().all(|&byte| byte == 0)
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{mapped, write_at};

    /// Pages whose size is not a multiple of 8 start at unaligned addresses: a change in their
    /// first bytes must still be seen (it was not, before the head bytes were compared).
    #[test]
    fn changes_in_unaligned_pages_are_found_in_every_byte() {
        let (file, mapping, bytes) = mapped(1000);
        for page_size in [1, 3, 7, 13, 100, 1000] {
            for changed_byte in [0, 1, 5, 7, 8, 99, 500, 999] {
                let mut expected = bytes.clone();
                expected[changed_byte] ^= 0xff;
                let changed = mapping.changed_pages(&expected, page_size).unwrap();
                assert_eq!(
                    changed,
                    vec![changed_byte / page_size],
                    "page size {page_size}, byte {changed_byte}"
                );
            }
            assert_eq!(mapping.changed_pages(&bytes, page_size).unwrap(), Vec::<usize>::new());
        }
        // and a change made under the mapping is seen against an old copy
        write_at(&file, 333, &[bytes[333] ^ 1]);
        assert_eq!(mapping.changed_pages(&bytes, 10).unwrap(), vec![33]);
    }
}
