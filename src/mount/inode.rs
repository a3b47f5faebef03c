//! Inode numbers: every node of the tree to one `u64` and back, exactly.
//!
//! ```text
//! 1                                     the root
//! bits 63..62  class
//!      61..32  the VM's number (1 to 2^30 - 1)
//!      31..0   class 0, the VM's own nodes: bits 15..8 the place (its directory, a file of its
//!                table, cpus, linux, a file of linux's table, proc, volatility, the symbol
//!                table), bits 7..0 the file's row in its table (0 for the others), 31..16 zero
//!              class 1, vCPUs: bits 31..8 the vCPU's index, 7..0 0 for its directory or the
//!                file's row + 1
//!              class 2, processes: bits 29..8 the pid (1 to 2^22 - 1), 7..0 0 for its
//!                directory or the file's row + 1, 31..30 zero
//! ```
//!
//! [`Node::decode`] refuses every number [`Node::encode`] does not make: no two nodes share an
//! inode, and no inode names what it does not. The numbers mean nothing outside the mount.

use super::table::{CPU_FILES, LINUX_FILES, PROCESS_FILES, VM_FILES};

/// The root's inode (FUSE's).
const ROOT: u64 = 1;
/// Where the class starts.
const CLASS_SHIFT: u32 = 62;
/// The VM's own nodes, its vCPUs' and its processes'.
const CLASS_OWN: u64 = 0;
const CLASS_CPU: u64 = 1;
const CLASS_PROCESS: u64 = 2;
/// Where the VM's number starts, and how many bits it has.
const VM_SHIFT: u32 = 32;
const VM_BITS: u32 = CLASS_SHIFT - VM_SHIFT;
/// Where a vCPU's index or a pid starts (the row is below).
const INDEX_SHIFT: u32 = 8;
const ROW_MASK: u32 = (1 << INDEX_SHIFT) - 1;
/// Bits of a pid: Linux's `PID_MAX_LIMIT` is 2^22, so every pid is below it.
const PID_BITS: u32 = 22;

/// The places of a VM's own nodes (class 0, bits 15..8).
const PLACE_VM: u32 = 0;
const PLACE_VM_FILE: u32 = 1;
const PLACE_CPUS: u32 = 2;
const PLACE_LINUX: u32 = 3;
const PLACE_LINUX_FILE: u32 = 4;
const PLACE_PROC: u32 = 5;
const PLACE_VOLATILITY: u32 = 6;
const PLACE_ISF: u32 = 7;

// a table's rows, and a row + 1 for the files of vCPUs and processes, fit below INDEX_SHIFT
const _: () = assert!(VM_FILES < ROW_MASK as usize);
const _: () = assert!(LINUX_FILES < ROW_MASK as usize);
const _: () = assert!(CPU_FILES < ROW_MASK as usize);
const _: () = assert!(PROCESS_FILES < ROW_MASK as usize);

/// A VM's number in the watcher (never 0), as far as inodes hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmNumber(u64);

impl VmNumber {
    /// The largest number with inodes.
    pub const MAX: u64 = (1 << VM_BITS) - 1;

    /// `number`, if it has inodes (1 to [`Self::MAX`]).
    pub fn new(number: u64) -> Option<Self> {
        (1..=Self::MAX).contains(&number).then_some(Self(number))
    }

    /// The watcher's number.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A vCPU's index, as far as inodes hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cpu(u32);

impl Cpu {
    /// The largest index with inodes (QEMU allows 4096 vCPUs at most on any machine).
    pub const MAX: usize = (1 << (32 - INDEX_SHIFT)) - 1;

    /// The vCPU `index`, if it has inodes.
    pub fn new(index: usize) -> Option<Self> {
        (index <= Self::MAX).then_some(Self(index as u32))
    }

    /// Its index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A process's pid, as far as inodes hold it (every pid Linux gives but the idle task's 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid(i32);

impl Pid {
    /// The largest pid with inodes (`PID_MAX_LIMIT` - 1).
    pub const MAX: i32 = (1 << PID_BITS) - 1;

    /// `pid`, if it has inodes (1 to [`Self::MAX`]).
    pub fn new(pid: i32) -> Option<Self> {
        (1..=Self::MAX).contains(&pid).then_some(Self(pid))
    }

    /// The pid.
    pub fn get(self) -> i32 {
        self.0
    }
}

/// A row of a directory's table of `LEN` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row<const LEN: usize>(u8);

impl<const LEN: usize> Row<LEN> {
    /// Row `index`, if the table has it.
    pub fn new(index: usize) -> Option<Self> {
        (index < LEN).then_some(Self(index as u8))
    }

