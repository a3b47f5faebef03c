//! The page-table walker on arbitrary RAM: the first bytes choose the format (x86_64 from the
//! control registers, RISC-V from a satp, AArch64 from a table base), an address, a range and
//! the caps, the rest is RAM at GPA 0. Never a panic, never unbounded work; every mapping
//! enumerated translates to what the enumeration said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::paging::{Limits, PageRun, Paging, PagingError, PagingMode};
use qemu_bridge::guest::{FrozenMemory, Gpa, GuestMemory, Gva};
use qemu_bridge::ram::GuestLayout;

/// Bytes before the RAM image.
const HEADER: usize = 36;

fn word(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

fn byte(data: &[u8], at: usize) -> u8 {
    data.get(at).copied().unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let flags = byte(data, 0);
    let bit = |n: u8, value: u64| if flags & (1 << n) != 0 { value } else { 0 };
    let cr0 = (1 << 31) ^ bit(2, 1 << 31);
    let cr4 = ((1 << 5) ^ bit(4, 1 << 5)) | bit(0, 1 << 12);
    let efer = ((1 << 10) ^ bit(3, 1 << 10)) | bit(1, 1 << 11);
    let cr3 = word(data, 1);
    let va = Gva(word(data, 9));
    let range_start = word(data, 17);
    let range_len = word(data, 25);
    let read_len = usize::from(byte(data, 33)) * 97;
    let limits = Limits {
        max_entries_read: (usize::from(byte(data, 34)) + 1) * 64,
        max_mappings: usize::from(byte(data, 35)),
    };
    let ram = data.get(HEADER..).unwrap_or(&[]);
    let layout = GuestLayout::identity(ram.len() as u64);
    let memory = FrozenMemory::new(ram, &layout);

    // bits 7..6 of the flags pick the format
    let paging = match (flags >> 6) % 3 {
        0 => Paging::from_registers(cr0, cr3, cr4, efer),
        // cr3's word as a satp: its top nibble says Sv39, Sv48, Sv57 or something refused
        1 => Paging::from_satp(cr3),
        _ => Ok(Paging::new(PagingMode::Arm48, Gpa(cr3), true)),
    };
    let Ok(paging) = paging else { return };
    let mode = paging.mode();

    if let Ok(page) = paging.translate(&memory, va) {
        assert!(mode.is_canonical(va));
        assert_eq!(page.gpa.0 & (page.page_size - 1), va.0 & (page.page_size - 1));
    }
    let mut buf = vec![0u8; read_len];
    if paging.read_virtual(&memory, va, &mut buf).is_ok() && !buf.is_empty() {
        let first = paging.translate(&memory, va).expect("a readable address translates");
        let mut byte = [0u8];
        memory.read_at(first.gpa, &mut byte).expect("its page is RAM");
        assert_eq!(byte[0], buf[0]);
    }

    let range = if flags & (1 << 5) != 0 {
        Gva(0)..=Gva(u64::MAX)
    } else {
        Gva(range_start)..=Gva(range_start.saturating_add(range_len))
    };
    let items: Vec<Result<PageRun, PagingError>> = paging.page_runs(&memory, range, limits).collect();
    assert!(items.len() <= limits.max_mappings + 1, "{} items", items.len());
    let mut previous: Option<PageRun> = None;
    for (index, item) in items.iter().enumerate() {
        let mapping = match item {
            Ok(mapping) => mapping,
            Err(PagingError::Truncated { .. }) => {
                assert_eq!(index + 1, items.len(), "truncation is the last item");
                continue;
            }
            Err(
                PagingError::Table { .. }
                | PagingError::ReservedPageSize { .. }
                | PagingError::Reserved { .. },
            ) => continue,
            Err(other) => panic!("unexpected item {other:?}"),
        };
        let size = mapping.page_size;
        assert!(mode.is_canonical(mapping.va) && mode.is_canonical(mapping.va_last()), "{mapping:?}");
        assert!(mapping.len >= size && mapping.len % size == 0 && mapping.va.0 % size == 0, "{mapping:?}");
        assert_eq!(mapping.gpa.0 % size, 0, "{mapping:?}");
        if let Some(previous) = previous {
            assert!(previous.va_last() < mapping.va, "{previous:?} then {mapping:?}");
        }
        previous = Some(*mapping);
        // the walk of one address agrees with the enumeration, at both ends of the run
        let last_page = Gva(mapping.va_last().0 & !(size - 1));
        for (at, gpa) in [(mapping.va, mapping.gpa), (last_page, Gpa(mapping.gpa.0 + mapping.len - size))] {
            let page = paging.translate(&memory, at).expect("an enumerated page translates");
            assert_eq!(
                (page.gpa, page.page_size, page.writable, page.user, page.executable),
                (gpa, size, mapping.writable, mapping.user, mapping.executable),
                "{at:#x} in {mapping:?}"
            );
        }
    }
});
