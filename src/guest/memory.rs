//! Guest addresses ([`Gpa`], [`Gva`]) and reading guest-physical memory, for code that walks
//! guest structures (page tables, kernel lists): one small trait, [`GuestMemory`], implemented by a live VM's RAM
//! ([`SharedMemoryBridge`]) and by a frozen copy with its layout ([`FrozenMemory`]), so that the
//! same walk runs on a live guest and on a snapshot. Addresses are [`Gpa`]s, never file offsets;
//! an address that is not RAM (a hole of the layout: MMIO, the PCI hole, past the end) is an
//! error, never zeros: a walker must not mistake a hole for a table of zeros.

use crate::ram::{BridgeError, GuestLayout, SharedMemoryBridge};

/// A guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

impl Gpa {
    /// `self + bytes`, or `None` past the end of the address space.
    pub fn checked_add(self, bytes: u64) -> Option<Gpa> {
        self.0.checked_add(bytes).map(Gpa)
    }
}

impl std::fmt::Display for Gpa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A guest-virtual address: what a vCPU's page tables (or the kernel's) translate into a
/// [`Gpa`]. Pointers read out of guest structures are `Gva`s; arithmetic on them wraps, as the
/// guest's own does, because a hostile pointer plus a member offset may pass 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gva(pub u64);

impl Gva {
    /// `self + bytes`, wrapping at 2^64 (a member of a structure at `self`).
    #[must_use]
    pub const fn wrapping_add(self, bytes: u64) -> Gva {
        Gva(self.0.wrapping_add(bytes))
    }

    /// `self - bytes`, wrapping at 0 (`container_of`).
    #[must_use]
    pub const fn wrapping_sub(self, bytes: u64) -> Gva {
        Gva(self.0.wrapping_sub(bytes))
    }

    /// `self + bytes`, or `None` past the last address.
    pub const fn checked_add(self, bytes: u64) -> Option<Gva> {
        match self.0.checked_add(bytes) {
            Some(va) => Some(Gva(va)),
            None => None,
        }
    }

    /// Bytes from `start` up to `self`, or `None` when `self` is below `start`.
    pub const fn offset_from(self, start: Gva) -> Option<u64> {
        self.0.checked_sub(start.0)
    }

    /// Whether this is the null pointer.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Gva {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl std::fmt::LowerHex for Gva {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// `va + bytes` wraps at 2^64, as [`Gva::wrapping_add`].
impl std::ops::Add<u64> for Gva {
    type Output = Gva;

    fn add(self, bytes: u64) -> Gva {
        self.wrapping_add(bytes)
    }
}

/// `va - bytes` wraps at 0, as [`Gva::wrapping_sub`].
impl std::ops::Sub<u64> for Gva {
    type Output = Gva;

    fn sub(self, bytes: u64) -> Gva {
        self.wrapping_sub(bytes)
    }
}

impl From<Gva> for u64 {
    fn from(va: Gva) -> u64 {
        va.0
    }
}

/// Why guest memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// Part of the range is not RAM.
    #[error("guest-physical {gpa} (+{len} bytes) is not RAM")]
    NotRam {
        /// The first address asked for.
        gpa: Gpa,
        /// Bytes asked for.
        len: usize,
    },
    /// The RAM could not be read.
    #[error("cannot read guest-physical {gpa}")]
    Read {
        /// The first address asked for.
        gpa: Gpa,
        /// Why.
        #[source]
        source: BridgeError,
    },
}

/// Guest-physical memory to read from. Reads copy: the bytes of a live guest may change under
/// the reader, and a walk must never hold a reference into them.
pub trait GuestMemory {
    /// Fills `buf` with the bytes at `gpa`.
    ///
    /// # Errors
    ///
    /// [`GuestMemoryError::NotRam`] when any byte of the range is not RAM,
    /// [`GuestMemoryError::Read`] when the RAM cannot be read.
    fn read_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError>;

