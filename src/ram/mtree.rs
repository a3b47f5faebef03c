//! QEMU's flat memory map (`info mtree -f` over HMP): where each guest-physical range lives.
//!
//! The output lists one flat view per group of address spaces. Each view starts with
//! `FlatView #N`, then ` AS "name", root: ...` lines naming the address spaces that share it,
//! then ranges: `  START-END (prio P, KIND): REGION [@OFFSET] [flags...]`, with START and END
//! inclusive, in hexadecimal, and OFFSET the offset into REGION. The guest's CPU view is the
//! address space called `memory`. Line order and the set of views vary between QEMU versions and
//! runs, and later versions add words after the region name: lines that do not parse are
//! skipped, never guessed at.

use super::layout::{GuestLayout, Region};

/// Why the flat map could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtreeError {
    /// No flat view of the `memory` address space in the output.
    #[error("QEMU's flat memory map has no view of the \"memory\" address space")]
    NoMemoryView,
}

/// One parsed range line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range<'a> {
    start: u64,
    end_inclusive: u64,
    kind: &'a str,
    region: &'a str,
    offset: u64,
}

/// The ranges of the `memory` address space backed by RAM region `region` (a memory backend's
/// id, e.g. `ram0`, or `pc.ram`), each with the offset of its first byte in that region, in
/// guest-physical order; ranges that continue each other in both address and offset are merged.
///
/// # Errors
///
/// [`MtreeError::NoMemoryView`] when the output has no view of the `memory` address space.
pub fn ram_regions(text: &str, region: &str) -> Result<Vec<Region>, MtreeError> {
    let mut in_memory_view = false;
    let mut found_view = false;
    let mut regions: Vec<Region> = Vec::new();
    let mut header = true;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("FlatView #") {
            in_memory_view = false;
            header = true;
            continue;
        }
        if header && trimmed.starts_with("AS \"") {
            if trimmed.starts_with("AS \"memory\",") {
                in_memory_view = true;
                found_view = true;
            }
            continue;
        }
        let Some(range) = parse_range(trimmed) else { continue };
        header = false;
        if !in_memory_view || range.kind != "ram" || range.region != region {
            continue;
        }
        let Some(len) = (range.end_inclusive - range.start).checked_add(1) else { continue };
        regions.push(Region { gpa: range.start, offset: range.offset, len });
    }
    if !found_view {
        return Err(MtreeError::NoMemoryView);
    }
    regions.sort_by_key(|region| region.gpa);
    let mut merged: Vec<Region> = Vec::with_capacity(regions.len());
    for next in regions {
        match merged.last_mut() {
            Some(last)
                if last.gpa.checked_add(last.len) == Some(next.gpa)
                    && last.offset.checked_add(last.len) == Some(next.offset) =>
            {
                last.len += next.len;
            }
            _ => merged.push(next),
        }
    }
    Ok(merged)
}

/// Where the RAM of several memory backends lies in the guest: which of them QEMU's memory map
/// places in the `memory` address space, in the order of their lowest guest-physical address
/// (the order `ram` concatenates them in), and the layout of that concatenation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Indexes into the backends given to [`place`], in `ram` order.
    pub order: Vec<usize>,
    /// The guest-physical layout of their concatenation.
    pub layout: GuestLayout,
}

/// Places memory backends, each given as its region name (the backend's id) and size in bytes,
/// by QEMU's flat memory map `text`. A backend the map does not show in the `memory` address
/// space (an unplugged DIMM, a backend the machine does not use) is left out; a backend whose
/// ranges the map puts past its own size is left out too (the map does not fit what QEMU said
/// of the backend: better no layout than a wrong one). `None` when no backend is placed, or the
/// map has no `memory` view: then only a rule can give a layout.
pub fn place(text: &str, backends: &[(&str, u64)]) -> Option<Placement> {
    let mut placed: Vec<(usize, Vec<Region>)> = Vec::new();
    for (index, &(name, size)) in backends.iter().enumerate() {
        let Ok(regions) = ram_regions(text, name) else { return None };
        let fits =
            regions.iter().all(|region| region.offset.checked_add(region.len).is_some_and(|end| end <= size));
        if !regions.is_empty() && fits {
            placed.push((index, regions));
        }
    }
    placed.sort_by_key(|(_, regions)| regions.iter().map(|region| region.gpa).min());
    let mut all = Vec::new();
    let mut base = 0u64;
    for (index, regions) in &placed {
        // every range fits its backend, so offsets stay below the next base, checked first
        let next = base.checked_add(backends[*index].1)?;
        all.extend(regions.iter().map(|region| Region { offset: region.offset + base, ..*region }));
        base = next;
    }
    if all.is_empty() {
        return None;
    }
    Some(Placement {
        order: placed.into_iter().map(|(index, _)| index).collect(),
        layout: GuestLayout::from_mtree(all),
    })
}