    /// Its index in the table.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every row of the table, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..LEN as u8).map(Self)
    }
}

/// What an inode names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// `/`
    Root,
    /// `<vm>/`
    Vm(VmNumber),
    /// `<vm>/<file>`
    VmFile(VmNumber, Row<VM_FILES>),
    /// `<vm>/cpus/`
    Cpus(VmNumber),
    /// `<vm>/cpus/<n>/`
    Cpu(VmNumber, Cpu),
    /// `<vm>/cpus/<n>/<file>`
    CpuFile(VmNumber, Cpu, Row<CPU_FILES>),
    /// `<vm>/linux/`
    Linux(VmNumber),
    /// `<vm>/linux/<file>`
    LinuxFile(VmNumber, Row<LINUX_FILES>),
    /// `<vm>/linux/proc/`
    Proc(VmNumber),
    /// `<vm>/linux/proc/<pid>/`
    Process(VmNumber, Pid),
    /// `<vm>/linux/proc/<pid>/<file>`
    ProcessFile(VmNumber, Pid, Row<PROCESS_FILES>),
    /// `<vm>/linux/volatility/`
    Volatility(VmNumber),
    /// `<vm>/linux/volatility/<release>-<hash>.json`
    Isf(VmNumber),
}

impl Node {
    /// Its inode.
    pub fn encode(self) -> u64 {
        match self {
            Node::Root => ROOT,
            Node::Vm(vm) => own(vm, PLACE_VM, 0),
            Node::VmFile(vm, row) => own(vm, PLACE_VM_FILE, row.0),
            Node::Cpus(vm) => own(vm, PLACE_CPUS, 0),
            Node::Linux(vm) => own(vm, PLACE_LINUX, 0),
            Node::LinuxFile(vm, row) => own(vm, PLACE_LINUX_FILE, row.0),
            Node::Proc(vm) => own(vm, PLACE_PROC, 0),
            Node::Volatility(vm) => own(vm, PLACE_VOLATILITY, 0),
            Node::Isf(vm) => own(vm, PLACE_ISF, 0),
            Node::Cpu(vm, cpu) => indexed(CLASS_CPU, vm, cpu.0, None),
            Node::CpuFile(vm, cpu, row) => indexed(CLASS_CPU, vm, cpu.0, Some(row.0)),
            Node::Process(vm, pid) => indexed(CLASS_PROCESS, vm, pid.0 as u32, None),
            Node::ProcessFile(vm, pid, row) => indexed(CLASS_PROCESS, vm, pid.0 as u32, Some(row.0)),
        }
    }

    /// The VM it is in (none for the root).
    pub fn vm(self) -> Option<VmNumber> {
        match self {
            Node::Root => None,
            Node::Vm(vm)
            | Node::VmFile(vm, _)
            | Node::Cpus(vm)
            | Node::Cpu(vm, _)
            | Node::CpuFile(vm, ..)
            | Node::Linux(vm)
            | Node::LinuxFile(vm, _)
            | Node::Proc(vm)
            | Node::Process(vm, _)
            | Node::ProcessFile(vm, ..)
            | Node::Volatility(vm)
            | Node::Isf(vm) => Some(vm),
        }
    }

    /// The directory it is in (the root is in itself).
    pub fn parent(self) -> Node {
        match self {
            Node::Root | Node::Vm(_) => Node::Root,
            Node::VmFile(vm, _) | Node::Cpus(vm) | Node::Linux(vm) => Node::Vm(vm),
            Node::Cpu(vm, _) => Node::Cpus(vm),
            Node::CpuFile(vm, cpu, _) => Node::Cpu(vm, cpu),
            Node::LinuxFile(vm, _) | Node::Proc(vm) | Node::Volatility(vm) => Node::Linux(vm),
            Node::Process(vm, _) => Node::Proc(vm),
            Node::ProcessFile(vm, pid, _) => Node::Process(vm, pid),
            Node::Isf(vm) => Node::Volatility(vm),
        }
    }

    /// Whether it is a directory.
    pub fn is_directory(self) -> bool {
        !matches!(
            self,
            Node::VmFile(..) | Node::CpuFile(..) | Node::LinuxFile(..) | Node::ProcessFile(..) | Node::Isf(_)
        )
    }

