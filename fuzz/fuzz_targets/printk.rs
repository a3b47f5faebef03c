//! The printk ring-buffer reader on an arbitrary guest-memory image (addresses are offsets in
//! the image, anything past it fails to read), with Linux 6.1's layout: never a panic, at most
//! one record per descriptor of the ring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::linux::printk::{records, text, Layout, MAX_COUNT_BITS};
use qemu_bridge::guest::linux::LinuxError;

fuzz_target!(|data: &[u8]| {
    let reader = |va: u64, buf: &mut [u8]| -> Result<(), LinuxError> {
        let bytes = usize::try_from(va)
            .ok()
            .and_then(|start| data.get(start..start.checked_add(buf.len())?))
            .ok_or(LinuxError::Missing("memory".into()))?;
        buf.copy_from_slice(bytes);
        Ok(())
    };
    if let Ok(found) = records(&Layout::LINUX_6_1, 0, &reader) {
        assert!(found.len() <= 1 << MAX_COUNT_BITS);
        let _ = text(&found);
    }
});
