//! The one reader of kernel memory: virtual addresses through the kernel's own page tables, with
//! a cursor that keeps the last translations, as memflow's TLB cache does.
//!
//! Every walk of a kernel structure (tasks, modules, the log, processes, maple trees, the pid
//! tree) reads through a [`KernelReader`]. Reading the ten fields of a task costs ten copies
//! and, for all of them together, one page-table walk at most: the translations of the pages
//! read last are kept (a few dozen, whatever their size: the kernel's direct map is mostly 2 MiB
//! and 1 GiB pages), and a page not among them is walked from the table of the page before
//! where it can be.
//!
//! A reader lives for one request (one file opened, one command): its translations are those
//! of that moment. A kernel that changes its page tables during the request is read as the
//! tables were when each page was first translated, as a CPU's TLB would.

use std::cell::RefCell;

use super::{LinuxError, LinuxKernel};
use crate::guest::memory::{Gpa, GuestMemory, Gva};
use crate::guest::paging::{LeafTable, PagingError};

/// Translations kept (a linear search of this many entries costs less than one read of guest
/// memory).
const KEPT: usize = 32;

/// A kept translation: the page `va..va + size` is at `gpa`.
#[derive(Debug, Clone, Copy)]
struct Kept {
    va: u64,
    size: u64,
    gpa: u64,
}

#[derive(Debug, Default)]
struct Cursor {
    kept: Vec<Kept>,
    /// Where the next translation replaces one (round robin).
    next: usize,
    /// The table in which the last walk ended: the next walk starts there if it can.
    leaf: Option<LeafTable>,
    walks: u64,
}

impl Cursor {
    fn find(&self, Gva(va): Gva) -> Option<(u64, u64)> {
        self.kept
            .iter()
            .find(|kept| va.wrapping_sub(kept.va) < kept.size)
            .map(|kept| (kept.gpa + (va - kept.va), kept.size - (va - kept.va)))
    }

    fn keep(&mut self, kept: Kept) {
        if self.kept.len() < KEPT {
            self.kept.push(kept);
        } else {
            self.kept[self.next] = kept;
            self.next = (self.next + 1) % KEPT;
        }
    }
}

/// Kernel memory as one request reads it: `kernel`'s page tables over `memory`, with the
/// translations of the pages read last kept.
pub struct KernelReader<'a, M: ?Sized> {
    kernel: &'a LinuxKernel,
    memory: &'a M,
    cursor: RefCell<Cursor>,
}

impl<M: ?Sized> std::fmt::Debug for KernelReader<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelReader").field("kernel", &self.kernel).finish_non_exhaustive()
    }
}

impl<'a, M: GuestMemory + ?Sized> KernelReader<'a, M> {
    /// A reader of `kernel`'s memory in `memory`, with no translation kept yet.
    pub fn new(kernel: &'a LinuxKernel, memory: &'a M) -> Self {
        Self { kernel, memory, cursor: RefCell::new(Cursor::default()) }
    }

