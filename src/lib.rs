//! qemu-bridge: zero-copy, read-only access to the RAM of running QEMU virtual machines.
//!
//! QEMU keeps guest RAM in a shared file (`memory-backend-file,share=on` under `/dev/shm`).
//! This crate maps that file read-only ([`ram`]), asks QEMU over QMP where it is, which state
//! the VM is in and how guest addresses map onto the file ([`qmp`]), ties both together per VM
//! ([`vm`], [`discovery`]), starts VMs built for it ([`launch`], with limits from [`cgroup`]),
//! saves and restores their state ([`state`]) and serves everything as a FUSE file system
//! ([`fs`]).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod cgroup;
pub mod cli;
pub mod discovery;
pub mod fs;
pub mod launch;
pub mod qmp;
pub mod ram;
pub mod size;
pub mod state;
pub mod vm;

pub use discovery::{default_run_dir, RunDir};
pub use qmp::{QmpClient, QmpError, RunState};
pub use ram::{BridgeError, GuestLayout, MachineKind, SharedMemoryBridge, Snapshot, Verdict};
pub use vm::{Vm, VmError, VmInfo};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
