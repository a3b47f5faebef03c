//! Which pages of guest RAM changed, at the cost of what is looked at, never of a copy of RAM.
//!
//! [`Fingerprints`] keeps one 64-bit XXH3 hash per 4 KiB page (8 bytes a page: 8 MiB for a
//! 4 GiB guest, 0.2 % of it) and re-checks pages against them: a page whose hash moved changed.
//! Holes of the RAM file have a fingerprint of their own and are never read (reading a hole
//! through the mapping would allocate it); a hole that the guest filled is data at the next look
//! and reported as changed.
//!
//! Looking at every page on every frame of a 60 Hz picture cannot be done for big guests (4 GiB
//! sixty times a second is 240 GB/s), so a tracker is asked to look for a while
//! ([`Fingerprints::rescan_until`]): it re-checks pages from where it stopped, wraps around, and
//! says how long its last complete sweep took ([`Fingerprints::last_sweep`]), the bound on how
//! stale any page of the picture can be. [`Fingerprints::sweep`] looks at everything once, for
//! callers that want every change between two points in time ([`Changes`]).
//!
//! Two consumers of one VM never disturb each other: a tracker holds only its own hashes and
//! changes nothing in the VM, the QEMU process or the kernel.
//!
//! A hash can in principle collide (a change missed); with 64 bits that is about one changed
//! page in 2^64.

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::guest_ram::GuestRam;
use super::{BridgeError, GuestLayout, PAGE_SIZE};

/// How a tracker finds changed pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackingMethod {
    /// A hash per page, re-checked within a CPU budget (works on every host and backend).
    Fingerprints,
}

impl std::fmt::Display for TrackingMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrackingMethod::Fingerprints => "fingerprints",
        })
    }
}

/// How changed pages of `info`'s VM are found on this host: today always by fingerprints (the
/// soft-dirty way of Linux hosts that have it is not built yet).
pub fn method_for(_info: &crate::vm::VmInfo) -> TrackingMethod {
    TrackingMethod::Fingerprints
}

/// The fingerprint of a page of a hole (no data page hashes to it: see [`fingerprint`]).
const HOLE: u64 = 0;
/// Pages looked at between two looks at the clock (1 MiB: about 0.15 ms).
const PAGES_PER_STEP: usize = 256;

/// The fingerprint of a data page: XXH3-64 of its bytes, never [`HOLE`].
fn fingerprint(bytes: &[u8]) -> u64 {
    match xxhash_rust::xxh3::xxh3_64(bytes) {
        HOLE => 1,
        hash => hash,
    }
}

/// A page's bytes as a tracker hands them to its caller: copied out of live memory into a
/// buffer of the tracker's (the caller may classify or store them), or `None` for a hole.
pub type PageBytes<'a> = Option<&'a [u8]>;

/// One fingerprint per page of a VM's RAM, and where the next look starts.
#[derive(Debug)]
pub struct Fingerprints {
    prints: Vec<u64>,
    /// The next page to look at.
    cursor: usize,
    /// When the sweep in progress started (at page 0).
    sweep_started: Instant,
    last_sweep: Option<Duration>,
}

