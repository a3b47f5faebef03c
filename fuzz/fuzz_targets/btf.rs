//! The BTF reader on arbitrary blobs: the first byte picks a member path to look up in
//! `task_struct` and `cred`; every type's kind, members, enumerators and size are asked for,
//! and a Volatility symbol table is made of it. Never a panic, never a hang (chains and nesting
//! are capped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::linux::btf::Btf;
use qemu_bridge::guest::linux::isf;

const PATHS: [&str; 6] = ["tasks", "pid", "comm", "uid.val", "__state", "mm.mmap"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, blob)) = data.split_first() else { return };
    if let Ok(btf) = Btf::parse(blob) {
        for name in ["task_struct", "cred", ""] {
            if let Ok(id) = btf.struct_id(name) {
                let _ = btf.offset_of(id, PATHS[usize::from(pick) % PATHS.len()]);
            }
        }
        for id in 0..=btf.len() as u32 + 1 {
            let _ = (btf.kind(id), btf.members(id), btf.enumerators(id), btf.size_of(id), btf.array_len(id));
        }
        let _ = isf::generate(&btf, &[], "Linux version 6.1\n", 0);
    }
});
