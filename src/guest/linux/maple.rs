//! Linux's maple tree (`lib/maple_tree.c`, Linux >= 6.1), read as drgn's `mt_for_each` reads
//! it: the entries of every leaf, in index order. A process's memory areas live in one
//! (`mm_struct.mm_mt`).
//!
//! The tree is the guest's: nodes are visited once (a node met again is a cycle), at most
//! [`MAX_NODES`] of them and [`MAX_HEIGHT`] deep, and node types no kernel writes are errors.

use std::collections::HashSet;

use super::btf::Btf;
use super::{LinuxError, LinuxKernel};
use crate::guest::memory::GuestMemory;

/// Nodes visited at most (a process with 65,530 mappings, the kernel's default
/// `max_map_count`, has a few thousand).
pub const MAX_NODES: usize = 1 << 16;
/// Levels at most (`MAPLE_HEIGHT_MAX`).
pub const MAX_HEIGHT: usize = 31;
/// Bytes of a node (`struct maple_node`, 256-byte aligned: the low byte of a node's address
/// holds its type).
const NODE_SIZE: usize = 256;

/// Where the pivots and slots of the two node layouts are, from BTF.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    range: (usize, usize, usize),
    arange: (usize, usize, usize),
}

impl Layout {
    /// `struct maple_range_64` and `struct maple_arange_64`: the offsets of `pivot` and `slot`
    /// and the number of slots.
    ///
    /// # Errors
    ///
    /// Types the BTF lacks (a kernel before 6.1), or a layout that does not fit in a node.
    pub fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let node = |name: &str| -> Result<(usize, usize, usize), LinuxError> {
            let id = btf.struct_id(name)?;
            let pivot = btf.offset_of(id, "pivot")? as usize;
            let (slot, slot_type) = btf.field(id, "slot")?;
            let slots = btf.array_len(slot_type)?.unwrap_or(0) as usize;
            if slots < 2 || slot as usize + 8 * slots > NODE_SIZE || pivot + 8 * (slots - 1) > NODE_SIZE {
                return Err(LinuxError::Corrupt {
                    what: "types (BTF)",
                    why: format!("{name} does not fit a node"),
                });
            }
            Ok((pivot, slot as usize, slots))
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
    kernel: &LinuxKernel,
    memory: &M,
    layout: &Layout,
    root: u64,
) -> Result<Vec<u64>, LinuxError> {
    let mut walk = Walk { kernel, memory, layout, seen: HashSet::new(), entries: Vec::new() };
    if is_node(root) {
        walk.node(root, 0, u64::MAX, 0)?;
    } else if root != 0 && root & 3 != 2 {
        walk.entries.push(root);
    }
    Ok(walk.entries)
}

struct Walk<'a, M: ?Sized> {
    kernel: &'a LinuxKernel,
    memory: &'a M,
    layout: &'a Layout,
    seen: HashSet<u64>,
    entries: Vec<u64>,
}

impl<M: GuestMemory + ?Sized> Walk<'_, M> {
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
        let (pivot, slot, slots) = match kind {
            1 | 2 => self.layout.range,
            3 => self.layout.arange,
            other => return Err(corrupt(format!("the node at {address:#x} has type {other}"))),
        };
        let leaf = kind == 1;
        let mut bytes = [0u8; NODE_SIZE];
        self.kernel.read(self.memory, address, &mut bytes, "maple tree node")?;
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut low = min;
        for index in 0..slots {
            let high = if index + 1 < slots { word(pivot + 8 * index) } else { max };
            // an unused pivot (0 past the first) ends the node's data
            if index > 0 && high == 0 {
                break;
            }
            if high < low || high > max {
                return Err(corrupt(format!(
                    "the node at {address:#x} has pivot {high:#x} outside {low:#x}..={max:#x}"
                )));
            }
            let value = word(slot + 8 * index);
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