impl Fingerprints {
    /// Fingerprints of all of `ram` now, calling `each(page, bytes)` for every page on the way
    /// (a picture classifies them) in order.
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`]).
    pub fn new(ram: &GuestRam, mut each: impl FnMut(usize, PageBytes)) -> Result<Self, BridgeError> {
        let started = Instant::now();
        let mut prints = vec![HOLE; ram.pages()];
        ram.for_each_page(|page, bytes| {
            if let Some(bytes) = bytes {
                prints[page] = fingerprint(bytes);
            }
            each(page, bytes);
        })?;
        Ok(Self { prints, cursor: 0, sweep_started: Instant::now(), last_sweep: Some(started.elapsed()) })
    }

    /// How changes are found.
    pub fn method(&self) -> TrackingMethod {
        TrackingMethod::Fingerprints
    }

    /// Pages tracked.
    pub fn pages(&self) -> usize {
        self.prints.len()
    }

    /// Bytes this tracker holds for its fingerprints.
    pub fn memory_bytes(&self) -> usize {
        self.prints.len() * std::mem::size_of::<u64>()
    }

    /// How long the last complete sweep over all pages took: every page was looked at within
    /// this long (plus the time since that sweep ended). `None` before the first.
    pub fn last_sweep(&self) -> Option<Duration> {
        self.last_sweep
    }

    /// Looks at pages from where the last look stopped, wrapping around at the end, until
    /// `deadline` passes (at least 256 pages, so that every call makes progress)
    /// or every page was looked at once. Calls `changed(page, bytes)` for each page whose bytes
    /// differ from its fingerprint (`None`: it became a hole) and records the new fingerprint.
    /// Returns the pages looked at.
    ///
    /// # Errors
    ///
    /// [`BridgeError::BufferLength`] when `ram` is not the RAM the tracker was made for (its
    /// size differs); as the copy ([`BridgeError::FileShrunk`]).
    pub fn rescan_until(
        &mut self,
        ram: &GuestRam,
        deadline: Instant,
        mut changed: impl FnMut(usize, PageBytes),
    ) -> Result<usize, BridgeError> {
        self.check_ram(ram)?;
        let pages = self.prints.len();
        let mut looked = 0;
        while looked < pages {
            let start = self.cursor;
            let end = (start + PAGES_PER_STEP).min(pages);
            self.look(ram, start..end, &mut changed)?;
            looked += end - start;
            self.cursor = end;
            if end == pages {
                self.cursor = 0;
                self.last_sweep = Some(self.sweep_started.elapsed());
                self.sweep_started = Instant::now();
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok(looked)
    }

    /// Looks at every page once, from the first, calling `changed` as
    /// [`rescan_until`](Self::rescan_until) does: every change made before the call is reported.
    ///
    /// # Errors
    ///
    /// As [`rescan_until`](Self::rescan_until).
    pub fn sweep(
        &mut self,
        ram: &GuestRam,
        mut changed: impl FnMut(usize, PageBytes),
    ) -> Result<(), BridgeError> {
        self.check_ram(ram)?;
        let started = Instant::now();
        self.look(ram, 0..self.prints.len(), &mut changed)?;
        self.cursor = 0;
        self.last_sweep = Some(started.elapsed());
        self.sweep_started = Instant::now();
        Ok(())
    }

    fn check_ram(&self, ram: &GuestRam) -> Result<(), BridgeError> {
        if ram.pages() != self.prints.len() {
            return Err(BridgeError::BufferLength {
                expected: self.prints.len() * PAGE_SIZE,
                actual: ram.pages() * PAGE_SIZE,
            });
        }
        Ok(())
    }

    fn look(
        &mut self,
        ram: &GuestRam,
        pages: Range<usize>,
        changed: &mut impl FnMut(usize, PageBytes),
    ) -> Result<(), BridgeError> {
        let prints = &mut self.prints;
        ram.for_each_page_in(pages, |page, bytes| {
            let print = bytes.map_or(HOLE, fingerprint);
            if prints[page] != print {
                prints[page] = print;
                changed(page, bytes);
            }
        })
    }
}

/// What changed in one interval of [`Changes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeSet {
    /// Pages of RAM whose bytes changed.
    pub pages: usize,
    /// The guest-physical ranges of those pages, merged where adjacent, in address order.
    pub ranges: Vec<Range<u64>>,
    /// Changed pages of the RAM file that no guest-physical address shows (on x86 the part of
    /// RAM under the VGA window and ROMs, 0xA0000-0xFFFFF).
    pub unmapped_pages: usize,
}

impl ChangeSet {
    /// The changed pages `pages` (RAM page numbers, ascending) of `ram`, placed by `layout`.
    pub fn of_pages(pages: &[usize], ram_len: usize, layout: &GuestLayout) -> Self {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut unmapped_pages = 0;
        for &page in pages {
            let offset = (page * PAGE_SIZE) as u64;
            let len = PAGE_SIZE.min(ram_len.saturating_sub(page * PAGE_SIZE)) as u64;
            let Some(gpa) = layout.gpa_of_offset(offset) else {
                unmapped_pages += 1;
                continue;
            };
            ranges.push(gpa..gpa + len);
        }
        ranges.sort_by_key(|range| range.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => merged.push(range),
            }
        }
        Self { pages: pages.len(), ranges: merged, unmapped_pages }
    }
}

/// Every interval, what changed in a VM's RAM since the last: an iterator that waits out each
/// interval, then looks at all of RAM once (a whole [`Fingerprints::sweep`], so nothing written
/// before the look is missed).
#[derive(Debug)]
pub struct Changes<'a> {
    ram: &'a GuestRam,
    layout: &'a GuestLayout,
    prints: Fingerprints,
    interval: Duration,
    next: Instant,
}

impl<'a> Changes<'a> {
    /// Starts tracking `ram` (placed by `layout`) now; the first item comes after `interval`.
    ///
    /// # Errors
    ///
    /// As [`Fingerprints::new`].
    pub fn new(ram: &'a GuestRam, layout: &'a GuestLayout, interval: Duration) -> Result<Self, BridgeError> {
        let prints = Fingerprints::new(ram, |_, _| {})?;
        Ok(Self { ram, layout, prints, interval, next: Instant::now() + interval })
    }

    /// How changes are found.
    pub fn method(&self) -> TrackingMethod {
        self.prints.method()
    }

    /// How long the last look at all of RAM took.
    pub fn last_sweep(&self) -> Option<Duration> {
        self.prints.last_sweep()
    }
}

