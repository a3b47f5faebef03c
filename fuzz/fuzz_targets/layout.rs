//! Guest-physical layout and bounds arithmetic on arbitrary inputs: never a panic or overflow,
//! and every translation lands inside the RAM file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::ram::{GuestLayout, Machine};

fn word(data: &[u8], index: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = data.get(index * 8 + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    let kind = match data.first().copied().unwrap_or(0) % 3 {
        0 => Machine::Q35,
        1 => Machine::Pc,
        _ => Machine::Other("virt".into()),
    };
    // RAM up to 16 TiB, as a real machine could have
    let ram = word(data, 1) % (16 << 40);
    let cap = Some(word(data, 2)).filter(|_| data.get(3) == Some(&1));
    let gpa = word(data, 3);
    let len = word(data, 4) % (1 << 42);
    let layout = GuestLayout::x86(&kind, ram, cap);
    assert_eq!(layout.ram_size(), ram);
    let mut covered = 0;
    for region in layout.regions() {
        assert_eq!(region.offset, covered, "regions are contiguous in the file");
        covered += region.len;
    }
    if let Some(offset) = layout.translate(gpa, len) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= ram),
            "{gpa:#x}+{len:#x} -> {offset:#x} past {ram:#x}"
        );
        if len > 0 {
            assert_eq!(layout.gpa_of_offset(offset), Some(gpa));
        }
    }
    let split = GuestLayout::from_split(word(data, 5) % (8 << 40), word(data, 6) % (8 << 40));
    let _ = split.translate(gpa, len);
});
