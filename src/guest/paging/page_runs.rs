//! The enumeration of a page table's mappings ([`Paging::page_runs`]): a depth-first walk of
//! the tables over a range of virtual addresses, one frame per level, that merges pages
//! contiguous in both address spaces into runs and holds about 24 KiB whatever the tables say.

use std::ops::RangeBounds;

use super::*;

/// The offsets (see [`offset_of_va`]) of the first and last canonical addresses of `range`, or
/// `None` when it has none. Canonical addresses sorted are the user half, then the kernel half:
/// in the same order as their offsets, so the canonical addresses of a range are one span of
/// offsets.
pub(super) fn offset_span(mode: PagingMode, range: impl RangeBounds<Gva>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&Gva(start)) => start,
        Bound::Excluded(&Gva(start)) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&Gva(end)) => end,
        Bound::Excluded(&Gva(end)) => end.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    let user_last = mode.space_size() / 2 - 1;
    let kernel_first = (mode.space_size() / 2).wrapping_neg();
    let in_hole = |va: u64| va > user_last && va < kernel_first;
    let start = if in_hole(start) { kernel_first } else { start };
    let end = if in_hole(end) { user_last } else { end };
    (start <= end).then(|| (offset_of_va(mode, Gva(start)), offset_of_va(mode, Gva(end))))
}

/// One table of the walk in progress: the entries of it that the range needs.
struct Frame {
    level: Level,
    /// The offset of the first address that entry 0 of the table maps.
    base: u64,
    /// Entries `first..first + entries.len()` of the table.
    entries: Vec<u64>,
    first: usize,
    /// The next entry to look at.
    next: usize,
    /// What the entries above this table allow.
    access: Access,
}

/// What one step of the walk found.
enum Step {
    /// Nothing to report yet.
    Continue,
    Page(PageRun),
    /// An error item; the walk goes on.
    Error(PagingError),
    /// A limit was reached: this error, then the end.
    Stop(PagingError),
    /// The range is walked.
    Done,
}

/// The iterator of [`Paging::page_runs`]: a depth-first walk of the tables over the range,
/// one frame per level, with a cap on entries read and items yielded.
pub struct PageRuns<'a, M: ?Sized> {
    paging: Paging,
    memory: &'a M,
    limits: Limits,
    /// Offsets of the first and last address of the range, or `None` when it is empty.
    span: Option<(u64, u64)>,
    /// One frame per level, reused; `frames[..depth]` are the walk in progress.
    frames: Vec<Frame>,
    depth: usize,
    /// The bytes of the entries being read.
    scratch: Vec<u8>,
    started: bool,
    finished: bool,
    entries_read: usize,
    yielded: usize,
    /// The run being merged, yielded when a page does not extend it.
    pending: Option<PageRun>,
    /// An error to yield after `pending`.
    queued: Option<PagingError>,
}

impl<'a, M: GuestMemory + ?Sized> PageRuns<'a, M> {
    pub(super) fn new(paging: Paging, memory: &'a M, span: Option<(u64, u64)>, limits: Limits) -> Self {
        let frames = paging
            .mode
            .levels()
            .iter()
            .map(|&level| Frame {
                level,
                base: 0,
                entries: Vec::with_capacity(ENTRIES_PER_TABLE),
                first: 0,
                next: 0,
                access: Access::ALL,
            })
            .collect();
        Self {
            paging,
            memory,
            limits,
            span,
            frames,
            depth: 0,
            scratch: vec![0; ENTRIES_PER_TABLE * ENTRY_BYTES],
            started: false,
            finished: false,
            entries_read: 0,
            yielded: 0,
            pending: None,
            queued: None,
        }
    }

    /// One entry further in the walk.
    fn step(&mut self) -> Step {
        if self.span.is_none() {
            return Step::Done;
        }
        if !self.started {
            self.started = true;
            return self.descend(0, self.paging.root, 0, Access::ALL);
        }
        let Some(frame) = self.depth.checked_sub(1).and_then(|top| self.frames.get_mut(top)) else {
            return Step::Done;
        };
        let Some(&entry) = frame.entries.get(frame.next - frame.first) else {
            self.depth -= 1;
            return Step::Continue;
        };
        let (level, index) = (frame.level, frame.next as u64);
        frame.next += 1;
        let offset = frame.base + (index << level.shift());
        if entry & PRESENT == 0 {
            return Step::Continue;
        }
        let mode = self.paging.mode;
        let decoded = (mode.mmu().decode)(level, entry);
        let leaf = matches!(decoded, Entry::Page { .. });
        let access = (mode.mmu().access)(frame.access, entry, leaf, self.paging.no_execute_enabled);
        let va = Gva(mode.sign_extend(offset));
        match decoded {
            Entry::Table(table) => self.descend(self.depth, table, offset, access),
            Entry::Page { base, size } => Step::Page(PageRun {
                va,
                len: size,
                gpa: Gpa(base),
                page_size: size,
                writable: access.writable,
                user: access.user,
                executable: access.executable,
            }),
            Entry::ReservedPageSize => Step::Error(PagingError::ReservedPageSize { va, level }),
            Entry::Reserved => Step::Error(PagingError::Reserved { va, level }),
        }
    }

