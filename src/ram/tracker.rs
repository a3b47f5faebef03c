//! Which pages of guest RAM changed, at the cost of what is looked at, never of a copy of RAM.
//!
//! [`Fingerprints`] keeps one 64-bit XXH3 hash per 4 KiB page (8 bytes a page: 8 MiB for a
//! 4 GiB guest, 0.2 % of it) and re-checks pages against them: a page whose hash moved changed.
//! Holes of the RAM file have a fingerprint of their own and are never read (reading a hole
//! through the mapping would allocate it); a hole that the guest filled is data at the next look
//! and reported as changed.
//!
//! Which pages it re-checks depends on the host ([`TrackingMethod`]):
//! - **soft-dirty** (Linux hosts built with `CONFIG_MEM_SOFT_DIRTY`, RAM in a file, a memfd or
//!   private to QEMU, and permission to write the QEMU process's `clear_refs`: see
//!   [`super::soft_dirty`]): the kernel says which pages QEMU's process wrote; only those are
//!   hashed. Reading the bits costs about 9 ns a page, so a tracker reads them within a small
//!   share of a core ([`PAGEMAP_SHARE`]) and keeps a slower fingerprint sweep
//!   ([`BACKGROUND_SHARE`]) for writes by other processes, which set no bit of QEMU's. After a
//!   clear (by any tracker of that QEMU) it looks at every page once more within its budget.
//! - **fingerprints** everywhere else: looking at every page on every frame of a 60 Hz picture
//!   cannot be done for big guests (4 GiB sixty times a second is 240 GB/s), so a tracker is
//!   asked to look for a while ([`Fingerprints::rescan_until`]): it re-checks pages from where it
//!   stopped, wraps around, and says how long its last complete sweep took
//!   ([`Fingerprints::last_sweep`]), the bound on how stale any page of the picture can be.
//!
//! [`Fingerprints::sweep`] looks at everything once (soft-dirty: every dirty page), for callers
//! that want every change between two points in time ([`Changes`]).
//!
//! Two consumers of one VM never disturb each other: a fingerprint tracker changes nothing in
//! the VM, the QEMU process or the kernel, and soft-dirty trackers coordinate their clears
//! through the QEMU process's record ([`super::soft_dirty`]).
//!
//! A hash can in principle collide (a change missed); with 64 bits that is about one changed
//! page in 2^64.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::guest_ram::GuestRam;
use super::soft_dirty::{SoftDirty, SoftDirtyError, Unavailable};
use super::{BridgeError, GuestLayout, PAGE_SIZE};

/// How a tracker finds changed pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackingMethod {
    /// A hash per page, re-checked within a CPU budget (works on every host and backend).
    Fingerprints,
    /// The host kernel's soft-dirty bits of the QEMU process say which pages to re-check.
    SoftDirty,
}

impl std::fmt::Display for TrackingMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrackingMethod::Fingerprints => "fingerprints",
            TrackingMethod::SoftDirty => "soft-dirty",
        })
    }
}

/// The soft-dirty source of `ram` in QEMU process `qemu_pid`, or why there is none (then
/// trackers use fingerprints). Changes nothing.
///
/// # Errors
///
/// [`Unavailable`] saying why the way of soft-dirty bits cannot be used.
pub fn soft_dirty_for(qemu_pid: u32, ram: &GuestRam) -> Result<Arc<SoftDirty>, Unavailable> {
    SoftDirty::open(qemu_pid, ram).map(Arc::new)
}

/// How changed pages of the RAM of QEMU process `qemu_pid` are found on this host (what
/// [`soft_dirty_for`] would find, short of mapping its RAM): soft-dirty bits where the kernel
/// lets this process read and clear them, but not for RAM on hugetlbfs (whose pages carry
/// none); fingerprints elsewhere.
pub fn method(qemu_pid: u32, on_hugetlbfs: bool) -> TrackingMethod {
    match super::soft_dirty::may_track(qemu_pid) {
        Ok(()) if !on_hugetlbfs => TrackingMethod::SoftDirty,
        Ok(()) => TrackingMethod::Fingerprints,
        Err(why) => {
            log::debug!("QEMU process {qemu_pid}: fingerprints: {why}");
            TrackingMethod::Fingerprints
        }
    }
}

