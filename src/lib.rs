//! qemu-bridge: zero-copy, read-only access to the RAM of running QEMU virtual machines.
//!
//! QEMU keeps guest RAM in a shared file (`memory-backend-file,share=on` under `/dev/shm`).
//! This crate maps that file read-only ([`ram`]), asks QEMU over QMP where it is, which state
//! the VM is in and how guest addresses map onto the file ([`qmp`]), ties both together per VM
//! ([`Vm`], found through the [`RunDir`]), starts VMs built for it ([`mod@launch`], with limits
//! from [`cgroup`]), saves and restores their whole state with QEMU's own snapshots
//! ([`saved_state`]) and, with the `mount` feature, serves everything as a FUSE file system
//! ([`mount`]).
//!
//! The types a user needs are re-exported here, flatly: [`Vm`] and [`RunDir`] (finding and
//! opening VMs), [`SharedMemoryBridge`] and [`GuestMemory`] (guest-physical reads), [`Paging`]
//! and [`VirtualSpace`] (virtual addresses), [`VcpuRegisters`] and [`Arch`], [`LinuxGuest`] (a
//! Linux guest's kernel, processes and modules, from its memory alone), [`Changes`] (what the
//! guest writes) and [`Snapshot`].
//!
//! Two words are kept apart: a *snapshot* is a copy of guest RAM taken by this crate
//! ([`Snapshot`], [`capture`]); a *saved state* is QEMU's snapshot of the whole VM (RAM, devices,
//! disks), which QEMU writes and loads ([`saved_state`]).
//!
//! Features: `cli` (default) builds the `qemu-bridge` command and implies `mount` (the FUSE file
//! system, and `png` for its map.png) and `view` (the web page; tiny_http and tungstenite). With
//! `default-features = false` the library has the RAM, layout, picture, QMP, VM and launch
//! layers and pulls in neither clap, fuser, env_logger, png nor a web server.

// Raw memory is touched in `ram::mapping` only, the one module exempt; the rest of the crate reads
// guest RAM through its checked copies.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

/// Declares a module of the crate's internals: crate-private, and public only to the cargo-fuzz
/// targets (built with `--cfg fuzzing`), which feed its parsers arbitrary bytes.
macro_rules! internal_mod {
    ($name:ident) => {
        #[cfg(fuzzing)]
        #[allow(missing_docs)]
        pub mod $name;
        #[cfg(not(fuzzing))]
        pub(crate) mod $name;
    };
}
pub(crate) use internal_mod;

pub mod capture;
pub mod cgroup;
pub mod error;
pub mod guest;
pub mod launch;
#[cfg(feature = "mount")]
pub mod mount;
mod mountinfo;
mod name;
mod poll;
mod process;
pub mod qmp;
pub mod ram;
mod record;
mod run_dir;
pub mod saved_state;
mod size;
#[cfg(feature = "view")]
pub mod view;
mod vm;
// serves the mount and the view: a library built without them leaves parts of it unused
#[cfg_attr(not(all(feature = "mount", feature = "view")), allow(dead_code))]
pub(crate) mod watcher;

// The library's surface, flat: what a user of it (the command line, the Python binding, a
// program of its own) needs. The modules left public are concerns with vocabularies of their own
// (captures, saved states, launching, QMP, the mount, the view); the rest is crate-private.

// VMs: finding, opening and asking them
pub use name::{NameError, VmName};
pub use qmp::{QmpClient, QmpError, RunState};
pub use record::RecordError;
pub use run_dir::{default_run_dir, RunDir, RunDirError, VmPaths};
pub use size::{parse_number, parse_size};
pub use vm::{vcpu_registers, BackendInfo, Peer, Vm, VmError, VmInfo};
// guest-physical memory: reads, layouts, snapshots, change tracking
pub use ram::{
    BridgeError, ChangeSet, Changes, Fingerprints, GuestLayout, GuestRam, LayoutSource, Machine, Region,
    SharedMemoryBridge, Snapshot, TrackingMethod, Verdict,
};
// what the guest's memory and vCPUs mean: architectures, registers, page tables
pub use guest::{
    vcpu_paging, Arch, FrozenMemory, Gpa, GuestMemory, GuestMemoryError, Gva, Paging, PagingError,
    PagingMode, Translation, VcpuPagingError, VcpuRegisters, VirtualSpace,
};
// a Linux guest's kernel, read from its memory
pub use guest::linux::{KernelReader, LinuxError, LinuxFile, LinuxGuest, ProcessFile};
// starting VMs built for qemu-bridge
pub use launch::{launch, LaunchError, LaunchOptions, LaunchedVm};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