/// `START-END (prio P, KIND): REGION [@OFFSET] ...`, or `None`.
fn parse_range(line: &str) -> Option<Range<'_>> {
    let (span, rest) = line.split_once(' ')?;
    let (start, end) = span.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end_inclusive = u64::from_str_radix(end, 16).ok()?;
    if end_inclusive < start {
        return None;
    }
    let rest = rest.trim_start().strip_prefix("(prio ")?;
    let (attributes, rest) = rest.split_once("):")?;
    let kind = attributes.split_once(", ")?.1.trim();
    let mut words = rest.split_whitespace();
    let region = words.next()?;
    let offset = match words.next() {
        Some(word) if word.starts_with('@') => u64::from_str_radix(&word[1..], 16).ok()?,
        _ => 0,
    };
    Some(Range { start, end_inclusive, kind, region, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ram_lines_of_the_memory_view_are_regions() {
        let text = "FlatView #2\n AS \"memory\", root: system\n Root memory region: system\n  \
                    0000000000000000-000000000009ffff (prio 0, ram): m\n  \
                    0000000100000000-000000017fffffff (prio 0, ram): m @0000000080000000\n";
        let regions = ram_regions(text, "m").unwrap();
        assert_eq!(regions[1].gpa, 1 << 32);
        assert_eq!(regions[1].offset, 0x8000_0000);
    }

    #[test]
    fn backends_are_placed_by_their_regions() {
        let text = "FlatView #2\n AS \"memory\", root: system\n  \
                    0000000000000000-0000000003ffffff (prio 0, ram): m\n  \
                    0000000100000000-0000000107ffffff (prio 0, ram): d0\n";
        let placed = place(text, &[("d0", 128 << 20), ("m", 64 << 20)]).unwrap();
        assert_eq!(placed.order, [1, 0]);
        assert_eq!(placed.layout.translate(1 << 32, 1), Some(64 << 20));
    }


    fn captured(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/mtree/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    fn region(gpa: u64, offset: u64, len: u64) -> Region {
        Region { gpa, offset, len }
    }

    #[test]
    fn q35_4g_splits_around_the_pci_hole_and_the_bios_window() {
        let regions = ram_regions(&captured("q35-4g-qemu7.2.txt"), "m").unwrap();
        assert_eq!(
            regions,
            [
                region(0, 0, 0xc0000),
                region(0x10_0000, 0x10_0000, 0x8000_0000 - 0x10_0000),
                region(1 << 32, 0x8000_0000, 0x8000_0000),
            ]
        );
    }

    /// QEMU 10.0 prints the same map for the same machine (captured with Debian's backport).
    #[test]
    fn qemu_10_outputs() {
        assert_eq!(
            ram_regions(&captured("q35-4g-qemu10.0.txt"), "m").unwrap(),
            ram_regions(&captured("q35-4g-qemu7.2.txt"), "m").unwrap()
        );
        let pc = ram_regions(&captured("pc-6g-qemu10.0.txt"), "m").unwrap();
        assert_eq!(pc.last(), Some(&region(1 << 32, 0xc000_0000, 0xc000_0000)));
        assert_eq!(pc.iter().map(|r| r.len).sum::<u64>(), (6 << 30) - 0x40000);
    }

    #[test]
    fn pc_4g_keeps_3g_below() {
        let regions = ram_regions(&captured("pc-4g-qemu7.2.txt"), "m").unwrap();
        assert_eq!(regions.last(), Some(&region(1 << 32, 0xc000_0000, 0x4000_0000)));
        assert_eq!(regions[1], region(0x10_0000, 0x10_0000, 0xc000_0000 - 0x10_0000));
    }

    #[test]
    fn other_backends_and_views_are_not_taken() {
        let text = captured("q35-64m-qemu7.2.txt");
        assert_eq!(ram_regions(&text, "m").unwrap().len(), 2);
        assert_eq!(ram_regions(&text, "pc.bios").unwrap(), vec![], "ROM is not RAM");
        assert_eq!(ram_regions(&text, "other").unwrap(), vec![]);
        assert_eq!(ram_regions("garbage\n", "m"), Err(MtreeError::NoMemoryView));
    }

    #[test]
    fn arm_and_riscv_virt_captured() {
        let arm = ram_regions(&captured("aarch64-virt-256m-qemu7.2.txt"), "m").unwrap();
        assert_eq!(arm, vec![region(0x4000_0000, 0, 0x1000_0000)]);
        let riscv = ram_regions(&captured("riscv64-virt-256m-qemu7.2.txt"), "m").unwrap();
        assert_eq!(riscv, vec![region(0x8000_0000, 0, 0x1000_0000)]);
    }

    /// aarch64 `virt`: RAM at 1 GiB; later QEMU versions append words after the region name.
    #[test]
    fn arm_virt_and_newer_line_formats() {
        let text = "FlatView #1\n AS \"cpu-memory-0\", root: system\n AS \"memory\", root: system\n \
                    Root memory region: system\n  0000000000000000-0000000003ffffff (prio 0, romd): virt.flash0\n  \
                    0000000040000000-000000004fffffff (prio 0, ram): m KVM\n  \
                    0000000050000000-000000005fffffff (prio 0, i/o): unknown-line-format [x]\n  \
                    this line means nothing\n";
        assert_eq!(ram_regions(text, "m").unwrap(), vec![region(0x4000_0000, 0, 0x1000_0000)]);
    }

    #[test]
    fn contiguous_pieces_are_merged_and_order_does_not_matter() {
        let text = "FlatView #0\n AS \"memory\", root: system\n  \
                    0000000000200000-00000000002fffff (prio 0, ram): r @0000000000200000\n  \
                    0000000000000000-00000000000fffff (prio 0, ram): r\n  \
                    0000000000100000-00000000001fffff (prio 0, ram): r @0000000000100000\n";
        let regions = ram_regions(text, "r").unwrap();
        assert_eq!(regions, vec![region(0, 0, 0x30_0000)]);
    }

    #[test]
    fn backends_are_placed_in_guest_physical_order_and_misfits_left_out() {
        let text = "FlatView #0\n AS \"memory\", root: system\n  \
                    0000000000000000-0000000003ffffff (prio 0, ram): m\n  \
                    0000000100000000-0000000107ffffff (prio 0, ram): d0\n  \
                    0000000200000000-0000000200ffffff (prio 0, ram): big @0000000010000000\n";
        let backends = [("d0", 128 << 20), ("absent", 1 << 20), ("m", 64 << 20), ("big", 16 << 20)];
        let placed = place(text, &backends).unwrap();
        // "absent" is not in the map; "big" claims bytes past its 16 MiB
        assert_eq!(placed.order, [2, 0]);
        assert_eq!(placed.layout.ram_size(), 192 << 20);
        assert_eq!(placed.layout.translate(0x3ff_ffff, 1), Some(0x3ff_ffff));
        assert_eq!(placed.layout.translate(1 << 32, 1), Some(64 << 20));
        assert_eq!(placed.layout.translate(0x2_0000_0000, 1), None);
        assert_eq!(place("no view here", &backends), None);
        assert_eq!(place(text, &[("absent", 1 << 20)]), None);
    }

    #[test]
    fn a_captured_q35_map_places_its_one_backend() {
        let text = captured("q35-4g-qemu7.2.txt");
        let placed = place(&text, &[("m", 4 << 30)]).unwrap();
        assert_eq!(placed.order, [0]);
        assert_eq!(placed.layout.translate(1 << 32, 16), Some(0x8000_0000));
    }
}