/// Share of one core a soft-dirty tracker spends reading the bits (4 GiB of RAM: 1 M entries,
/// about 35 ms to read here, so a pass about every 1.2 s; 64 MiB: every frame).
pub const PAGEMAP_SHARE: f64 = 0.03;
/// Share of one core a soft-dirty tracker spends on its fingerprint sweep for writes that set
/// no soft-dirty bit of QEMU's (by other processes into the RAM file).
pub const BACKGROUND_SHARE: f64 = 0.01;
/// Pages whose bits are read at once (16 MiB of RAM, 32 KiB of entries).
const PAGEMAP_CHUNK: usize = 4096;
/// Credit a pacer can save up while it is not asked.
const MAX_CREDIT: f64 = 0.05;

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

/// Spends a share of one core: credit grows with wall time, work spends it.
#[derive(Debug)]
struct Pacer {
    share: f64,
    /// Seconds of work allowed now.
    credit: f64,
    last: Instant,
}

impl Pacer {
    fn new(share: f64) -> Self {
        Self { share, credit: 0.0, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.credit = (self.credit + (now - self.last).as_secs_f64() * self.share).min(MAX_CREDIT);
        self.last = now;
    }

    fn has_credit(&self) -> bool {
        self.credit > 0.0
    }

    fn spend(&mut self, work: Duration) {
        self.credit -= work.as_secs_f64();
    }
}

/// What a tracker keeps when soft-dirty bits tell it which pages to look at.
#[derive(Debug)]
struct SoftState {
    source: Arc<SoftDirty>,
    /// The record's generation the tracker's fingerprints are exact for (bits of another one
    /// do not cover the time since the last look).
    generation: u64,
    /// The next page whose bit is read.
    cursor: usize,
    pass_started: Instant,
    last_pass: Option<Duration>,
    /// Pages a whole fingerprint sweep still owes, since a clear was seen.
    owed: usize,
    pagemap: Pacer,
    background: Pacer,
    /// The pages the last read of the bits found dirty ...
    dirty: Vec<usize>,
    /// ... of which this many are hashed.
    hashed: usize,
    /// Pages hashed because their bit read dirty, since the generation began.
    rehashed: usize,
}

impl SoftState {
    /// Takes note of the generation the bits just read belong to: another than before means a
    /// clear since the last look, whose lost bits a sweep of every page makes up for.
    fn note_generation(&mut self, generation: u64, pages: usize) {
        if generation != self.generation {
            self.generation = generation;
            self.owed = pages;
            self.rehashed = 0;
        }
    }

    /// Clears the QEMU process's bits when the pages re-hashed for their bits since the last
    /// clear add up to a whole sweep (what a clear costs every tracker: a rent-or-buy rule, so
    /// that a guest writing ever more pages costs at most twice what the best schedule of
    /// clears would), once the sweep the last clear owed is done and no clear was recent.
    fn clear_if_due(&mut self) -> Result<(), SoftDirtyError> {
        if self.owed == 0 && self.rehashed >= self.source.pages() && self.source.generation()?.may_clear() {
            self.source.clear()?;
        }
        Ok(())
    }
}

/// Why a look stopped: RAM could not be read (an error for the caller), or the soft-dirty bits
/// could not (the tracker goes on with fingerprints alone).
enum LookError {
    Ram(BridgeError),
    Bits(SoftDirtyError),
}

impl From<BridgeError> for LookError {
    fn from(err: BridgeError) -> Self {
        LookError::Ram(err)
    }
}

impl From<SoftDirtyError> for LookError {
    fn from(err: SoftDirtyError) -> Self {
        LookError::Bits(err)
    }
}

/// The runs of consecutive pages in `pages` (ascending).
pub(crate) fn runs(pages: &[usize]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut rest = pages;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let len = rest.iter().enumerate().take_while(|&(index, &page)| page == first + index).count();
        rest = &rest[len..];
        Some(first..first + len)
    })
}

