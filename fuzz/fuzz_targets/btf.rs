//! The BTF reader on arbitrary blobs: the first byte picks a member path to look up in
//! `task_struct` and `cred`; every type's kind, members, enumerators, size and record are asked
//! for, each named type is found by its name, and a Volatility symbol table is made of it (valid
//! JSON). Never a panic, never a hang (chains and nesting are capped).
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
            // a record is where the type section has room for it, and every named type is
            // found by its name
            if let Some((_, _, name_off)) = btf.record(id) {
                let name = btf.type_name(id);
                if name_off != 0 && !name.is_empty() && !name.contains(char::REPLACEMENT_CHARACTER) {
                    assert!(btf.ids_named(&name).any(|found| found == id), "type {id} {name:?}");
                }
            }
        }
        for name in ["PIDTYPE_TGID", "", "task_struct"] {
            if let Some((id, index)) = btf.enumerator_named(name) {
                assert_eq!(btf.enumerators(id).get(index).map(|(known, _)| known.as_str()), Some(name));
            }
        }
        // the table, written by hand, is JSON whatever the names hold
        let table = isf::generate(&btf, &[], "Linux version 6.1\n\"\u{1}", 0);
        serde_json::from_slice::<serde_json::Value>(&table).expect("the table is JSON");
    }
});
