//! The kernel's tasks: the list of thread-group leaders that starts at `init_task`
//! (`task_struct.tasks`), each task's ids, parent, user, state and name read at the offsets the
//! kernel's BTF gives, as `ps -e` lists processes.
//!
//! The list is the guest's: the walk stops after [`MAX_TASKS`], and a list that comes back to a
//! task other than its head (a loop), or points at memory the kernel's tables do not map, is an
//! error saying where.

use std::fmt::Write as _;

use super::btf::Btf;
use super::walk::list;
use super::{LinuxError, LinuxKernel};
use crate::guest::memory::GuestMemory;

/// Tasks walked at most (Linux's default `pid_max` on 64-bit is 4 Mi; a guest with a million
/// processes is not one this reads).
pub const MAX_TASKS: usize = 1 << 20;

/// One task, as `ps` shows a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its address.
    pub address: u64,
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
struct Offsets {
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

fn offsets(btf: &Btf) -> Result<Offsets, LinuxError> {
    let task = btf.struct_id("task_struct")?;
    let cred = btf.struct_id("cred")?;
    let of = |id, path| btf.offset_of(id, path).map_err(LinuxError::from);
    Ok(Offsets {
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

/// Every thread-group leader of the kernel, in the order of its task list (the idle task
/// first).
///
/// # Errors
///
/// Types the BTF lacks, kallsyms without `init_task`, memory that cannot be read, a list that
/// loops or runs past [`MAX_TASKS`].
pub fn read<M: GuestMemory + ?Sized>(
    kernel: &LinuxKernel,
    memory: &M,
    btf: &Btf,
    init_task: u64,
) -> Result<Vec<Task>, LinuxError> {
    let offsets = offsets(btf)?;
    let read_u64 = |va: u64| kernel.read_u64(memory, va, "task list");
    let read_u32 = |va: u64| kernel.read_u32(memory, va, "task");
    let head = init_task.wrapping_add(offsets.tasks);
    let others = list(kernel, memory, head, MAX_TASKS - 1, "task list")?;
    let mut tasks = Vec::with_capacity(others.len() + 1);
    for task in
        std::iter::once(init_task).chain(others.into_iter().map(|node| node.wrapping_sub(offsets.tasks)))
    {
        let at = |offset: u64| task.wrapping_add(offset);
        let parent = read_u64(at(offsets.real_parent))?;
        let ppid = if parent == task { 0 } else { read_u32(parent.wrapping_add(offsets.tgid))? as i32 };
        let cred = read_u64(at(offsets.cred))?;
        let mut comm = [0u8; 16];
        kernel.read(memory, at(offsets.comm), &mut comm, "task")?;
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        tasks.push(Task {
            address: task,
            pid: read_u32(at(offsets.pid))? as i32,
            tgid: read_u32(at(offsets.tgid))? as i32,
            ppid,
            uid: read_u32(cred.wrapping_add(offsets.cred_uid))?,
            state: read_u32(at(offsets.state))?,
            exit_state: read_u32(at(offsets.exit_state))?,
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        });
    }
    Ok(tasks)
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
