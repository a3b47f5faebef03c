//! QEMU's flat memory map parser on arbitrary text: never a panic, and every region it returns
//! is non-empty, in guest-physical order, without overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::ram::mtree::{place, ram_regions};
use qemu_bridge::ram::GuestLayout;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let name = text.lines().next().unwrap_or("m").split_whitespace().next().unwrap_or("m");
    // placing two backends: every placed range lies inside the concatenation of their sizes
    let sizes = [(name, 64u64 << 20), ("d0", u64::MAX / 2)];
    if let Some(placed) = place(&text, &sizes) {
        let total: u64 = placed.order.iter().map(|&index| sizes[index].1).sum();
        for region in placed.layout.regions() {
            assert!(region.offset.checked_add(region.len).is_some_and(|end| end <= total));
        }
    }
    let Ok(regions) = ram_regions(&text, name) else { return };
    for pair in regions.windows(2) {
        assert!(pair[0].gpa <= pair[1].gpa);
    }
    for region in &regions {
        assert!(region.len > 0);
        assert!(region.gpa.checked_add(region.len - 1).is_some());
    }
    let layout = GuestLayout::from_mtree(regions);
    let _ = layout.translate(0x4000_1000, 16);
    let _ = layout.file_end();
    // the splitter: its pieces cover a range exactly, in order, RAM where the searches say
    let (gpa, len) = (data.len() as u64 * 0x1357, 1 << 33);
    let mut at = gpa;
    for piece in layout.pieces(gpa, len) {
        assert_eq!(piece.gpa, at);
        assert!(piece.len > 0);
        assert_eq!(piece.offset.is_some(), layout.region_of(at).is_some());
        at += piece.len;
    }
    assert_eq!(at, gpa + len);
    let _ = layout.ram_pieces(gpa, 4096);
    let _ = layout.next_hole(gpa);
    let _ = layout.next_ram(gpa);
});
