//! The FUSE ceiling: the least work a FUSE daemon can do to serve one read-only file, measured
//! beside `--passthrough=never` so the benchmark shows which part of the daemon path's cost is
//! qemu-bridge's and which is the kernel's.
//!
//! It speaks the FUSE protocol on `/dev/fuse` itself (no library), on one thread, answers
//! `lookup`, `getattr`, `open` (`FOPEN_DIRECT_IO`, as qemu-bridge must for live memory) and
//! `read`, and writes each read's reply straight from a mapping of the file with one `writev`
//! (the kernel's copy is the only one). It checks nothing: no bounds beyond the file's end, no
//! holes, no truncation, no trust. Mounting needs root (mount(2) with `fd=`).
//!
//! Wire format: `include/uapi/linux/fuse.h` (protocol 7.31).

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use qemu_bridge::SharedMemoryBridge;

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
/// Requests without a reply.
const NO_REPLY: [u32; 3] = [FUSE_FORGET, FUSE_INTERRUPT, FUSE_BATCH_FORGET];

const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const FOPEN_DIRECT_IO: u32 = 1;
const IN_HEADER: usize = 40;
const ROOT: u64 = 1;
const FILE: u64 = 2;
const MAX_READ: u32 = 1 << 20;

/// The argument that makes the bench binary the ceiling's daemon:
/// `performance --fuse-ceiling RAM_FILE MOUNTPOINT`.
pub const SERVE_ARGUMENT: &str = "--fuse-ceiling";

/// A mount of one file, `MOUNTPOINT/ram`, served by the minimal daemon in a process of its own
/// (as qemu-bridge's daemon is: a reader and a daemon in one process would switch between
/// threads of one address space, which is cheaper); unmounted and ended on drop.
pub struct CeilingServer {
    mountpoint: PathBuf,
    daemon: Child,
}

impl CeilingServer {
    /// Starts the daemon on `ram_file` (a RAM file) and waits for its mount.
    pub fn start(ram_file: &Path, mountpoint: &Path) -> std::io::Result<Self> {
        let daemon = Command::new(std::env::current_exe()?)
            .arg(SERVE_ARGUMENT)
            .arg(ram_file)
            .arg(mountpoint)
            .spawn()?;
        let server = Self { mountpoint: mountpoint.to_path_buf(), daemon };
        if !crate::common::wait_until(Duration::from_secs(10), || server.file().exists()) {
            return Err(std::io::Error::other("the FUSE ceiling daemon did not mount"));
        }
        Ok(server)
    }

