//! The vmcoreinfo parser on arbitrary guest bytes: never a panic, and whatever it accepts is
//! what it promises (starts with OSRELEASE=, KEY=VALUE lines, a PAGESIZE, within a page).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::vmcoreinfo::{parse, VmcoreInfo};

fuzz_target!(|data: &[u8]| {
    if let Some(text) = parse(data) {
        assert!(text.starts_with("OSRELEASE=") && text.ends_with('\n') && text.len() < 4096);
        let info = VmcoreInfo { offset: 0, text };
        assert!(info.release().is_some() && info.get("PAGESIZE").is_some());
        assert!(info.text.lines().all(|line| line.contains('=')));
    }
});