    /// The little-endian u64 at `gpa`.
    ///
    /// # Errors
    ///
    /// As [`read_at`](Self::read_at).
    fn read_u64(&self, gpa: Gpa) -> Result<u64, GuestMemoryError> {
        let mut bytes = [0u8; 8];
        self.read_at(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The little-endian u32 at `gpa`.
    ///
    /// # Errors
    ///
    /// As [`read_at`](Self::read_at).
    fn read_u32(&self, gpa: Gpa) -> Result<u32, GuestMemoryError> {
        let mut bytes = [0u8; 4];
        self.read_at(gpa, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

/// Calls `each(offset in the RAM file, part of buf)` for the pieces of `gpa..gpa + buf.len()`,
/// split where the range crosses from one RAM region of `layout` to the next
/// ([`GuestLayout::copy_ram`]); nothing is read unless all of the range is RAM.
fn for_each_piece(
    layout: &GuestLayout,
    gpa: Gpa,
    buf: &mut [u8],
    each: impl FnMut(u64, &mut [u8]) -> Result<(), BridgeError>,
) -> Result<(), GuestMemoryError> {
    let len = buf.len();
    match layout.copy_ram(gpa.0, buf, each) {
        Some(copied) => copied.map_err(|source| GuestMemoryError::Read { gpa, source }),
        None => Err(GuestMemoryError::NotRam { gpa, len }),
    }
}

impl GuestMemory for SharedMemoryBridge {
    fn read_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let ram = self.mapping();
        for_each_piece(self.layout(), gpa, buf, |offset, part| ram.copy_to(offset as usize, part))
    }
}

/// A frozen copy of a guest's RAM (a snapshot buffer, in RAM-file order) with the layout that
/// places it.
#[derive(Debug, Clone, Copy)]
pub struct FrozenMemory<'a> {
    ram: &'a [u8],
    layout: &'a GuestLayout,
}

impl<'a> FrozenMemory<'a> {
    /// `ram` (a whole copy of the RAM, as [`SharedMemoryBridge::snapshot_into`] fills it) placed
    /// by `layout`.
    pub fn new(ram: &'a [u8], layout: &'a GuestLayout) -> Self {
        Self { ram, layout }
    }
}

impl GuestMemory for FrozenMemory<'_> {
    fn read_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let ram = self.ram;
        for_each_piece(self.layout, gpa, buf, |offset, part| {
            let start = offset as usize;
            let bytes = start
                .checked_add(part.len())
                .and_then(|end| ram.get(start..end))
                .ok_or(BridgeError::InvalidAddress { addr: offset, len: part.len(), max: ram.len() })?;
            part.copy_from_slice(bytes);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// q35 with 3 GiB, small: 8 KiB below the "hole" at 8 KiB, 8 KiB above it at 1 MiB.
    fn layout() -> GuestLayout {
        GuestLayout::from_mtree(vec![
            crate::ram::Region { gpa: 0, offset: 0, len: 0x2000 },
            crate::ram::Region { gpa: 0x2000, offset: 0x3000, len: 0x1000 },
            crate::ram::Region { gpa: 0x10_0000, offset: 0x2000, len: 0x1000 },
        ])
    }

    #[test]
    fn frozen_reads_follow_the_layout_across_regions_and_refuse_holes() {
        let ram: Vec<u8> = (0..0x4000u32).map(|i| (i / 0x1000) as u8 * 16 + (i % 7) as u8).collect();
        let layout = layout();
        let memory = FrozenMemory::new(&ram, &layout);
        let mut buf = [0u8; 8];
        memory.read_at(Gpa(0x10_0000), &mut buf).unwrap();
        assert_eq!(buf[0] >> 4, 2, "gpa 1 MiB is file offset 0x2000");
        // across two regions that are adjacent in guest-physical space but not in the file
        let mut across = [0u8; 16];
        memory.read_at(Gpa(0x2000 - 8), &mut across).unwrap();
        assert_eq!(across[7] >> 4, 1);
        assert_eq!(across[8] >> 4, 3, "gpa 0x2000 is file offset 0x3000");
        assert_eq!(memory.read_u64(Gpa(0x3000 - 8)).unwrap().to_le_bytes()[0] >> 4, 3);
        for (gpa, len) in [(0x3000u64, 1usize), (0x2ff8, 16), (u64::MAX - 3, 8), (0x10_0ff8, 16)] {
            let mut buf = vec![0xaa; len];
            assert!(
                matches!(memory.read_at(Gpa(gpa), &mut buf), Err(GuestMemoryError::NotRam { .. })),
                "{gpa:#x}+{len}"
            );
            assert!(buf.iter().all(|&b| b == 0xaa), "nothing read of a range that ends in a hole");
        }
        // a frozen copy shorter than its layout says is an error, not a panic
        let short = FrozenMemory::new(&ram[..0x1000], &layout);
        assert!(matches!(short.read_u64(Gpa(0x10_0000)), Err(GuestMemoryError::Read { .. })));
    }
}

/// Guest memory for the unit tests of the kernel's structures: 16 MiB of RAM whose first pages
/// hold x86_64 4-level tables (root at 0x1000) mapping the kernel's addresses
/// 0xffff_ffff_8100_0000..0xffff_ffff_8180_0000 to 0x20_0000.. and a user range
/// 0x40_0000..0x60_0000 to 0xa0_0000.., in 2 MiB pages.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::guest::linux::LinuxKernel;
    use crate::guest::vmcoreinfo::VmcoreInfo;

    pub(crate) struct PagedMemory {
        pub ram: Vec<u8>,
    }

    /// The kernel range's first address.
    pub(crate) const KERNEL: u64 = 0xffff_ffff_8100_0000;
    /// The user range's first address.
    pub(crate) const USER: u64 = 0x40_0000;

    impl PagedMemory {
        /// The memory, and a kernel whose `init_top_pgt` is its root table.
        pub(crate) fn kernel() -> (LinuxKernel, Self) {
            let mut memory = Self { ram: vec![0; 16 << 20] };
            // PML4 at 0x1000: entry 511 -> PDPT at 0x2000, entry 0 -> PDPT at 0x4000
            memory.put_phys(0x1000 + 511 * 8, 0x2003);
            memory.put_phys(0x1000, 0x4007);
            // PDPT entry 510 -> PD at 0x3000; user PDPT entry 0 -> PD at 0x5000
            memory.put_phys(0x2000 + 510 * 8, 0x3003);
            memory.put_phys(0x4000, 0x5007);
            for page in 0..4u64 {
                // 0xffff_ffff_8100_0000 is PD index 8
                memory.put_phys(0x3000 + (8 + page) * 8, (0x20_0000 + page * 0x20_0000) | 0x83);
            }
            memory.put_phys(0x5000 + 2 * 8, 0xa0_0000 | 0x87);
            let info = VmcoreInfo {
                offset: 0,
                text: "SYMBOL(init_top_pgt)=ffffffff80001000\nNUMBER(phys_base)=0\n".into(),
            };
            (LinuxKernel::new(info).unwrap(), memory)
        }

        pub(crate) fn put_phys(&mut self, gpa: u64, value: u64) {
            self.ram[gpa as usize..gpa as usize + 8].copy_from_slice(&value.to_le_bytes());
        }

        /// The physical address of a mapped virtual one.
        pub(crate) fn physical(va: u64) -> usize {
            if va >= KERNEL {
                (va - KERNEL + 0x20_0000) as usize
            } else {
                (va - USER + 0xa0_0000) as usize
            }
        }

        /// Writes `bytes` at virtual address `va`.
        pub(crate) fn put(&mut self, va: u64, bytes: &[u8]) {
            let at = Self::physical(va);
            self.ram[at..at + bytes.len()].copy_from_slice(bytes);
        }

        /// Writes the u64 `value` at virtual address `va`.
        pub(crate) fn put_u64(&mut self, va: u64, value: u64) {
            self.put(va, &value.to_le_bytes());
        }
    }

    impl GuestMemory for PagedMemory {
        fn read_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
            let start = usize::try_from(gpa.0).unwrap_or(usize::MAX);
            let bytes = start
                .checked_add(buf.len())
                .and_then(|end| self.ram.get(start..end))
                .ok_or(GuestMemoryError::NotRam { gpa, len: buf.len() })?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }
}
