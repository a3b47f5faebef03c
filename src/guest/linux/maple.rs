//! Linux's maple tree (`lib/maple_tree.c`, Linux >= 6.1), read as drgn's `mt_for_each` reads
//! it: the entries of every leaf, in index order. A process's memory areas live in one
//! (`mm_struct.mm_mt`).
//!
//! The tree is the guest's: nodes are visited once (a node met again is a cycle), at most
//! [`MAX_NODES`] of them and [`MAX_HEIGHT`] deep, and node types no kernel writes are errors.

use std::collections::HashSet;

use super::btf::Btf;
use super::reader::KernelReader;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// Nodes visited at most (a process with 65,530 mappings, the kernel's default
/// `max_map_count`, has a few thousand).
pub const MAX_NODES: usize = 1 << 16;
/// Levels at most (`MAPLE_HEIGHT_MAX`).
pub const MAX_HEIGHT: usize = 31;
/// Bytes of a node (`struct maple_node`, 256-byte aligned: the low byte of a node's address
/// holds its type).
const NODE_SIZE: usize = 256;

/// Where the pivots, slots and metadata of the two node layouts are, from BTF.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    range: NodeLayout,
    arange: NodeLayout,
}

#[derive(Debug, Clone, Copy)]
struct NodeLayout {
    pivot: usize,
    slot: usize,
    slots: usize,
    /// `meta.end`: the last slot in use of a node that is not full.
    end: usize,
}

impl Layout {
    /// Linux 6.1's layout (x86_64), as its BTF gives it: `maple_range_64` has 15 pivots from
    /// byte 8 and 16 slots from byte 128, `maple_arange_64` 9 pivots and 10 slots from byte 80.
    #[cfg(any(test, fuzzing))]
    pub const LINUX_6_1: Layout = Layout {
        range: NodeLayout { pivot: 8, slot: 128, slots: 16, end: 248 },
        arange: NodeLayout { pivot: 8, slot: 80, slots: 10, end: 240 },
    };

    /// `struct maple_range_64` and `struct maple_arange_64`: the offsets of `pivot`, `slot` and
    /// `meta.end`, and the number of slots.
    ///
    /// # Errors
    ///
    /// Types the BTF lacks (a kernel before 6.1), or a layout that does not fit in a node.
    pub fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let node = |name: &str| -> Result<NodeLayout, LinuxError> {
            let id = btf.struct_id(name)?;
            let pivot = btf.offset_of(id, "pivot")? as usize;
            let (slot, slot_type) = btf.field(id, "slot")?;
            let slots = btf.array_len(slot_type)?.unwrap_or(0) as usize;
            let end = btf.offset_of(id, "meta.end")? as usize;
            if slots < 2
                || slot as usize + 8 * slots > NODE_SIZE
                || pivot + 8 * (slots - 1) > NODE_SIZE
                || end >= NODE_SIZE
            {
                return Err(LinuxError::Corrupt {
                    what: "types (BTF)",
                    why: format!("{name} does not fit a node"),
                });
            }
            Ok(NodeLayout { pivot, slot: slot as usize, slots, end })
        };
        Ok(Self { range: node("maple_range_64")?, arange: node("maple_arange_64")? })
    }
}

fn corrupt(why: String) -> LinuxError {
    LinuxError::Corrupt { what: "maple tree", why }
}

/// Whether an entry is a node (`xa_is_node`: internal, and above the first page).
fn is_node(entry: u64) -> bool {
    entry & 3 == 2 && entry > 4096
}

/// The entries of the tree whose `ma_root` is `root`, in index order (each value once per
/// range it is stored in).
///
/// # Errors
///
/// [`LinuxError::Corrupt`] for a cycle, a tree too deep or too large, a node type no kernel
/// writes; [`LinuxError::Read`] for a node the kernel's tables do not map.
pub fn entries<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    layout: &Layout,
    root: u64,
) -> Result<Vec<u64>, LinuxError> {
    let mut walk = Walk { reader, layout, seen: HashSet::new(), entries: Vec::new() };
    if is_node(root) {
        walk.node(root, 0, u64::MAX, 0)?;
    } else if root != 0 && root & 3 != 2 {
        walk.entries.push(root);
    }
    Ok(walk.entries)
}

struct Walk<'a, 'r, M: ?Sized> {
    reader: &'a KernelReader<'r, M>,
    layout: &'a Layout,
    seen: HashSet<u64>,
    entries: Vec<u64>,
}

