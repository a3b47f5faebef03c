//! A process found by its pid as the kernel finds it (`find_task_by_pid_ns`, drgn's
//! `find_task`): the pid namespace's IDR, an xarray of `struct pid` indexed by number, then the
//! task that leads the thread group of that `struct pid` (`pid_task(pid, PIDTYPE_TGID)`). A few
//! reads whatever the number of processes, where a walk of the task list reads every task.
//!
//! The tree is the guest's: each level's `shift` must be the one below its parent's (so a walk
//! is at most 64 / `XA_CHUNK_SHIFT` levels deep and cannot loop), a `struct pid` must carry the
//! number it was found under, and the task it leads must have that pid; anything else is an
//! error saying where.

use super::btf::Btf;
use super::reader::KernelReader;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// Where each member is, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// `pid_namespace.idr.idr_rt.xa_head`.
    head: u64,
    /// `pid_namespace.idr.idr_base`.
    base: u64,
    /// `xa_node.shift` (a byte).
    node_shift: u64,
    /// `xa_node.slots`.
    node_slots: u64,
    /// log2 of the slots of a node (`XA_CHUNK_SHIFT`: 6, or 4 with `CONFIG_BASE_SMALL`).
    chunk_shift: u32,
    /// `pid.tasks[PIDTYPE_TGID].first`.
    leader: u64,
    /// `pid.numbers[0].nr` (an int).
    number: u64,
    /// `pid.numbers[0].ns`.
    namespace: u64,
    /// `task_struct.pid_links[PIDTYPE_TGID]`.
    task_link: u64,
}

impl Offsets {
    /// A layout like Linux 6.1's on x86_64, for tests and fuzzing: `idr` at byte 8 of
    /// `pid_namespace`, 64 slots from byte 40 of an `xa_node`, `tasks` from byte 16 of
    /// `struct pid` and `numbers` from 96, `pid_links` at 0x500 of a task.
    #[cfg(any(test, fuzzing))]
    pub const LINUX_6_1: Offsets = Offsets {
        head: 8,
        base: 16,
        node_shift: 0,
        node_slots: 40,
        chunk_shift: 6,
        leader: 16 + 8,
        number: 96,
        namespace: 96 + 8,
        task_link: 0x500 + 16,
    };

    /// The offsets of this kernel's pid namespace, xarray node, `struct pid` and task links.
    ///
    /// # Errors
    ///
    /// A structure, member or enumerator (`PIDTYPE_TGID`, Linux >= 4.19) the BTF lacks.
    pub fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let id = |name: &str| btf.struct_id(name).map_err(LinuxError::from);
        let (namespace, node, pid, upid, task) =
            (id("pid_namespace")?, id("xa_node")?, id("pid")?, id("upid")?, id("task_struct")?);
        let of = |strukt: u32, path: &str| btf.offset_of(strukt, path).map_err(LinuxError::from);
        let tgid = btf
            .enumerator("pid_type", "PIDTYPE_TGID")
            .and_then(|value| u64::try_from(value).ok())
            .ok_or_else(|| LinuxError::NoTypes("enum pid_type has no PIDTYPE_TGID".into()))?;
        let (slots, slots_type) = btf.field(node, "slots")?;
        let chunk = btf.array_len(slots_type)?.unwrap_or(0);
        if !(4..=64).contains(&chunk) || !chunk.is_power_of_two() {
            return Err(LinuxError::NoTypes(format!("xa_node has {chunk} slots")));
        }
        let (head_size, node_size) = (btf.size_of(id("hlist_head")?)?, btf.size_of(id("hlist_node")?)?);
        Ok(Self {
            head: of(namespace, "idr.idr_rt.xa_head")?,
            base: of(namespace, "idr.idr_base")?,
            node_shift: of(node, "shift")?,
            node_slots: slots,
            chunk_shift: chunk.trailing_zeros(),
            leader: of(pid, "tasks")? + tgid * head_size,
            number: of(pid, "numbers")? + of(upid, "nr")?,
            namespace: of(pid, "numbers")? + of(upid, "ns")?,
            task_link: of(task, "pid_links")? + tgid * node_size,
        })
    }
}

/// Whether an entry is an internal one (`xa_is_internal`): a node, or a retry, zero or sibling
/// entry, none of them a `struct pid`.
fn is_internal(entry: u64) -> bool {
    entry & 3 == 2
}

/// Whether an entry is a node (`xa_is_node`).
fn is_node(entry: u64) -> bool {
    is_internal(entry) && entry > 4096
}

fn corrupt(why: String) -> LinuxError {
    LinuxError::Corrupt { what: "pid tree", why }
}