    /// Reads the entries of the table at `table` that the range needs into frame `depth`;
    /// `base` is the offset of the first address the table maps.
    fn descend(&mut self, depth: usize, table: Gpa, base: u64, access: Access) -> Step {
        let (Some((first, last)), Some(frame)) = (self.span, self.frames.get_mut(depth)) else {
            return Step::Continue;
        };
        let level = frame.level;
        let table_last = base + ((ENTRIES_PER_TABLE as u64) << level.shift()) - 1;
        let (from, to) = (first.max(base), last.min(table_last));
        let va = Gva(self.paging.mode.sign_extend(from));
        if from > to {
            return Step::Continue;
        }
        let first_index = ((from - base) >> level.shift()) as usize;
        let count = ((to - base) >> level.shift()) as usize + 1 - first_index;
        if self.limits.max_entries_read.saturating_sub(self.entries_read) < count {
            return Step::Stop(PagingError::Truncated { limit: Limit::EntriesRead, resume_at: va });
        }
        self.entries_read += count;
        let bytes = &mut self.scratch[..count * ENTRY_BYTES];
        let at = Gpa(table.0 + (first_index * ENTRY_BYTES) as u64);
        if let Err(source) = self.memory.read_at(at, bytes) {
            return Step::Error(PagingError::Table { va, level, source });
        }
        frame.entries.clear();
        frame.entries.extend(bytes.chunks_exact(ENTRY_BYTES).map(|chunk| {
            let mut word = [0u8; ENTRY_BYTES];
            word.copy_from_slice(chunk);
            u64::from_le_bytes(word)
        }));
        (frame.base, frame.first, frame.next, frame.access) = (base, first_index, first_index, access);
        self.depth = depth + 1;
        Step::Continue
    }

    /// Extends the pending run with `page`, or makes `page` the pending run and returns the
    /// finished one.
    fn merge(&mut self, page: PageRun) -> Option<PageRun> {
        if let Some(run) = &mut self.pending {
            let extends = run.page_size == page.page_size
                && run.permissions() == page.permissions()
                && run.va.checked_add(run.len) == Some(page.va)
                && run.gpa.checked_add(run.len) == Some(page.gpa);
            if extends {
                run.len += page.len;
                return None;
            }
        }
        self.pending.replace(page)
    }

    /// `item`, counted against [`Limits::max_mappings`], or the truncation in its place.
    fn deliver(&mut self, item: Result<PageRun, PagingError>) -> Option<Result<PageRun, PagingError>> {
        if let Err(PagingError::Truncated { .. }) = item {
            return Some(item);
        }
        if self.yielded >= self.limits.max_mappings {
            let resume_at = match &item {
                Ok(mapping) => mapping.va,
                Err(
                    PagingError::Table { va, .. }
                    | PagingError::ReservedPageSize { va, .. }
                    | PagingError::Reserved { va, .. },
                ) => *va,
                Err(_) => Gva(self.span.map_or(0, |(first, _)| self.paging.mode.sign_extend(first))),
            };
            (self.finished, self.pending, self.queued) = (true, None, None);
            return Some(Err(PagingError::Truncated { limit: Limit::PageRuns, resume_at }));
        }
        self.yielded += 1;
        Some(item)
    }
}

impl<M: GuestMemory + ?Sized> Iterator for PageRuns<'_, M> {
    type Item = Result<PageRun, PagingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(error) = self.queued.take() {
                return self.deliver(Err(error));
            }
            if self.finished {
                let run = self.pending.take()?;
                return self.deliver(Ok(run));
            }
            match self.step() {
                Step::Continue => {}
                Step::Page(page) => {
                    if let Some(run) = self.merge(page) {
                        return self.deliver(Ok(run));
                    }
                }
                Step::Error(error) => self.queued = Some(error),
                Step::Stop(error) => (self.queued, self.finished) = (Some(error), true),
                Step::Done => self.finished = true,
            }
            // an error comes after the run before it
            if self.queued.is_some() {
                if let Some(run) = self.pending.take() {
                    return self.deliver(Ok(run));
                }
            }
        }
    }
}
