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

    /// The ranges QEMU's flat memory map gives (see `mtree::ram_regions`), sorted by
    /// guest-physical address. A flat map never overlaps itself; a region that would (a map
    /// that is not QEMU's) is cut where the one before it ends, or left out, so that the
    /// regions of every layout are sorted and disjoint, which its searches rely on.
    pub fn from_mtree(mut regions: Vec<Region>) -> Self {
        regions.sort_by_key(|region| region.gpa);
        let mut disjoint: Vec<Region> = Vec::with_capacity(regions.len());
        for mut region in regions {
            if let Some(end) = disjoint.last().map(|last| last.gpa.saturating_add(last.len)) {
                if end > region.gpa {
                    let overlap = end - region.gpa;
                    if overlap >= region.len {
                        continue;
                    }
                    region = Region { gpa: end, offset: region.offset + overlap, len: region.len - overlap };
                }
            }
            disjoint.push(region);
        }
        Self { regions: disjoint, source: LayoutSource::Mtree }
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

    /// The region that holds guest-physical `gpa`, found by binary search (the regions are
    /// sorted and do not overlap).
    pub fn region_of(&self, gpa: u64) -> Option<&Region> {
        self.regions.get(self.first_ending_after(gpa)).filter(|region| region.gpa <= gpa)
    }

    /// The index of the first region that ends after `gpa` (`regions.len()` when none does).
    fn first_ending_after(&self, gpa: u64) -> usize {
        self.regions.partition_point(|region| region.gpa.saturating_add(region.len) <= gpa)
    }

    /// The file offset of `len` bytes at guest-physical `gpa` when all of them lie in one
    /// region (so in one run of the file), or `None` when any byte is not RAM or the range
    /// crosses into another region (past the end, in the PCI hole, or the sum overflows). A
    /// zero-length range is valid anywhere inside a region and at a region's end.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        let region = match self.region_of(gpa) {
            Some(region) => region,
            // a zero-length range at a region's end: the region before the first that ends after
            None if len == 0 => self
                .regions
                .get(self.first_ending_after(gpa).checked_sub(1)?)
                .filter(|region| region.gpa.checked_add(region.len) == Some(gpa))?,
            None => return None,
        };
        (end <= region.gpa + region.len).then(|| region.offset + (gpa - region.gpa))
    }

    /// The pieces of guest-physical `gpa..gpa + len`, in address order: runs of RAM, each in
    /// one region (so in one run of the file), and the holes between them. This is the one
    /// splitter every reader of guest-physical addresses goes through (the `physical` file,
    /// [`GuestMemory`](crate::guest::memory::GuestMemory), [`read_into`](super::SharedMemoryBridge::read_into)).
    /// The rule for a range that crosses from one region into the next is the same everywhere:
    /// every byte that is RAM is read from where its own region puts it.
    pub fn pieces(&self, gpa: u64, len: u64) -> Pieces<'_> {
        let end = gpa.saturating_add(len);
        Pieces { regions: &self.regions, next: self.first_ending_after(gpa), at: gpa, end }
    }

    /// The file runs `(offset, len)` of `len` bytes at `gpa` when every byte is RAM, or `None`
    /// when any is not (nothing to read then: a reader reads all of a range or none of it).
    pub fn ram_pieces(&self, gpa: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        self.ram_runs(gpa, len).map(Iterator::collect)
    }

    /// [`ram_pieces`](Self::ram_pieces) without a vector.
    fn ram_runs(&self, gpa: u64, len: u64) -> Option<impl Iterator<Item = (u64, u64)> + '_> {
        gpa.checked_add(len)?;
        // valid where translate says an empty range is
        if len == 0 && self.translate(gpa, 0).is_none() {
            return None;
        }
        let mut pieces = self.pieces(gpa, len);
        if pieces.clone().any(|piece| piece.offset.is_none()) {
            return None;
        }
        Some(std::iter::from_fn(move || pieces.next().and_then(|piece| Some((piece.offset?, piece.len)))))
    }

    /// Copies the `buf.len()` bytes at guest-physical `gpa` into `buf` with `copy(offset in the
    /// file, part of buf)`, one call per region the range crosses (the rule of
    /// [`pieces`](Self::pieces)); `None`, with nothing copied, when any byte is not RAM.
    pub fn copy_ram<E>(
        &self,
        gpa: u64,
        buf: &mut [u8],
        mut copy: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        // the common case (a page-table entry, a page): all of it in one region
        if let Some(offset) = self.translate(gpa, buf.len() as u64) {
            return Some(copy(offset, buf));
        }
        let mut done = 0;
        for (offset, len) in self.ram_runs(gpa, buf.len() as u64)? {
            if let Err(err) = copy(offset, &mut buf[done..done + len as usize]) {
                return Some(Err(err));
            }
            done += len as usize;
        }
        Some(Ok(()))
    }

    /// The first RAM address at or after `gpa`, `None` when no RAM follows.
    pub fn next_ram(&self, gpa: u64) -> Option<u64> {
        self.regions.get(self.first_ending_after(gpa)).map(|region| region.gpa.max(gpa))
    }

    /// The first address at or after `gpa` that is not RAM (regions that touch count as one
    /// run of RAM).
    pub fn next_hole(&self, gpa: u64) -> u64 {
        let mut at = gpa;
        for region in &self.regions[self.first_ending_after(gpa)..] {
            if region.gpa > at {
                break;
            }
            at = region.gpa.saturating_add(region.len);
        }
        at
    }

    /// The guest-physical address of file offset `offset`, if the file holds RAM there.
    pub fn gpa_of_offset(&self, offset: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|region| offset >= region.offset && offset < region.offset + region.len)
            .map(|region| region.gpa + (offset - region.offset))
    }
}