/// The `struct pid` stored under `index` in the xarray whose head is at `head` (`xa_load`),
/// `None` where there is none.
fn load<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    offsets: &Offsets,
    head: Gva,
    index: u64,
) -> Result<Option<Gva>, LinuxError> {
    let chunk = 1u64 << offsets.chunk_shift;
    let shift_of = |node: Gva| -> Result<u32, LinuxError> {
        let mut byte = [0u8; 1];
        reader.read(node.wrapping_add(offsets.node_shift), &mut byte, "pid tree node")?;
        Ok(u32::from(byte[0]))
    };
    let mut entry = reader.u64(head, "pid tree")?;
    if !is_node(entry) {
        // a lone entry is index 0's
        return Ok((index == 0 && entry != 0 && !is_internal(entry)).then_some(Gva(entry)));
    }
    let mut node = Gva(entry - 2);
    let mut shift = shift_of(node)?;
    if shift % offsets.chunk_shift != 0 || shift >= 64 {
        return Err(corrupt(format!("the node at {node:#x} has shift {shift}")));
    }
    if shift + offsets.chunk_shift < 64 && index >> (shift + offsets.chunk_shift) != 0 {
        return Ok(None); // past what the tree holds
    }
    loop {
        let slot = (index >> shift) & (chunk - 1);
        entry = reader.u64(node.wrapping_add(offsets.node_slots).wrapping_add(8 * slot), "pid tree node")?;
        if is_node(entry) {
            let child = Gva(entry - 2);
            let child_shift = shift_of(child)?;
            if shift == 0 || child_shift + offsets.chunk_shift != shift {
                return Err(corrupt(format!(
                    "the node at {child:#x} has shift {child_shift} under a node of shift {shift}"
                )));
            }
            (node, shift) = (child, child_shift);
            continue;
        }
        if entry == 0 || is_internal(entry) {
            return Ok(None);
        }
        if shift != 0 {
            return Err(corrupt(format!("the node at {node:#x} of shift {shift} holds an entry {entry:#x}")));
        }
        return Ok(Some(Gva(entry)));
    }
}