    /// The node `inode` names, if it is one [`Node::encode`] makes.
    pub fn decode(inode: u64) -> Option<Node> {
        if inode == ROOT {
            return Some(Node::Root);
        }
        let vm = VmNumber::new((inode >> VM_SHIFT) & VmNumber::MAX)?;
        let low = inode as u32;
        let (index, row) = (low >> INDEX_SHIFT, (low & ROW_MASK) as usize);
        match inode >> CLASS_SHIFT {
            CLASS_OWN => match (index, row) {
                (PLACE_VM, 0) => Some(Node::Vm(vm)),
                (PLACE_VM_FILE, row) => Some(Node::VmFile(vm, Row::new(row)?)),
                (PLACE_CPUS, 0) => Some(Node::Cpus(vm)),
                (PLACE_LINUX, 0) => Some(Node::Linux(vm)),
                (PLACE_LINUX_FILE, row) => Some(Node::LinuxFile(vm, Row::new(row)?)),
                (PLACE_PROC, 0) => Some(Node::Proc(vm)),
                (PLACE_VOLATILITY, 0) => Some(Node::Volatility(vm)),
                (PLACE_ISF, 0) => Some(Node::Isf(vm)),
                _ => None,
            },
            CLASS_CPU => {
                let cpu = Cpu::new(index as usize)?;
                Some(match row.checked_sub(1) {
                    None => Node::Cpu(vm, cpu),
                    Some(row) => Node::CpuFile(vm, cpu, Row::new(row)?),
                })
            }
            CLASS_PROCESS => {
                let pid = Pid::new(i32::try_from(index).ok()?)?;
                Some(match row.checked_sub(1) {
                    None => Node::Process(vm, pid),
                    Some(row) => Node::ProcessFile(vm, pid, Row::new(row)?),
                })
            }
            _ => None,
        }
    }
}

/// The inode of one of a VM's own nodes.
fn own(vm: VmNumber, place: u32, row: u8) -> u64 {
    (CLASS_OWN << CLASS_SHIFT) | (vm.0 << VM_SHIFT) | u64::from(place << INDEX_SHIFT | u32::from(row))
}