/// One fingerprint per page of a VM's RAM, and where the next look starts.
#[derive(Debug)]
pub struct Fingerprints {
    prints: Vec<u64>,
    /// The next page to look at.
    cursor: usize,
    /// When the sweep in progress started (at page 0).
    sweep_started: Instant,
    last_sweep: Option<Duration>,
    soft: Option<SoftState>,
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
        Ok(Self {
            prints,
            cursor: 0,
            sweep_started: Instant::now(),
            last_sweep: Some(started.elapsed()),
            soft: None,
        })
    }

    /// As [`new`](Self::new), then told by `source`'s soft-dirty bits which pages to look at
    /// (see [`soft_dirty_for`]). Clears the QEMU process's bits first if nobody of ours ever
    /// did (until then every page reads dirty). A source that fails leaves a tracker of
    /// fingerprints alone, with a warning.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_soft_dirty(
        ram: &GuestRam,
        source: Arc<SoftDirty>,
        each: impl FnMut(usize, PageBytes),
    ) -> Result<Self, BridgeError> {
        // the generation is read before the pages are: a write during the first look sets a bit
        // of that generation, and a clear during it is a generation the first pass sees
        let generation = source.generation().and_then(|generation| match generation.count {
            0 => source.clear(),
            _ => Ok(generation),
        });
        let mut prints = Self::new(ram, each)?;
        match generation {
            Ok(generation) if source.pages() == prints.pages() => {
                prints.soft = Some(SoftState {
                    source,
                    generation: generation.count,
                    cursor: 0,
                    pass_started: Instant::now(),
                    last_pass: None,
                    owed: 0,
                    pagemap: Pacer::new(PAGEMAP_SHARE),
                    background: Pacer::new(BACKGROUND_SHARE),
                    dirty: Vec::new(),
                    hashed: 0,
                    rehashed: 0,
                })
            }
            Ok(_) => log::warn!("soft-dirty source of another RAM size: tracking by fingerprints"),
            Err(err) => log::warn!("{}: tracking by fingerprints", crate::error::chain(&err)),
        }
        Ok(prints)
    }

    /// How changes are found.
    pub fn method(&self) -> TrackingMethod {
        if self.soft.is_some() {
            TrackingMethod::SoftDirty
        } else {
            TrackingMethod::Fingerprints
        }
    }

    /// Pages tracked.
    pub fn pages(&self) -> usize {
        self.prints.len()
    }

    /// Bytes this tracker holds for its fingerprints.
    pub fn memory_bytes(&self) -> usize {
        self.prints.len() * std::mem::size_of::<u64>()
            + self.soft.as_ref().map_or(0, |soft| soft.dirty.capacity() * std::mem::size_of::<usize>())
    }

    /// How long it takes until a write is seen: for fingerprints the last complete sweep over
    /// all pages, for soft-dirty the last pass over every page's bit (writes by QEMU's process;
    /// others within [`last_full_sweep`](Self::last_full_sweep)). `None` before the first.
    pub fn last_sweep(&self) -> Option<Duration> {
        match &self.soft {
            Some(soft) => soft.last_pass,
            None => self.last_sweep,
        }
    }

    /// How long the last complete fingerprint sweep over all pages took: every change of any
    /// origin is seen within this long.
    pub fn last_full_sweep(&self) -> Option<Duration> {
        self.last_sweep
    }

    /// Looks at pages from where the last look stopped until `deadline` passes (at least 256
    /// pages, so that every call makes progress), at most one pass over all pages per call, and
    /// calls `changed(page, bytes)` for each page whose bytes differ from its fingerprint
    /// (`None`: it became a hole) and records the new fingerprint. With fingerprints alone it
    /// hashes pages in turn, wrapping around; with soft-dirty bits it reads the next share of the
    /// bits (within `PAGEMAP_SHARE` of a core) and hashes the pages that read dirty, then
    /// any sweep a clear owes, then its background sweep. Returns the pages hashed.
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
        let Some(mut soft) = self.soft.take() else {
            let pages = self.prints.len();
            let mut looked = 0;
            while looked < pages {
                looked += self.step(ram, &mut changed)?;
                if Instant::now() >= deadline {
                    break;
                }
            }
            return Ok(looked);
        };
        let looked = self.rescan_soft(&mut soft, ram, deadline, &mut changed);
        self.keep_soft(soft, looked)
    }

    /// Looks at every page once, from the first, calling `changed` as
    /// [`rescan_until`](Self::rescan_until) does: every change made before the call is reported
    /// (soft-dirty: every write by QEMU's process; a whole look after a clear).
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
        if let Some(mut soft) = self.soft.take() {
            let looked = self.sweep_soft(&mut soft, ram, &mut changed);
            return self.keep_soft(soft, looked).map(drop);
        }
        self.sweep_all(ram, &mut changed)
    }

    fn sweep_all(
        &mut self,
        ram: &GuestRam,
        changed: &mut impl FnMut(usize, PageBytes),
    ) -> Result<(), BridgeError> {
        let started = Instant::now();
        self.look(ram, 0..self.prints.len(), changed)?;
        self.cursor = 0;
        self.last_sweep = Some(started.elapsed());
        self.sweep_started = Instant::now();
        Ok(())
    }

    /// Puts the soft-dirty state back after a look, or drops it (fingerprints from now on) when
    /// the bits could not be read.
    fn keep_soft(&mut self, soft: SoftState, looked: Result<usize, LookError>) -> Result<usize, BridgeError> {
        match looked {
            Ok(looked) => {
                self.soft = Some(soft);
                Ok(looked)
            }
            Err(LookError::Ram(err)) => {
                self.soft = Some(soft);
                Err(err)
            }
            Err(LookError::Bits(err)) => {
                log::warn!("{}: tracking by fingerprints from now on", crate::error::chain(&err));
                Ok(0)
            }
        }
    }

    /// Hashes the next [`PAGES_PER_STEP`] pages of the sweep; returns how many.
    fn step(
        &mut self,
        ram: &GuestRam,
        changed: &mut impl FnMut(usize, PageBytes),
    ) -> Result<usize, BridgeError> {
        let pages = self.prints.len();
        let start = self.cursor;
        let end = (start + PAGES_PER_STEP).min(pages);
        self.look(ram, start..end, changed)?;
        self.cursor = end;
        if end == pages {
            self.cursor = 0;
            self.last_sweep = Some(self.sweep_started.elapsed());
            self.sweep_started = Instant::now();
        }
        Ok(end - start)
    }

    fn rescan_soft(
        &mut self,
        soft: &mut SoftState,
        ram: &GuestRam,
        deadline: Instant,
        changed: &mut impl FnMut(usize, PageBytes),
    ) -> Result<usize, LookError> {
        let pages = self.prints.len();
        let mut looked = 0;
        let mut passed = false;
        soft.pagemap.refill();
        soft.background.refill();
        while Instant::now() < deadline {
            // the pages the last read found dirty first, a step at a time
            if soft.hashed < soft.dirty.len() {
                let end = (soft.hashed + PAGES_PER_STEP).min(soft.dirty.len());
                for run in runs(&soft.dirty[soft.hashed..end]) {
                    self.look(ram, run, changed)?;
                }
                looked += end - soft.hashed;
                soft.rehashed += end - soft.hashed;
                soft.hashed = end;
                continue;
            }
            if passed || !soft.pagemap.has_credit() {
                break;
            }
            let chunk = soft.cursor..(soft.cursor + PAGEMAP_CHUNK).min(pages);
            let reading = Instant::now();
            let generation = soft.source.dirty_pages(chunk.clone(), &mut soft.dirty)?;
            soft.pagemap.spend(reading.elapsed());
            soft.hashed = 0;
            soft.note_generation(generation.count, pages);
            soft.cursor = chunk.end;
            if soft.cursor == pages {
                soft.cursor = 0;
                soft.last_pass = Some(soft.pass_started.elapsed());
                soft.pass_started = Instant::now();
                soft.clear_if_due()?;
                passed = true; // at most one pass a call
            }
        }
        // every page once after a clear, within the caller's budget
        while soft.owed > 0 && Instant::now() < deadline {
            let stepped = self.step(ram, changed)?;
            soft.owed = soft.owed.saturating_sub(stepped);
            looked += stepped;
        }
        while soft.owed == 0 && soft.background.has_credit() && Instant::now() < deadline {
            let hashing = Instant::now();
            looked += self.step(ram, changed)?;
            soft.background.spend(hashing.elapsed());
        }
        Ok(looked)
    }

    fn sweep_soft(
        &mut self,
        soft: &mut SoftState,
        ram: &GuestRam,
        changed: &mut impl FnMut(usize, PageBytes),
    ) -> Result<usize, LookError> {
        let pages = self.prints.len();
        let generation = soft.source.dirty_pages(0..pages, &mut soft.dirty)?;
        soft.note_generation(generation.count, pages);
        if soft.owed > 0 {
            self.sweep_all(ram, changed)?;
            soft.owed = 0;
        } else {
            for run in runs(&soft.dirty) {
                self.look(ram, run, changed)?;
            }
            soft.rehashed += soft.dirty.len();
        }
        soft.hashed = soft.dirty.len();
        soft.cursor = 0;
        soft.clear_if_due()?;
        Ok(pages)
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
/// before the look is missed). It reads through `B`, a borrowed bridge or a shared one (an
/// `Arc`, for an owner that outlives the caller's frame, such as the Python binding's).
#[derive(Debug)]
pub struct Changes<B> {
    bridge: B,
    prints: Fingerprints,
    interval: Duration,
    next: Instant,
}

impl<B: std::ops::Deref<Target = super::SharedMemoryBridge>> Changes<B> {
    /// Starts tracking the RAM of `bridge` (placed by its layout) now, by fingerprints or,
    /// given a source, by soft-dirty bits; the first item comes after `interval`.
    ///
    /// # Errors
    ///
    /// As [`Fingerprints::new`].
    pub fn new(
        bridge: B,
        interval: Duration,
        soft_dirty: Option<Arc<SoftDirty>>,
    ) -> Result<Self, BridgeError> {
        let ram = bridge.mapping();
        let prints = match soft_dirty {
            Some(source) => Fingerprints::with_soft_dirty(ram, source, |_, _| {})?,
            None => Fingerprints::new(ram, |_, _| {})?,
        };
        Ok(Self { bridge, prints, interval, next: Instant::now() + interval })
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

impl<B: std::ops::Deref<Target = super::SharedMemoryBridge>> Iterator for Changes<B> {
    type Item = Result<ChangeSet, BridgeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = Instant::now().max(self.next) + self.interval;
        let mut pages = Vec::new();
        let ram = self.bridge.mapping();
        let swept = self.prints.sweep(ram, |page, _| pages.push(page));
        Some(swept.map(|()| ChangeSet::of_pages(&pages, ram.len(), self.bridge.layout())))
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
    fn runs_of_pages_are_maximal_and_ordered() {
        let collect = |pages: &[usize]| runs(pages).collect::<Vec<_>>();
        assert_eq!(collect(&[]), vec![]);
        assert_eq!(collect(&[7]), vec![7..8]);
        assert_eq!(collect(&[0, 1, 2, 5, 6, 9]), vec![0..3, 5..7, 9..10]);
    }

    #[test]
    fn pacers_spend_only_their_share() {
        let mut pacer = Pacer::new(0.5);
        assert!(!pacer.has_credit(), "no credit before time passed");
        pacer.last -= Duration::from_millis(20);
        pacer.refill();
        assert!(pacer.has_credit());
        pacer.spend(Duration::from_millis(11));
        assert!(!pacer.has_credit(), "10 ms of credit for 20 ms at half a core");
        // credit saved up while not asked is capped
        pacer.last -= Duration::from_secs(100);
        pacer.refill();
        assert!(pacer.credit <= MAX_CREDIT);
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