impl<M: GuestMemory + ?Sized> Walk<'_, '_, M> {
    fn node(&mut self, entry: u64, min: u64, max: u64, depth: usize) -> Result<(), LinuxError> {
        if depth >= MAX_HEIGHT {
            return Err(corrupt(format!("deeper than {MAX_HEIGHT} levels")));
        }
        let address = entry & !(NODE_SIZE as u64 - 1);
        if !self.seen.insert(address) {
            return Err(corrupt(format!("the node at {address:#x} is reached twice")));
        }
        if self.seen.len() > MAX_NODES {
            return Err(corrupt(format!("more than {MAX_NODES} nodes")));
        }
        // maple_leaf_64 (1) and maple_range_64 (2) share a layout; maple_arange_64 (3)
        let kind = (entry >> 3) & 0xf;
        let node = match kind {
            1 | 2 => self.layout.range,
            3 => self.layout.arange,
            other => return Err(corrupt(format!("the node at {address:#x} has type {other}"))),
        };
        let leaf = kind == 1;
        let mut bytes = [0u8; NODE_SIZE];
        self.reader.read(Gva(address), &mut bytes, "maple tree node")?;
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let pivots = node.slots - 1;
        let pivot = |index: usize| if index < pivots { word(node.pivot + 8 * index) } else { max };
        // the last slot in use (ma_data_end): a full node's last, the one whose pivot is the
        // node's end, or the one its metadata names
        let last = pivot(pivots - 1);
        let end = if kind != 3 && last == max {
            pivots - 1
        } else if kind != 3 && last != 0 {
            pivots
        } else {
            usize::from(bytes[node.end]).min(pivots)
        };
        let mut low = min;
        for index in 0..=end {
            // a pivot of 0 past the first slot is the node's end (mas_logical_pivot)
            let high = match pivot(index) {
                0 if index > 0 => max,
                high => high,
            };
            if high < low || high > max {
                return Err(corrupt(format!(
                    "the node at {address:#x} has pivot {high:#x} outside {low:#x}..={max:#x}"
                )));
            }
            let value = word(node.slot + 8 * index);
            if leaf {
                if value != 0 && value & 3 != 2 {
                    self.entries.push(value);
                }
            } else if is_node(value) {
                self.node(value, low, high, depth + 1)?;
            } else if value != 0 {
                return Err(corrupt(format!(
                    "the node at {address:#x} has a child {value:#x} that is no node"
                )));
            }
            if high == max {
                break;
            }
            low = high + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::tests_support::{PagedMemory, KERNEL};

    /// A node entry: the node's address with its type in bits 3..6 and the internal tag.
    fn enode(address: u64, kind: u64) -> u64 {
        address | kind << 3 | 2
    }

    fn range_node(memory: &mut PagedMemory, at: u64, pivots: &[u64], slots: &[u64]) {
        // meta.end: the last slot in use
        memory.put(at + 248, &[(slots.len() - 1) as u8]);
        for (index, pivot) in pivots.iter().enumerate() {
            memory.put_u64(at + 8 + 8 * index as u64, *pivot);
        }
        for (index, slot) in slots.iter().enumerate() {
            memory.put_u64(at + 128 + 8 * index as u64, *slot);
        }
    }

    #[test]
    fn leaves_are_read_in_order_under_a_root_and_gaps_are_skipped() {
        let (kernel, mut memory) = PagedMemory::kernel();
        let layout = Layout::LINUX_6_1;
        let (root, left, right) = (KERNEL + 0x1000, KERNEL + 0x1100, KERNEL + 0x1200);
        // root: [0, 0x4fff] -> left, [0x5000, max] -> right
        range_node(&mut memory, root, &[0x4fff], &[enode(left, 1), enode(right, 1)]);
        // left: gap to 0xfff, entry A to 0x1fff, gap to 0x4fff (the node's end)
        range_node(&mut memory, left, &[0xfff, 0x1fff, 0x4fff], &[0, 0xaaa0, 0]);
        // right: entry B to 0x5fff, entry C to the end (its last pivot is the node's max)
        range_node(&mut memory, right, &[0x5fff, u64::MAX], &[0xbbb0, 0xccc0, 0xdead0]);
        let found = entries(&KernelReader::new(&kernel, &memory), &layout, enode(root, 2)).unwrap();
        assert_eq!(found, [0xaaa0, 0xbbb0, 0xccc0]);
        assert!(entries(&KernelReader::new(&kernel, &memory), &layout, 0).unwrap().is_empty());
        assert_eq!(
            entries(&KernelReader::new(&kernel, &memory), &layout, 0x1230).unwrap(),
            [0x1230],
            "a lone entry"
        );
    }

    #[test]
    fn cycles_bad_pivots_bad_types_and_unmapped_nodes_are_errors() {
        let (kernel, mut memory) = PagedMemory::kernel();
        let layout = Layout::LINUX_6_1;
        let root = KERNEL + 0x1000;
        // a node whose child is itself
        range_node(&mut memory, root, &[0x4fff], &[enode(root, 2), 0]);
        let err = entries(&KernelReader::new(&kernel, &memory), &layout, enode(root, 2)).unwrap_err();
        assert!(err.to_string().contains("reached twice"), "{err}");
        // pivots that go down
        range_node(&mut memory, root, &[0x4fff, 0x1000], &[0x10, 0x20, 0x30]);
        let err = entries(&KernelReader::new(&kernel, &memory), &layout, enode(root, 1)).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        // a type no kernel writes, a child that is no node, a node nowhere
        assert!(entries(&KernelReader::new(&kernel, &memory), &layout, enode(root, 7)).is_err());
        range_node(&mut memory, root, &[0x4fff, 0], &[0x10, 0]);
        assert!(entries(&KernelReader::new(&kernel, &memory), &layout, enode(root, 2))
            .unwrap_err()
            .to_string()
            .contains("no node"));
        assert!(matches!(
            entries(&KernelReader::new(&kernel, &memory), &layout, enode(0xffff_ffff_9000_0000, 1)),
            Err(LinuxError::Read { .. })
        ));
        // a chain deeper than any tree: each node's first child is the next
        for level in 0..40u64 {
            let node = KERNEL + 0x10_0000 + level * 0x100;
            range_node(&mut memory, node, &[0, 0], &[enode(node + 0x100, 2), 0]);
        }
        let err =
            entries(&KernelReader::new(&kernel, &memory), &layout, enode(KERNEL + 0x10_0000, 2)).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }
}