    /// The kernel read.
    pub fn kernel(&self) -> &'a LinuxKernel {
        self.kernel
    }

    /// The guest memory read.
    pub fn memory(&self) -> &'a M {
        self.memory
    }

    /// Page-table walks made so far (translations not kept).
    pub fn walks(&self) -> u64 {
        self.cursor.borrow().walks
    }

    /// The guest-physical address of kernel virtual address `va`, through the kept
    /// translations and the cursor.
    ///
    /// # Errors
    ///
    /// What the kernel's page tables say of `va` ([`PagingError`]).
    pub fn translate(&self, va: Gva) -> Result<Gpa, PagingError> {
        self.translate_page(va).map(|(gpa, _)| gpa)
    }

    /// Where `va` is, and how many bytes from it on are in the same page.
    fn translate_page(&self, va: Gva) -> Result<(Gpa, u64), PagingError> {
        let mut cursor = self.cursor.borrow_mut();
        if let Some((gpa, left)) = cursor.find(va) {
            return Ok((Gpa(gpa), left));
        }
        let (page, leaf) = self.kernel.paging().walk(self.memory, va, cursor.leaf)?;
        cursor.leaf = Some(leaf);
        cursor.walks += 1;
        let within = va.0 & (page.page_size - 1);
        cursor.keep(Kept { va: va.0 - within, size: page.page_size, gpa: page.gpa.0 - within });
        Ok((page.gpa, page.page_size - within))
    }

    fn read_virtual(&self, va: Gva, buf: &mut [u8]) -> Result<(), PagingError> {
        crate::guest::paging::read_pages(self.memory, va, buf, |at| self.translate_page(at))
    }

    /// Fills `buf` with the kernel's bytes at virtual address `va` (`what` names them in an
    /// error).
    ///
    /// # Errors
    ///
    /// [`LinuxError::Read`] when the kernel's tables do not map all of it to RAM.
    pub fn read(&self, va: Gva, buf: &mut [u8], what: &'static str) -> Result<(), LinuxError> {
        self.read_virtual(va, buf).map_err(|source| LinuxError::Read { what, source })
    }

    /// `len` bytes at `va`.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn bytes(&self, va: Gva, len: usize, what: &'static str) -> Result<Vec<u8>, LinuxError> {
        let mut bytes = vec![0u8; len];
        self.read(va, &mut bytes, what)?;
        Ok(bytes)
    }

    /// The little-endian u64 at `va`.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn u64(&self, va: Gva, what: &'static str) -> Result<u64, LinuxError> {
        let mut bytes = [0u8; 8];
        self.read(va, &mut bytes, what)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The pointer at `va`: the little-endian u64 there, as an address.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn pointer(&self, va: Gva, what: &'static str) -> Result<Gva, LinuxError> {
        self.u64(va, what).map(Gva)
    }

    /// The little-endian u32 at `va`.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn u32(&self, va: Gva, what: &'static str) -> Result<u32, LinuxError> {
        let mut bytes = [0u8; 4];
        self.read(va, &mut bytes, what)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// A C string of at most `max` bytes at `va` (the bytes before its NUL, or all `max` of
    /// them), read page by page so that a short string at the end of a mapping reads.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Read`] when its first byte is not mapped.
    pub fn c_string(&self, va: Gva, max: usize, what: &'static str) -> Result<Vec<u8>, LinuxError> {
        let mut bytes = Vec::new();
        let mut at = va;
        while bytes.len() < max {
            let room = (crate::ram::PAGE_SIZE as u64 - at.0 % crate::ram::PAGE_SIZE as u64) as usize;
            let mut chunk = vec![0u8; room.min(max - bytes.len())];
            if let Err(err) = self.read(at, &mut chunk, what) {
                if bytes.is_empty() {
                    return Err(err);
                }
                break;
            }
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                bytes.extend_from_slice(&chunk[..end]);
                return Ok(bytes);
            }
            bytes.extend_from_slice(&chunk);
            at = at.wrapping_add(chunk.len() as u64);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::tests_support::{PagedMemory, KERNEL};

    #[test]
    fn reads_equal_the_walkers_and_pages_read_again_are_not_walked_again() {
        let (kernel, mut memory) = PagedMemory::kernel();
        for (index, at) in (0..0x40_0000u64).step_by(0x1000).enumerate() {
            memory.put_u64(KERNEL + at + 8, index as u64);
        }
        let reader = KernelReader::new(&kernel, &memory);
        for (index, at) in (0..0x40_0000u64).step_by(0x1000).enumerate() {
            assert_eq!(reader.u64(Gva(KERNEL + at + 8), "test").unwrap(), index as u64);
        }
        // two 2 MiB pages: two walks for 1024 reads
        assert_eq!(reader.walks(), 2);
        // a read across the two pages, against the walker's own
        let mut ours = [0u8; 64];
        let mut theirs = [0u8; 64];
        reader.read(Gva(KERNEL + 0x20_0000 - 32), &mut ours, "test").unwrap();
        kernel.paging().read_virtual(&memory, Gva(KERNEL + 0x20_0000 - 32), &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        // what the tables do not map is an error, every time
        assert!(matches!(reader.u64(Gva(0xffff_ffff_9000_0000), "test"), Err(LinuxError::Read { .. })));
        assert!(matches!(reader.u64(Gva(0xffff_ffff_9000_0000), "test"), Err(LinuxError::Read { .. })));
        assert!(matches!(
            reader.read(Gva(u64::MAX - 3), &mut ours, "test"),
            Err(LinuxError::Read { source: PagingError::Wraps { .. }, .. })
        ));
    }

    #[test]
    fn more_pages_than_are_kept_still_read_right() {
        let (kernel, mut memory) = PagedMemory::kernel();
        // 4 KiB pages from KERNEL + 8 MiB (PD entry 12 -> a PT at 0x6000), 64 of them, more
        // than are kept
        let base = KERNEL + 0x80_0000;
        memory.put_phys(0x3000 + 12 * 8, 0x6003);
        for page in 0..64u64 {
            memory.put_phys(0x6000 + page * 8, (0xc0_0000 + page * 0x1000) | 3);
            memory.put_phys(0xc0_0000 + page * 0x1000 + 16, 0x1000 + page);
        }
        let reader = KernelReader::new(&kernel, &memory);
        let order: Vec<u64> = (0..64).chain((0..64).rev()).chain((0..64).step_by(7)).collect();
        for &page in &order {
            assert_eq!(reader.u64(Gva(base + page * 0x1000 + 16), "test").unwrap(), 0x1000 + page);
        }
        assert!(reader.walks() as usize >= 64 + 64 - KEPT, "{} walks", reader.walks());
    }

    #[test]
    fn strings_stop_at_their_nul_or_their_cap() {
        let (kernel, mut memory) = PagedMemory::kernel();
        memory.put(KERNEL + 0xffc, b"abcdefg\0");
        let reader = KernelReader::new(&kernel, &memory);
        assert_eq!(reader.c_string(Gva(KERNEL + 0xffc), 100, "name").unwrap(), b"abcdefg");
        assert_eq!(reader.c_string(Gva(KERNEL + 0xffc), 3, "name").unwrap(), b"abc");
        assert!(reader.c_string(Gva(0xffff_ffff_9000_0000), 3, "name").is_err());
    }
}