/// A piece of a guest-physical range ([`GuestLayout::pieces`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutPiece {
    /// Its first guest-physical address.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
    /// Where the file holds it, `None` for a hole.
    pub offset: Option<u64>,
}

/// The pieces of a guest-physical range, in order ([`GuestLayout::pieces`]).
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    regions: &'a [Region],
    /// The first region that may hold `at` or follow it.
    next: usize,
    at: u64,
    end: u64,
}

impl Iterator for Pieces<'_> {
    type Item = LayoutPiece;

    fn next(&mut self) -> Option<LayoutPiece> {
        if self.at >= self.end {
            return None;
        }
        let at = self.at;
        let piece = match self.regions.get(self.next) {
            Some(region) if region.gpa <= at => {
                // the regions are sorted and disjoint (every constructor makes them so): this
                // one ends after `at`
                let stop = region.gpa.saturating_add(region.len).min(self.end);
                self.next += 1;
                LayoutPiece { gpa: at, len: stop - at, offset: Some(region.offset + (at - region.gpa)) }
            }
            Some(region) => LayoutPiece { gpa: at, len: region.gpa.min(self.end) - at, offset: None },
            None => LayoutPiece { gpa: at, len: self.end - at, offset: None },
        };
        self.at += piece.len;
        Some(piece)
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

    #[test]
    fn pieces_split_at_regions_and_holes_and_agree_with_a_scan() {
        // q35 4 GiB as QEMU maps it: RAM below 0xa0000, from 1 MiB to 2 GiB, from 4 GiB on
        let layout = GuestLayout::from_mtree(vec![
            Region { gpa: 0x10_0000, offset: 0x10_0000, len: 0x7ff0_0000 },
            Region { gpa: 0, offset: 0, len: 0xa_0000 },
            Region { gpa: FOUR_GIB, offset: 0x8000_0000, len: 2 * GIB },
            // touching the one before in guest-physical space, elsewhere in the file
            Region { gpa: FOUR_GIB + 2 * GIB, offset: 0x1_0000_0000, len: MIB },
        ]);
        let scan = |gpa: u64| layout.regions().iter().find(|r| gpa >= r.gpa && gpa - r.gpa < r.len).copied();
        let probes = [0, 0x9_ffff, 0xa_0000, 0xf_ffff, 0x10_0000, 0x7fff_ffff, 0x8000_0000, FOUR_GIB - 1];
        let probes =
            probes.into_iter().chain([FOUR_GIB, FOUR_GIB + 2 * GIB - 1, FOUR_GIB + 2 * GIB, u64::MAX]);
        for gpa in probes.clone() {
            assert_eq!(layout.region_of(gpa).copied(), scan(gpa), "{gpa:#x}");
        }
        // every piece of a range is what a byte-by-byte scan finds, pieces cover the range
        for (gpa, len) in
            [(0, 0x20_0000), (0x9_f000, 0x2000), (FOUR_GIB - 0x1000, 0x3000), (FOUR_GIB + 2 * GIB - 8, 16)]
        {
            let pieces: Vec<LayoutPiece> = layout.pieces(gpa, len).collect();
            assert_eq!(pieces.iter().map(|piece| piece.len).sum::<u64>(), len);
            for piece in &pieces {
                for at in [piece.gpa, piece.gpa + piece.len - 1] {
                    let expected = scan(at).map(|r| r.offset + (at - r.gpa));
                    assert_eq!(piece.offset.map(|offset| offset + (at - piece.gpa)), expected, "{at:#x}");
                }
            }
        }
        assert_eq!(
            layout.ram_pieces(FOUR_GIB + 2 * GIB - 8, 16),
            Some(vec![(0x8000_0000 + 2 * GIB - 8, 8), (0x1_0000_0000, 8)])
        );
        assert_eq!(layout.ram_pieces(0x9_fff8, 16), None, "into the VGA window");
        assert_eq!(layout.ram_pieces(u64::MAX - 4, 8), None);
        assert_eq!(layout.ram_pieces(0xa_0000, 0), Some(vec![]), "empty, at a region's end");
        assert_eq!(layout.ram_pieces(0xb_0000, 0), None, "empty, in a hole");
        // one run of the file only: translate refuses what crosses regions
        assert_eq!(layout.translate(FOUR_GIB + 2 * GIB - 8, 16), None);
        assert_eq!(layout.translate(0xa_0000, 0), Some(0xa_0000), "empty, at a region's end");
        assert_eq!(layout.next_ram(0xa_0000), Some(0x10_0000));
        assert_eq!(layout.next_ram(FOUR_GIB + 3 * GIB), None);
        assert_eq!(layout.next_hole(FOUR_GIB), FOUR_GIB + 2 * GIB + MIB, "touching regions are one run");
        assert_eq!(layout.next_hole(0xa_0000), 0xa_0000);
    }

    #[test]
    fn regions_that_overlap_are_cut_so_that_every_search_holds() {
        // not a map QEMU writes: B inside A, C overlapping A's end
        let layout = GuestLayout::from_mtree(vec![
            Region { gpa: 0, offset: 0, len: 0x2000 },
            Region { gpa: 0x1000, offset: 0x9000, len: 0x800 },
            Region { gpa: 0x1800, offset: 0x5000, len: 0x1000 },
        ]);
        assert_eq!(
            layout.regions(),
            [Region { gpa: 0, offset: 0, len: 0x2000 }, Region { gpa: 0x2000, offset: 0x5800, len: 0x800 }]
        );
        let pieces: Vec<LayoutPiece> = layout.pieces(0, 0x4000).collect();
        assert_eq!(pieces.iter().map(|piece| piece.len).sum::<u64>(), 0x4000);
        assert_eq!(layout.ram_pieces(0x1ff8, 16), Some(vec![(0x1ff8, 8), (0x5800, 8)]));
    }
}