/// The inode of a vCPU's or a process's directory (`row` `None`) or of a file in it.
fn indexed(class: u64, vm: VmNumber, index: u32, row: Option<u8>) -> u64 {
    let row = row.map_or(0, |row| u32::from(row) + 1);
    (class << CLASS_SHIFT) | (vm.0 << VM_SHIFT) | u64::from(index << INDEX_SHIFT | row)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every node at the edges: the first and the last VM, vCPU and pid, every row of every
    /// table.
    fn edge_nodes() -> Vec<Node> {
        let mut nodes = vec![Node::Root];
        for vm in [1, 2, VmNumber::MAX - 1, VmNumber::MAX].map(|number| VmNumber::new(number).unwrap()) {
            nodes.extend([
                Node::Vm(vm),
                Node::Cpus(vm),
                Node::Linux(vm),
                Node::Proc(vm),
                Node::Volatility(vm),
                Node::Isf(vm),
            ]);
            nodes.extend(Row::all().map(|row| Node::VmFile(vm, row)));
            nodes.extend(Row::all().map(|row| Node::LinuxFile(vm, row)));
            for cpu in [0, 1, Cpu::MAX - 1, Cpu::MAX].map(|index| Cpu::new(index).unwrap()) {
                nodes.push(Node::Cpu(vm, cpu));
                nodes.extend(Row::all().map(|row| Node::CpuFile(vm, cpu, row)));
            }
            for pid in [1, 2, Pid::MAX - 1, Pid::MAX].map(|pid| Pid::new(pid).unwrap()) {
                nodes.push(Node::Process(vm, pid));
                nodes.extend(Row::all().map(|row| Node::ProcessFile(vm, pid, row)));
            }
        }
        nodes
    }

    #[test]
    fn every_node_at_the_edges_comes_back_from_its_inode_and_no_two_share_one() {
        let nodes = edge_nodes();
        let mut inodes = HashSet::new();
        for node in &nodes {
            let inode = node.encode();
            assert_eq!(Node::decode(inode), Some(*node), "{node:?} as {inode:#x}");
            assert!(inodes.insert(inode), "{node:?} shares {inode:#x}");
        }
        // every table's every file is among them
        let count = |wanted: fn(&Node) -> bool| nodes.iter().filter(|node| wanted(node)).count();
        assert_eq!(count(|node| matches!(node, Node::VmFile(..))), 4 * VM_FILES);
        assert_eq!(count(|node| matches!(node, Node::LinuxFile(..))), 4 * LINUX_FILES);
        assert_eq!(count(|node| matches!(node, Node::CpuFile(..))), 16 * CPU_FILES);
        assert_eq!(count(|node| matches!(node, Node::ProcessFile(..))), 16 * PROCESS_FILES);
    }

    #[test]
    fn every_node_is_in_a_directory_of_its_vm() {
        for node in edge_nodes() {
            let parent = node.parent();
            assert!(parent.is_directory(), "{node:?} in {parent:?}");
            assert!(parent == Node::Root || parent.vm() == node.vm(), "{node:?} in {parent:?}");
            // a path back to the root, one level at a time
            let depth =
                std::iter::successors(Some(node), |node| (*node != Node::Root).then(|| node.parent()));
            assert!(depth.count() <= 6, "{node:?}");
        }
    }

    #[test]
    fn numbers_out_of_range_have_no_inodes() {
        assert_eq!(VmNumber::new(0), None);
        assert_eq!(VmNumber::new(VmNumber::MAX + 1), None);
        assert_eq!(VmNumber::new(u64::MAX), None);
        assert_eq!(Cpu::new(Cpu::MAX + 1), None);
        assert_eq!(Pid::new(0), None);
        assert_eq!(Pid::new(-1), None);
        assert_eq!(Pid::new(Pid::MAX + 1), None);
        assert_eq!(Pid::new(i32::MAX), None);
        assert_eq!(Row::<VM_FILES>::new(VM_FILES), None);
        assert_eq!(Row::<0>::all().count(), 0);
        assert_eq!(Row::<3>::all().map(Row::index).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn inodes_that_name_nothing_are_refused() {
        let vm = VmNumber::new(1).unwrap();
        let own = |place: u32, row: u32| 1u64 << VM_SHIFT | u64::from(place << INDEX_SHIFT | row);
        let refused = [
            0,
            2,
            u64::MAX,
            // the VM's number 0: the first inodes of every class
            31,
            1 << INDEX_SHIFT,
            CLASS_CPU << CLASS_SHIFT,
            CLASS_PROCESS << CLASS_SHIFT | 1 << INDEX_SHIFT,
            // class 3
            3 << CLASS_SHIFT | 1 << VM_SHIFT,
            // rows past their tables
            own(PLACE_VM_FILE, VM_FILES as u32),
            own(PLACE_LINUX_FILE, LINUX_FILES as u32),
            // `volatility` where the old layout put it, after the files of `linux` (the row
            // LinuxFile::ALL lacks), and as the old layout numbered it (VM 1's inode 32 + 22)
            own(PLACE_LINUX_FILE, 6),
            32 + 22,
            // a row on a node without one, a place past the last, bits above the place
            own(PLACE_VM, 1),
            own(PLACE_CPUS, 1),
            own(PLACE_LINUX, 1),
            own(PLACE_PROC, 1),
            own(PLACE_VOLATILITY, 1),
            own(PLACE_ISF, 1),
            own(PLACE_ISF + 1, 0),
            own(0xff, 0),
            own(0x100, 0),
            own(0x8000, 0),
            // a vCPU's and a process's file rows past their tables
            Node::Cpu(vm, Cpu::new(3).unwrap()).encode() + CPU_FILES as u64 + 1,
            Node::Process(vm, Pid::new(3).unwrap()).encode() + PROCESS_FILES as u64 + 1,
            Node::Process(vm, Pid::new(3).unwrap()).encode() + u64::from(ROW_MASK),
            // pid 0 (the idle task), pids past PID_MAX_LIMIT
            CLASS_PROCESS << CLASS_SHIFT | 1 << VM_SHIFT,
            CLASS_PROCESS << CLASS_SHIFT | 1 << VM_SHIFT | 1 << (INDEX_SHIFT + PID_BITS),
            CLASS_PROCESS << CLASS_SHIFT | 1 << VM_SHIFT | 0xffff_ff00,
        ];
        for inode in refused {
            assert_eq!(Node::decode(inode), None, "{inode:#x}");
        }
    }

    #[test]
    fn whatever_decodes_encodes_to_the_same_inode() {
        let mut decoded = 0;
        let mut check = |inode: u64| {
            if let Some(node) = Node::decode(inode) {
                assert_eq!(node.encode(), inode, "{node:?}");
                decoded += 1;
            }
        };
        // every low half of VM 1 in each class, and bits set at random everywhere
        for class in 0..4u64 {
            for low in 0..1 << 17 {
                check(class << CLASS_SHIFT | 1 << VM_SHIFT | low);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1 << 17 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            check(state);
            check(state & (VmNumber::MAX << VM_SHIFT | 0xffff) | 1 << VM_SHIFT);
        }
        assert!(decoded > 4000, "{decoded} decoded");
    }
}
