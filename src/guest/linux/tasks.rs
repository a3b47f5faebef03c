//! The kernel's tasks: the list of thread-group leaders that starts at `init_task`
//! (`task_struct.tasks`), each task's ids, parent, user, state and name read at the offsets the
//! kernel's BTF gives, as `ps -e` lists processes.
//!
//! The list is the guest's: the walk stops after [`MAX_TASKS`], and a list that comes back to a
//! task other than its head (a loop), or points at memory the kernel's tables do not map, is an
//! error saying where.

use std::fmt::Write as _;

use super::btf::Btf;
use super::reader::KernelReader;
use super::walk::list;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// Tasks walked at most (Linux's default `pid_max` on 64-bit is 4 Mi; a guest with a million
/// processes is not one this reads).
pub const MAX_TASKS: usize = 1 << 20;

/// One task, as `ps` shows a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its address.
    pub address: Gva,
    /// `pid`.
    pub pid: i32,
    /// `tgid`.
    pub tgid: i32,
    /// The `tgid` of `real_parent` (0 for the idle task, which is its own parent).
    pub ppid: i32,
    /// The real uid of its credentials.
    pub uid: u32,
    /// `__state` (or `state` before Linux 5.14).
    pub state: u32,
    /// `exit_state`: a zombie's or a dead task's.
    pub exit_state: u32,
    /// `comm`.
    pub comm: String,
}

impl Task {
    /// The state as `ps` writes it: R, S, D, T, t, X, Z, P, I (idle kernel thread), or `?`.
    pub fn state_letter(&self) -> char {
        self.state_name().0
    }

    /// The state's letter and word as `/proc/<pid>/status` writes them (`task_state_index`:
    /// the highest reported bit of the state and exit state; an idle kernel thread is `I`).
    pub fn state_name(&self) -> (char, &'static str) {
        const NAMES: [(char, &str); 9] = [
            ('R', "running"),
            ('S', "sleeping"),
            ('D', "disk sleep"),
            ('T', "stopped"),
            ('t', "tracing stop"),
            ('X', "dead"),
            ('Z', "zombie"),
            ('P', "parked"),
            ('I', "idle"),
        ];
        // TASK_IDLE is TASK_UNINTERRUPTIBLE | TASK_NOLOAD; TASK_RTLOCK_WAIT reads as D
        let reported = if self.state == 0x402 {
            0x80
        } else if self.state == 0x1000 {
            2
        } else {
            (self.state | self.exit_state) & 0x7f
        };
        NAMES[(u32::BITS - reported.leading_zeros()) as usize]
    }
}

/// Where each field is, from BTF.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    tasks: u64,
    pid: u64,
    tgid: u64,
    real_parent: u64,
    cred: u64,
    state: u64,
    comm: u64,
    cred_uid: u64,
    exit_state: u64,
}

impl Offsets {
    /// The offsets of this kernel's `task_struct` and `cred`.
    ///
    /// # Errors
    ///
    /// A structure or member the BTF lacks.
    pub(crate) fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let task = btf.struct_id("task_struct")?;
        let cred = btf.struct_id("cred")?;
        let of = |id, path| btf.offset_of(id, path).map_err(LinuxError::from);
        Ok(Self {
            tasks: of(task, "tasks")?,
            pid: of(task, "pid")?,
            tgid: of(task, "tgid")?,
            real_parent: of(task, "real_parent")?,
            cred: of(task, "cred")?,
            state: of(task, "__state").or_else(|_| of(task, "state"))?,
            comm: of(task, "comm")?,
            cred_uid: of(cred, "uid")?,
            exit_state: of(task, "exit_state")?,
        })
    }
}

/// The task at `address`.
///
/// # Errors
///
/// Memory that cannot be read.
pub(crate) fn task_at<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    offsets: &Offsets,
    address: Gva,
) -> Result<Task, LinuxError> {
    let at = |offset: u64| address.wrapping_add(offset);
    let parent = reader.pointer(at(offsets.real_parent), "task")?;
    let ppid =
        if parent == address { 0 } else { reader.u32(parent.wrapping_add(offsets.tgid), "task")? as i32 };
    let cred = reader.pointer(at(offsets.cred), "task")?;
    let mut comm = [0u8; 16];
    reader.read(at(offsets.comm), &mut comm, "task")?;
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    Ok(Task {
        address,
        pid: reader.u32(at(offsets.pid), "task")? as i32,
        tgid: reader.u32(at(offsets.tgid), "task")? as i32,
        ppid,
        uid: reader.u32(cred.wrapping_add(offsets.cred_uid), "task")?,
        state: reader.u32(at(offsets.state), "task")?,
        exit_state: reader.u32(at(offsets.exit_state), "task")?,
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
    })
}

/// Every thread-group leader of the kernel, in the order of its task list (the idle task
/// first).
///
/// # Errors
///
/// Memory that cannot be read, a list that loops or runs past [`MAX_TASKS`].
pub(crate) fn read<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    offsets: &Offsets,
    init_task: Gva,
) -> Result<Vec<Task>, LinuxError> {
    let head = init_task.wrapping_add(offsets.tasks);
    let others = list(reader, head, MAX_TASKS - 1, "task list")?;
    std::iter::once(init_task)
        .chain(others.into_iter().map(|node| node.wrapping_sub(offsets.tasks)))
        .map(|task| task_at(reader, offsets, task))
        .collect()
}

/// The tasks as `ps -e` would list them: a header, then `PID TGID PPID UID STATE COMM`.
pub fn text(tasks: &[Task]) -> String {
    let mut text = String::from("    PID    TGID    PPID   UID S COMM\n");
    for task in tasks {
        let comm: String = task.comm.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let _ = writeln!(
            text,
            "{:7} {:7} {:7} {:5} {} {comm}",
            task.pid,
            task.tgid,
            task.ppid,
            task.uid,
            task.state_letter()
        );
    }
    text
}
