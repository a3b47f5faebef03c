//! How guest-physical addresses (GPA) map onto offsets in the RAM file.
//!
//! On x86 the RAM file holds guest RAM in file-offset order, but the guest sees it split around
//! the PCI hole: guest `[0, below)` is file `[0, below)` and guest `[4 GiB, 4 GiB + above)` is
//! file `[below, below + above)`. QEMU's q35 machine reports the split directly
//! (`/machine/q35` `below-4g-mem-size`); for other machines it follows from the machine type's
//! rule, which [`GuestLayout::x86`] reproduces.

use serde::Serialize;

const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 * GIB;

/// A contiguous run of guest-physical addresses backed by a contiguous run of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    /// First guest-physical address of the region.
    pub gpa: u64,
    /// File offset that backs `gpa`.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A QEMU machine type: the two x86 families whose RAM split is known, or any other by name.
/// The launcher starts it (`-machine q35`) and the layout follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Machine {
    /// `q35` (ICH9 chipset), QEMU's modern x86 machine.
    Q35,
    /// `pc` (i440FX chipset).
    Pc,
    /// Any other machine type (`microvm`, `virt`...): addresses are taken as file offsets.
    Other(String),
}

impl Machine {
    /// Classifies a QEMU machine type name such as `pc-q35-7.2-machine`, `q35` or `pc`.
    pub fn from_type_name(name: &str) -> Self {
        let name = name.strip_suffix("-machine").unwrap_or(name);
        if name == "q35" || name.starts_with("pc-q35") {
            Self::Q35
        } else if name == "pc" || name.starts_with("pc-i440fx") {
            Self::Pc
        } else {
            Self::Other(name.to_string())
        }
    }

    /// The name to give QEMU's `-machine`.
    pub fn qemu_name(&self) -> &str {
        match self {
            Self::Q35 => "q35",
            Self::Pc => "pc",
            Self::Other(name) => name,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.qemu_name())
    }
}

impl std::str::FromStr for Machine {
    type Err = std::convert::Infallible;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(Self::from_type_name(name))
    }
}

/// Where a layout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutSource {
    /// QEMU's own flat memory map (`info mtree -f`): exact for every machine.
    Mtree,
    /// The x86 rule of the machine type (q35, pc), for when the monitor cannot answer.
    X86Rule,
    /// Guest address == file offset: no map known.
    Identity,
}

/// The map from guest-physical addresses to file offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestLayout {
    regions: Vec<Region>,
    source: LayoutSource,
}

impl GuestLayout {
    /// Guest address == file offset over `size` bytes (no layout known, or no hole).
    pub fn identity(size: u64) -> Self {
        Self { source: LayoutSource::Identity, ..Self::from_split(size, 0) }
    }

    /// The ranges QEMU's flat memory map gives (see [`super::mtree::ram_regions`]), sorted by
    /// guest-physical address.
    pub fn from_mtree(mut regions: Vec<Region>) -> Self {
        regions.sort_by_key(|region| region.gpa);
        Self { regions, source: LayoutSource::Mtree }
    }

    /// Where the layout comes from.
    pub fn source(&self) -> LayoutSource {
        self.source
    }

    /// The end of the last byte of the file the layout uses (the file must be at least this
    /// long).
    pub fn file_end(&self) -> u64 {
        self.regions.iter().map(|region| region.offset.saturating_add(region.len)).max().unwrap_or(0)
    }

    /// `below` bytes at GPA 0, `above` bytes at GPA 4 GiB, in that order in the file.
    pub fn from_split(below: u64, above: u64) -> Self {
        let mut regions = Vec::with_capacity(2);
        if below > 0 {
            regions.push(Region { gpa: 0, offset: 0, len: below });
        }
        if above > 0 {
            regions.push(Region { gpa: FOUR_GIB, offset: below, len: above });
        }
        Self { regions, source: LayoutSource::X86Rule }
    }

    /// The split QEMU applies to `ram` bytes on an x86 machine of `kind`, optionally capped by
    /// the machine property `max-ram-below-4g` (QEMU 7.2 `pc_q35.c` / `pc_piix.c`).
    pub fn x86(kind: &Machine, ram: u64, max_ram_below_4g: Option<u64>) -> Self {
        // QEMU treats a zero property as "not set".
        let cap = max_ram_below_4g.filter(|&cap| cap > 0);
        let lowmem = match kind {
            Machine::Q35 => {
                let lowmem = if ram >= 0xB000_0000 { 0x8000_0000 } else { 0xB000_0000 };
                lowmem.min(cap.unwrap_or(FOUR_GIB))
            }
            Machine::Pc => {
                let mut lowmem = cap.unwrap_or(0xE000_0000);
                // gigabyte_align, set for every machine type since 2.0
                if ram >= lowmem && lowmem > 0xC000_0000 {
                    lowmem = 0xC000_0000;
                }
                lowmem
            }
            Machine::Other(_) => return Self::identity(ram),
        };
        let below = ram.min(lowmem);
        Self::from_split(below, ram - below)
    }

    /// The regions, in guest-physical order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Total bytes of RAM the layout maps (with QEMU's map, less than the file where ROM or
    /// devices cover RAM, as the BIOS window at 0xC0000 does on x86).
    pub fn ram_size(&self) -> u64 {
        self.regions.iter().map(|region| region.len).sum()
    }