/// The task that leads the thread group `pid` in the pid namespace at `namespace`
/// (`init_pid_ns` for the numbers `/proc` of the host's view shows), as `read_task` reads it
/// from its address (with its pid and tgid, which must be `pid`), `None` where there is no
/// such process (no such number, or a thread's number, which leads no group).
///
/// # Errors
///
/// [`LinuxError::Corrupt`] for a tree of the wrong shape, or a `struct pid` or task that is
/// not the one of `pid`; [`LinuxError::Read`] for memory the kernel's tables do not map.
pub fn find_leader<M: GuestMemory + ?Sized, T>(
    reader: &KernelReader<'_, M>,
    offsets: &Offsets,
    namespace: Gva,
    pid: i32,
    read_task: impl Fn(Gva) -> Result<((i32, i32), T), LinuxError>,
) -> Result<Option<T>, LinuxError> {
    if pid <= 0 {
        return Ok(None);
    }
    let base = u64::from(reader.u32(namespace.wrapping_add(offsets.base), "pid namespace")?);
    let Some(index) = (pid as u64).checked_sub(base) else { return Ok(None) };
    let Some(found) = load(reader, offsets, namespace.wrapping_add(offsets.head), index)? else {
        return Ok(None);
    };
    let number = reader.u32(found.wrapping_add(offsets.number), "struct pid")? as i32;
    let owner = reader.pointer(found.wrapping_add(offsets.namespace), "struct pid")?;
    if number != pid || owner != namespace {
        return Err(corrupt(format!(
            "the struct pid at {found:#x} found under {pid} is {number} of namespace {owner:#x}"
        )));
    }
    let link = reader.pointer(found.wrapping_add(offsets.leader), "struct pid")?;
    if link.is_null() {
        return Ok(None);
    }
    let task = link.wrapping_sub(offsets.task_link);
    let ((task_pid, task_tgid), read) = read_task(task)?;
    if task_pid != pid || task_tgid != pid {
        return Err(corrupt(format!(
            "the task at {task:#x} that struct pid {pid} names has pid {task_pid} and tgid {task_tgid}"
        )));
    }
    Ok(Some(read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::memory::tests_support::{PagedMemory, KERNEL};

    const OFFSETS: Offsets = Offsets::LINUX_6_1;
    const NAMESPACE: u64 = KERNEL;
    const NODES: u64 = KERNEL + 0x1000;
    const PIDS: u64 = KERNEL + 0x10_0000;
    const TASKS: u64 = KERNEL + 0x20_0000;

    fn node_at(index: u64) -> u64 {
        NODES + index * 0x400
    }

    /// A tree of two levels: a root of shift 6 whose slots 0 and 1 are leaves of shift 0.
    fn tree() -> (crate::guest::linux::LinuxKernel, PagedMemory) {
        let (kernel, mut memory) = PagedMemory::kernel();
        memory.put_u64(NAMESPACE + OFFSETS.head, node_at(0) | 2);
        memory.put(node_at(0), &[6]);
        for leaf in 1..=2u64 {
            memory.put(node_at(leaf), &[0]);
            memory.put_u64(node_at(0) + OFFSETS.node_slots + 8 * (leaf - 1), node_at(leaf) | 2);
        }
        (kernel, memory)
    }

    /// `struct pid` number `pid` (in namespace `namespace`), leading `task` (0 for none).
    fn put_pid(memory: &mut PagedMemory, pid: u64, namespace: u64, leads: bool) {
        let at = PIDS + pid * 0x100;
        memory.put(at + OFFSETS.number, &(pid as u32).to_le_bytes());
        memory.put_u64(at + OFFSETS.namespace, namespace);
        let task = TASKS + pid * 0x1000;
        memory.put_u64(at + OFFSETS.leader, if leads { task + OFFSETS.task_link } else { 0 });
        let (leaf, slot) = (node_at(1 + pid / 64), pid % 64);
        memory.put_u64(leaf + OFFSETS.node_slots + 8 * slot, at);
    }

    fn find(
        memory: &PagedMemory,
        kernel: &crate::guest::linux::LinuxKernel,
        pid: i32,
    ) -> Result<Option<u64>, LinuxError> {
        let reader = KernelReader::new(kernel, memory);
        // the task's pid and tgid: the tests' tasks are what their address says
        let found = find_leader(&reader, &OFFSETS, Gva(NAMESPACE), pid, |task| {
            let pid = ((task.0 - TASKS) / 0x1000) as i32;
            Ok(((pid, pid), task))
        });
        found.map(|task| task.map(u64::from))
    }

    #[test]
    fn pids_are_found_through_the_tree_and_absent_ones_are_none() {
        let (kernel, mut memory) = tree();
        for pid in [1, 2, 63, 64, 100] {
            put_pid(&mut memory, pid, NAMESPACE, true);
        }
        put_pid(&mut memory, 70, NAMESPACE, false);
        for pid in [1, 2, 63, 64, 100] {
            assert_eq!(find(&memory, &kernel, pid as i32).unwrap(), Some(TASKS + pid * 0x1000), "{pid}");
        }
        // a thread's number leads no group; numbers nowhere in the tree; past the tree
        for pid in [70, 3, 127, 128, 5000, i32::MAX, 0, -1] {
            assert_eq!(find(&memory, &kernel, pid).unwrap(), None, "{pid}");
        }
        // a lone entry at the head is index 0's
        memory.put_u64(NAMESPACE + OFFSETS.head, PIDS);
        assert_eq!(find(&memory, &kernel, 1).unwrap(), None);
    }

    #[test]
    fn loops_bad_shifts_and_lying_pids_are_errors() {
        let (kernel, mut memory) = tree();
        put_pid(&mut memory, 5, NAMESPACE, true);
        // a leaf that points back at the root: a shift that does not go down
        memory.put_u64(node_at(1) + OFFSETS.node_slots + 8 * 6, node_at(0) | 2);
        let err = find(&memory, &kernel, 6).unwrap_err();
        assert!(err.to_string().contains("pid tree is corrupt"), "{err}");
        // a node that points at itself
        memory.put_u64(node_at(0) + OFFSETS.node_slots, node_at(0) | 2);
        assert!(find(&memory, &kernel, 5).unwrap_err().to_string().contains("under a node of shift 6"));
        // a root whose shift is not a multiple of the chunk's
        let (kernel, mut memory) = tree();
        memory.put(node_at(0), &[7]);
        assert!(find(&memory, &kernel, 5).unwrap_err().to_string().contains("shift 7"));
        // a struct pid of another number or namespace, an entry in a node that is no leaf
        let (kernel, mut memory) = tree();
        put_pid(&mut memory, 5, NAMESPACE + 8, true);
        assert!(find(&memory, &kernel, 5).unwrap_err().to_string().contains("namespace"));
        put_pid(&mut memory, 9, NAMESPACE, true);
        memory.put(PIDS + 9 * 0x100 + OFFSETS.number, &10u32.to_le_bytes());
        assert!(find(&memory, &kernel, 9).unwrap_err().to_string().contains("is 10"));
        memory.put_u64(node_at(0) + OFFSETS.node_slots, PIDS);
        assert!(find(&memory, &kernel, 5).unwrap_err().to_string().contains("holds an entry"));
        // a task whose own pid is another
        let (kernel, mut memory) = tree();
        put_pid(&mut memory, 5, NAMESPACE, true);
        let reader = KernelReader::new(&kernel, &memory);
        let err = find_leader(&reader, &OFFSETS, Gva(NAMESPACE), 5, |task| Ok(((5, 4), task))).unwrap_err();
        assert!(err.to_string().contains("tgid 4"), "{err}");
        // a tree nowhere
        memory.put_u64(NAMESPACE + OFFSETS.head, 0xffff_ffff_9000_0002);
        assert!(matches!(find(&memory, &kernel, 5), Err(LinuxError::Read { .. })));
    }
}