    /// `/proc/PID/stat` of the daemon (one thread), for its CPU time.
    pub fn stat(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/stat", self.pid()))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The served file.
    pub fn file(&self) -> PathBuf {
        self.mountpoint.join("ram")
    }
}

impl Drop for CeilingServer {
    fn drop(&mut self) {
        // the kernel then ends the connection: the daemon's next read fails with ENODEV
        let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        if !crate::common::wait_until(Duration::from_secs(5), || {
            matches!(self.daemon.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

/// The daemon's process: mounts `arguments` = `[RAM_FILE, MOUNTPOINT]` and serves until
/// unmounted. Mounting needs root (mount(2) with `fd=`).
pub fn serve_process(arguments: &[String]) -> std::io::Result<()> {
    let [ram_file, mountpoint] = arguments else {
        return Err(std::io::Error::other(format!("usage: {SERVE_ARGUMENT} RAM_FILE MOUNTPOINT")));
    };
    let bridge = SharedMemoryBridge::open("ceiling", Path::new(ram_file)).map_err(std::io::Error::other)?;
    let device = OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let options =
        format!("fd={},rootmode=40000,user_id=0,group_id=0,max_read={MAX_READ}", device.as_raw_fd());
    nix::mount::mount(
        Some("qb-ceiling"),
        Path::new(mountpoint),
        Some("fuse.qb-ceiling"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )?;
    serve(&device, &bridge);
    Ok(())
}

/// Answers requests until the connection ends.
fn serve(device: &File, bridge: &SharedMemoryBridge) {
    let size = bridge.size() as u64;
    let mut request = vec![0u8; MAX_READ as usize + 8192];
    loop {
        let len = match nix::unistd::read(device, &mut request) {
            Ok(len) => len,
            Err(Errno::EINTR | Errno::ENOENT | Errno::EAGAIN) => continue,
            Err(_) => return, // ENODEV: unmounted
        };
        let request = &request[..len];
        let opcode = u32_at(request, 4);
        let unique = u64_at(request, 8);
        let node = u64_at(request, 16);
        let body = &request[IN_HEADER..];
        if NO_REPLY.contains(&opcode) {
            continue;
        }
        let mut payload = Vec::new();
        let error = match opcode {
            FUSE_INIT => {
                init_reply(u32_at(body, 8), &mut payload);
                0
            }
            FUSE_LOOKUP if node == ROOT && body.starts_with(b"ram\0") => {
                payload.extend_from_slice(&FILE.to_le_bytes()); // nodeid
                payload.extend_from_slice(&0u64.to_le_bytes()); // generation
                payload.extend_from_slice(&60u64.to_le_bytes()); // entry_valid
                payload.extend_from_slice(&60u64.to_le_bytes()); // attr_valid
                payload.extend_from_slice(&[0; 8]); // their nanoseconds
                attributes(FILE, size, &mut payload);
                0
            }
            FUSE_LOOKUP => libc::ENOENT,
            FUSE_GETATTR => {
                payload.extend_from_slice(&60u64.to_le_bytes()); // attr_valid
                payload.extend_from_slice(&[0; 8]); // its nanoseconds, padding
                attributes(node, size, &mut payload);
                0
            }
            FUSE_OPEN => {
                payload.extend_from_slice(&1u64.to_le_bytes()); // fh
                payload.extend_from_slice(&FOPEN_DIRECT_IO.to_le_bytes());
                payload.extend_from_slice(&[0; 4]); // backing id
                0
            }
            FUSE_READ => {
                let offset = u64_at(body, 8).min(size);
                let end = (offset + u64::from(u32_at(body, 16))).min(size);
                // straight from the mapping (the bench's VM is paused, its RAM all data)
                let data =
                    bridge.mapping().live_slice(offset as usize, (end - offset) as usize).expect("in bounds");
                reply(device, unique, 0, &[IoSlice::new(data)]);
                continue;
            }
            _ => libc::ENOSYS, // release, flush, statfs...: nothing to do, or not needed here
        };
        reply(device, unique, error, &[IoSlice::new(&payload)]);
    }
}

/// Writes one reply: the out header, then `payload` (ignored for an error).
fn reply(device: &File, unique: u64, error: i32, payload: &[IoSlice<'_>]) {
    let payload = if error == 0 { payload } else { &[] };
    let len = 16 + payload.iter().map(|slice| slice.len()).sum::<usize>();
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..8].copy_from_slice(&(-error).to_le_bytes());
    header[8..].copy_from_slice(&unique.to_le_bytes());
    let mut slices = vec![IoSlice::new(&header)];
    slices.extend(payload.iter().map(|slice| IoSlice::new(slice)));
    // a reply to an interrupted request fails with ENOENT: nothing to do then
    let _ = nix::sys::uio::writev(device, &slices);
}

/// `fuse_init_out`: protocol 7.31, 1 MiB requests (256 pages).
fn init_reply(max_readahead: u32, out: &mut Vec<u8>) {
    for value in [7u32, 31, max_readahead, FUSE_BIG_WRITES | FUSE_MAX_PAGES] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&16u16.to_le_bytes()); // max_background
    out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
    out.extend_from_slice(&MAX_READ.to_le_bytes()); // max_write
    out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
    out.extend_from_slice(&((MAX_READ / 4096) as u16).to_le_bytes()); // max_pages
    out.resize(64, 0); // map_alignment, flags2, max_stack_depth, unused
}

/// `fuse_attr` of the root directory or the file.
fn attributes(node: u64, size: u64, out: &mut Vec<u8>) {
    let (mode, nlink, size) = if node == ROOT { (0o040755u32, 2u32, 0) } else { (0o100444, 1, size) };
    for value in [node, size, size.div_ceil(512), 0, 0, 0] {
        out.extend_from_slice(&value.to_le_bytes()); // ino, size, blocks, atime, mtime, ctime
    }
    for value in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        out.extend_from_slice(&value.to_le_bytes()); // their nanoseconds, mode, nlink, uid, gid, rdev, blksize, flags
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}
