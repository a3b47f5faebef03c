//! The one bounded walk of the kernel's linked lists (`struct list_head`), as drgn's
//! `list_for_each` with a cap and cycle detection: every list of tasks, modules and module
//! users is walked here.

use std::collections::HashSet;

use super::{LinuxError, LinuxKernel};
use crate::guest::memory::GuestMemory;

/// The addresses of the `list_head`s linked from the one at `head`, in order, `head` itself not
/// among them (the caller subtracts the member's offset to reach each entry).
///
/// # Errors
///
/// [`LinuxError::Corrupt`] for a list longer than `max` or one that comes back to a node other
/// than its head (a loop), [`LinuxError::Read`] for a pointer the kernel's tables do not map.
pub fn list<M: GuestMemory + ?Sized>(
    kernel: &LinuxKernel,
    memory: &M,
    head: u64,
    max: usize,
    what: &'static str,
) -> Result<Vec<u64>, LinuxError> {
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    let mut node = kernel.read_u64(memory, head, what)?;
    while node != head {
        if nodes.len() >= max {
            return Err(LinuxError::Corrupt { what, why: format!("more than {max} entries") });
        }
        if !seen.insert(node) {
            return Err(LinuxError::Corrupt {
                what,
                why: format!("it comes back to {node:#x} after {} entries", nodes.len()),
            });
        }
        nodes.push(node);
        node = kernel.read_u64(memory, node, what)?;
    }
    Ok(nodes)
}

/// A C string of at most `max` bytes at `va` (the bytes before its NUL, or all `max` of them),
/// read page by page so that a short string at the end of a mapping reads.
///
/// # Errors
///
/// [`LinuxError::Read`] when its first byte is not mapped.
pub fn c_string<M: GuestMemory + ?Sized>(
    kernel: &LinuxKernel,
    memory: &M,
    va: u64,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, LinuxError> {
    let mut bytes = Vec::new();
    let mut at = va;
    while bytes.len() < max {
        let room = (crate::ram::PAGE_SIZE as u64 - at % crate::ram::PAGE_SIZE as u64) as usize;
        let mut chunk = vec![0u8; room.min(max - bytes.len())];
        if let Err(err) = kernel.read(memory, at, &mut chunk, what) {
            if bytes.is_empty() {
                return Err(err);
            }
            break;
        }
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk);
        at = at.wrapping_add(chunk.len() as u64);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::tests_support::PagedMemory;

    #[test]
    fn lists_end_at_their_head_and_loops_and_overlong_lists_are_errors() {
        let (kernel, mut memory) = PagedMemory::kernel();
        let base = 0xffff_ffff_8100_0000u64;
        // head -> a -> b -> head
        memory.put_u64(base, base + 0x100);
        memory.put_u64(base + 0x100, base + 0x200);
        memory.put_u64(base + 0x200, base);
        assert_eq!(list(&kernel, &memory, base, 10, "list").unwrap(), [base + 0x100, base + 0x200]);
        assert!(list(&kernel, &memory, base, 1, "list").unwrap_err().to_string().contains("more than 1"));
        // b -> a: a loop that never reaches the head
        memory.put_u64(base + 0x200, base + 0x100);
        assert!(list(&kernel, &memory, base, 10, "list").unwrap_err().to_string().contains("comes back"));
        // a pointer to nowhere
        memory.put_u64(base + 0x200, 0xffff_ffff_9000_0000);
        assert!(matches!(list(&kernel, &memory, base, 10, "list"), Err(LinuxError::Read { .. })));
        // an empty list
        memory.put_u64(base + 0x300, base + 0x300);
        assert!(list(&kernel, &memory, base + 0x300, 10, "list").unwrap().is_empty());
    }

    #[test]
    fn strings_stop_at_their_nul_or_their_cap() {
        let (kernel, mut memory) = PagedMemory::kernel();
        let base = 0xffff_ffff_8100_0000u64;
        memory.put(base + 0xffc, b"abcdefg\0");
        assert_eq!(c_string(&kernel, &memory, base + 0xffc, 100, "name").unwrap(), b"abcdefg");
        assert_eq!(c_string(&kernel, &memory, base + 0xffc, 3, "name").unwrap(), b"abc");
        assert!(c_string(&kernel, &memory, 0xffff_ffff_9000_0000, 3, "name").is_err());
    }
}
