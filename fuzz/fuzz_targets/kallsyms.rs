//! The kallsyms decoder on arbitrary tables: the first bytes give the count, the base and where
//! the bytes split into offsets, names, token table and token index. Never a panic, never more
//! symbols than the count, never a name past the kernel's limit. The same bytes as a kernel image
//! for the search of older kernels' tables: what it finds lies within the image, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::linux::kallsyms::{locate, parse, text, Tables, MAX_NAME};

fn take<'a>(data: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (head, rest) = data.split_at(len.min(data.len()));
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    if let Some(found) = locate(data) {
        assert!(found.offsets < found.relative_base && found.relative_base < found.names);
        assert!(found.names < found.markers && found.markers < found.token_table);
        assert!(found.token_table < found.token_index && found.token_index + 512 <= data.len());
    }
    let mut data = data;
    let header = take(&mut data, 16);
    let byte = |at: usize| header.get(at).copied().unwrap_or(0);
    let num_syms = u32::from(u16::from_le_bytes([byte(0), byte(1)]));
    let relative_base = u64::from_le_bytes(std::array::from_fn(|i| byte(2 + i)));
    let offsets = take(&mut data, num_syms as usize * 4).to_vec();
    let names_len = usize::from(u16::from_le_bytes([byte(10), byte(11)]));
    let names = take(&mut data, names_len).to_vec();
    let token_index = take(&mut data, 512).to_vec();
    let tables = Tables { num_syms, relative_base, offsets, names, token_table: data.to_vec(), token_index };
    if let Ok(symbols) = parse(&tables) {
        assert_eq!(symbols.len(), num_syms as usize);
        assert!(symbols.iter().all(|symbol| symbol.name.len() < MAX_NAME * 3));
        // a name cannot forge lines of the listing
        assert_eq!(text(&symbols).lines().count(), symbols.len());
    }
});
