//! The one bounded walk of the kernel's linked lists (`struct list_head`), as drgn's
//! `list_for_each` with a cap and cycle detection: every list of tasks, modules and module
//! users is walked here.

use std::collections::HashSet;

use super::reader::KernelReader;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// The addresses of the `list_head`s linked from the one at `head`, in order, `head` itself not
/// among them (the caller subtracts the member's offset to reach each entry).
///
/// # Errors
///
/// [`LinuxError::Corrupt`] for a list longer than `max` or one that comes back to a node other
/// than its head (a loop), [`LinuxError::Read`] for a pointer the kernel's tables do not map.
pub fn list<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    head: Gva,
    max: usize,
    what: &'static str,
) -> Result<Vec<Gva>, LinuxError> {
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    let mut node = reader.pointer(head, what)?;
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
        node = reader.pointer(node, what)?;
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::tests_support::PagedMemory;

    #[test]
    fn lists_end_at_their_head_and_loops_and_overlong_lists_are_errors() {
        let (kernel, mut memory) = PagedMemory::kernel();
        let base = 0xffff_ffff_8100_0000u64;
        let at = |offset: u64| Gva(base + offset);
        // head -> a -> b -> head
        memory.put_u64(base, base + 0x100);
        memory.put_u64(base + 0x100, base + 0x200);
        memory.put_u64(base + 0x200, base);
        assert_eq!(list(&KernelReader::new(&kernel, &memory), at(0), 10, "list").unwrap(), [at(0x100), at(0x200)]);
        assert!(list(&KernelReader::new(&kernel, &memory), at(0), 1, "list")
            .unwrap_err()
            .to_string()
            .contains("more than 1"));
        // b -> a: a loop that never reaches the head
        memory.put_u64(base + 0x200, base + 0x100);
        assert!(list(&KernelReader::new(&kernel, &memory), at(0), 10, "list")
            .unwrap_err()
            .to_string()
            .contains("comes back"));
        // a pointer to nowhere
        memory.put_u64(base + 0x200, 0xffff_ffff_9000_0000);
        assert!(matches!(
            list(&KernelReader::new(&kernel, &memory), at(0), 10, "list"),
            Err(LinuxError::Read { .. })
        ));
        // an empty list
        memory.put_u64(base + 0x300, base + 0x300);
        assert!(list(&KernelReader::new(&kernel, &memory), at(0x300), 10, "list").unwrap().is_empty());
    }
}