    /// The file offset of `len` bytes at guest-physical `gpa`, or `None` when any byte of the
    /// range is not RAM (past the end, in the PCI hole, or the sum overflows). A zero-length
    /// range is valid anywhere inside a region and at a region's end.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        self.regions
            .iter()
            .find(|region| gpa >= region.gpa && end <= region.gpa + region.len)
            .map(|region| region.offset + (gpa - region.gpa))
    }

    /// The guest-physical address of file offset `offset`, if the file holds RAM there.
    pub fn gpa_of_offset(&self, offset: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|region| offset >= region.offset && offset < region.offset + region.len)
            .map(|region| region.gpa + (offset - region.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn machine_kind_from_qemu_names() {
        assert_eq!(Machine::from_type_name("pc-q35-7.2-machine"), Machine::Q35);
        assert_eq!(Machine::from_type_name("q35"), Machine::Q35);
        assert_eq!(Machine::from_type_name("pc-i440fx-10.0-machine"), Machine::Pc);
        assert_eq!(Machine::from_type_name("pc"), Machine::Pc);
        assert_eq!(Machine::from_type_name("microvm-machine"), Machine::Other("microvm".into()));
    }

    #[test]
    fn q35_64_mib_is_all_below_4g() {
        let layout = GuestLayout::x86(&Machine::Q35, 64 * MIB, None);
        assert_eq!(layout.regions(), &[Region { gpa: 0, offset: 0, len: 64 * MIB }]);
        assert_eq!(layout.translate(0x7c00, 512), Some(0x7c00));
        assert_eq!(layout.translate(64 * MIB - 1, 1), Some(64 * MIB - 1));
        assert_eq!(layout.translate(64 * MIB - 1, 2), None);
        assert_eq!(layout.translate(64 * MIB, 0), Some(64 * MIB));
        assert_eq!(layout.translate(FOUR_GIB, 1), None);
    }

    #[test]
    fn q35_2560_mib_is_all_below_4g() {
        let layout = GuestLayout::x86(&Machine::Q35, 2560 * MIB, None);
        assert_eq!(layout.regions().len(), 1);
        assert_eq!(layout.translate(2560 * MIB - 4096, 4096), Some(2560 * MIB - 4096));
        assert_eq!(layout.translate(FOUR_GIB, 1), None);
    }

    #[test]
    fn q35_3_gib_splits_2_and_1() {
        let layout = GuestLayout::x86(&Machine::Q35, 3 * GIB, None);
        assert_eq!(
            layout.regions(),
            &[
                Region { gpa: 0, offset: 0, len: 2 * GIB },
                Region { gpa: FOUR_GIB, offset: 2 * GIB, len: GIB },
            ]
        );
        assert_eq!(layout.translate(0x1_0000_0000, 8), Some(0x8000_0000));
        assert_eq!(layout.translate(2 * GIB - 8, 8), Some(2 * GIB - 8));
        // the PCI hole and a range that runs into it
        assert_eq!(layout.translate(2 * GIB, 1), None);
        assert_eq!(layout.translate(2 * GIB - 4, 8), None);
        assert_eq!(layout.translate(FOUR_GIB + GIB - 1, 1), Some(3 * GIB - 1));
        assert_eq!(layout.translate(FOUR_GIB + GIB, 1), None);
        assert_eq!(layout.gpa_of_offset(2 * GIB), Some(FOUR_GIB));
        assert_eq!(layout.ram_size(), 3 * GIB);
    }

    #[test]
    fn pc_4_gib_splits_3_and_1() {
        let layout = GuestLayout::x86(&Machine::Pc, 4 * GIB, None);
        assert_eq!(
            layout.regions(),
            &[
                Region { gpa: 0, offset: 0, len: 3 * GIB },
                Region { gpa: FOUR_GIB, offset: 3 * GIB, len: GIB },
            ]
        );
        assert_eq!(layout.translate(FOUR_GIB, 4096), Some(3 * GIB));
        assert_eq!(layout.translate(3 * GIB, 1), None);
    }

    #[test]
    fn pc_below_threshold_is_all_below() {
        let layout = GuestLayout::x86(&Machine::Pc, 3 * GIB, None);
        assert_eq!(layout.regions().len(), 1);
        // QEMU 7.2 reports max-ram-below-4g = 0xE0000000 for pc: same result
        assert_eq!(layout, GuestLayout::x86(&Machine::Pc, 3 * GIB, Some(0xE000_0000)));
    }

    #[test]
    fn max_ram_below_4g_caps_the_low_part() {
        let layout = GuestLayout::x86(&Machine::Q35, GIB, Some(512 * MIB));
        assert_eq!(
            layout.regions(),
            &[
                Region { gpa: 0, offset: 0, len: 512 * MIB },
                Region { gpa: FOUR_GIB, offset: 512 * MIB, len: 512 * MIB },
            ]
        );
    }

    #[test]
    fn translate_never_overflows() {
        let layout = GuestLayout::x86(&Machine::Q35, 3 * GIB, None);
        assert_eq!(layout.translate(u64::MAX, 1), None);
        assert_eq!(layout.translate(u64::MAX - 1, u64::MAX), None);
        assert_eq!(layout.translate(FOUR_GIB, u64::MAX), None);
    }

    #[test]
    fn other_machines_are_identity() {
        let layout = GuestLayout::x86(&Machine::Other("virt".into()), 8 * GIB, None);
        assert_eq!(layout, GuestLayout::identity(8 * GIB));
    }
}