impl Iterator for Changes<'_> {
    type Item = Result<ChangeSet, BridgeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = Instant::now().max(self.next) + self.interval;
        let mut pages = Vec::new();
        let swept = self.prints.sweep(self.ram, |page, _| pages.push(page));
        Some(swept.map(|()| ChangeSet::of_pages(&pages, self.ram.len(), self.layout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::Mapping;
    use std::os::unix::fs::FileExt;

    fn ram_file(pages: usize, data: &[usize]) -> (tempfile::NamedTempFile, GuestRam) {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len((pages * PAGE_SIZE) as u64).unwrap();
        for &page in data {
            file.as_file().write_all_at(&[page as u8 | 1; PAGE_SIZE], (page * PAGE_SIZE) as u64).unwrap();
        }
        let ram = GuestRam::from(Mapping::open(file.path()).unwrap());
        (file, ram)
    }

    fn allocated(file: &tempfile::NamedTempFile) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.as_file().metadata().unwrap().blocks() * 512
    }

    #[test]
    fn every_written_page_is_reported_once_and_holes_stay_unallocated() {
        let (file, ram) = ram_file(1024, &[3, 500]);
        let mut seen = Vec::new();
        let mut prints = Fingerprints::new(&ram, |page, bytes| seen.push((page, bytes.is_some()))).unwrap();
        assert_eq!(seen.len(), 1024);
        assert_eq!(seen.iter().filter(|(_, data)| *data).count(), 2);
        assert_eq!(prints.memory_bytes(), 1024 * 8);
        let before = allocated(&file);
        assert_eq!(before, 2 * PAGE_SIZE as u64, "only the written pages hold memory");

        // nothing written: nothing reported
        let mut changed = Vec::new();
        prints.sweep(&ram, |page, _| changed.push(page)).unwrap();
        assert!(changed.is_empty(), "{changed:?}");

        // one byte of a data page, the last byte of another, a hole filled
        file.as_file().write_all_at(&[0xee], 3 * PAGE_SIZE as u64 + 17).unwrap();
        file.as_file().write_all_at(&[0xee], 501 * PAGE_SIZE as u64 - 1).unwrap();
        file.as_file().write_all_at(&[0xee], 1023 * PAGE_SIZE as u64).unwrap();
        let mut changed = Vec::new();
        prints.sweep(&ram, |page, bytes| changed.push((page, bytes.map(|b| b.len())))).unwrap();
        assert_eq!(changed, vec![(3, Some(PAGE_SIZE)), (500, Some(PAGE_SIZE)), (1023, Some(PAGE_SIZE))]);
        assert_eq!(allocated(&file), 3 * PAGE_SIZE as u64, "the look allocated no hole");

        // a page punched back to a hole is a change too
        nix::fcntl::fallocate(
            file.as_file(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            500 * PAGE_SIZE as i64,
            PAGE_SIZE as i64,
        )
        .unwrap();
        let mut changed = Vec::new();
        prints.sweep(&ram, |page, bytes| changed.push((page, bytes.is_some()))).unwrap();
        assert_eq!(changed, vec![(500, false)]);
    }

    #[test]
    fn rescans_resume_where_they_stopped_and_sweeps_are_timed() {
        let pages = 4 * PAGES_PER_STEP + 3;
        let (file, ram) = ram_file(pages, &(0..pages).collect::<Vec<_>>());
        let mut prints = Fingerprints::new(&ram, |_, _| {}).unwrap();
        // a deadline in the past: one step per call, the cursor moves on
        let past = Instant::now();
        let mut looked = 0;
        for _ in 0..4 {
            looked += prints.rescan_until(&ram, past, |_, _| {}).unwrap();
        }
        assert_eq!(looked, 4 * PAGES_PER_STEP);
        // the page written behind the cursor is found on the next round, the one ahead now
        file.as_file().write_all_at(&[0], 5).unwrap();
        file.as_file().write_all_at(&[0], (pages as u64 - 1) * PAGE_SIZE as u64).unwrap();
        let mut changed = Vec::new();
        let looked =
            prints.rescan_until(&ram, Instant::now() + Duration::from_secs(60), |page, _| changed.push(page));
        assert_eq!(looked.unwrap(), pages, "at most one sweep per call");
        assert_eq!(changed, vec![pages - 1, 0]);
        assert!(prints.last_sweep().is_some());
    }

    #[test]
    fn a_tracker_refuses_ram_of_another_size() {
        let (_a, small) = ram_file(4, &[]);
        let (_b, large) = ram_file(8, &[]);
        let mut prints = Fingerprints::new(&small, |_, _| {}).unwrap();
        assert!(matches!(prints.sweep(&large, |_, _| {}), Err(BridgeError::BufferLength { .. })));
    }

    #[test]
    fn change_sets_merge_adjacent_pages_into_guest_physical_ranges() {
        // q35 with 3 GiB: 2 GiB below 4 GiB, the rest above
        let layout = GuestLayout::from_split(2 << 30, 1 << 30);
        let below_end = (2usize << 30) / PAGE_SIZE;
        let pages = [1, 2, 3, 7, below_end - 1, below_end, below_end + 1];
        let set = ChangeSet::of_pages(&pages, 3 << 30, &layout);
        assert_eq!(set.pages, 7);
        assert_eq!(set.unmapped_pages, 0);
        let page = PAGE_SIZE as u64;
        assert_eq!(
            set.ranges,
            vec![
                page..4 * page,
                7 * page..8 * page,
                (2 << 30) - page..2 << 30,
                4 << 30..(4 << 30) + 2 * page,
            ]
        );
    }
}
