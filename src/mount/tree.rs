//! The file tree served over FUSE:
//!
//! ```text
//! /<vm>/ram           guest RAM in file order, straight from the mapping (direct I/O)
//! /<vm>/status        live query-status state, one line
//! /<vm>/memdev.json   live query-memdev plus each backend's mem-path
//! /<vm>/checksum      sha256 of a consistency-checked snapshot, with its verdict
//! /<vm>/layout.json   how guest-physical addresses map onto `ram` offsets
//! /<vm>/physical      guest-physical address space (offset = address, holes read zeros)
//! /<vm>/core          live ELF core of the guest
//! /<vm>/map.png       picture of guest RAM: one pixel per page, by class, along a Hilbert curve
//! /<vm>/vmcoreinfo    the guest kernel's vmcoreinfo text, found in its RAM (Linux guests)
//! /<vm>/linux/version      a Linux guest's banner, kallsyms and dmesg, from its memory
//! /<vm>/linux/kallsyms     (only for VMs whose RAM holds a Linux vmcoreinfo)
//! /<vm>/linux/dmesg
//! /<vm>/linux/btf
//! /<vm>/linux/tasks
//! /<vm>/linux/modules
//! /<vm>/linux/proc/<pid>/{status,cmdline,environ,maps,mem}   one process, as /proc/<pid>/
//! /<vm>/linux/volatility/<release>-<hash>.json   a Volatility 3 symbol table (vol -s DIR)
//! /<vm>/cpus/<n>/registers  vCPU n's registers now (JSON)
//! /<vm>/cpus/<n>/mappings   every mapping of vCPU n's page tables now (x86_64, riscv64)
//! /<vm>/cpus/<n>/memory     vCPU n's virtual address space, sparse (x86_64, riscv64)
//! ```
//!
//! Its directories are the tables of `table.rs`, its inode numbers `inode.rs`'s; this file
//! answers fuser with them, and keeps the open files and `ram`'s passthrough.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::audit::{AuditEvent, AuditLog, AuditOp};
use super::inode::Node;
use super::per_vm::{MountedVm, Registry};
use super::table::{Opening, Place, What, ATTRIBUTES};
use crate::ram::dump::Piece;
use crate::ram::BridgeError;

/// Why `ram` cannot be served by the kernel (passthrough).
#[derive(Debug, thiserror::Error)]
enum PassthroughError {
    /// Private RAM, or RAM over several backends: no one file for the kernel to read.
    #[error("the RAM is not one file")]
    NotOneFile,
    /// The RAM file could not be opened again for the kernel.
    #[error("cannot reopen the RAM file")]
    Reopen(#[source] std::io::Error),
    /// The kernel refused the backing file.
    #[error("the kernel refused the RAM file as a backing file")]
    Backing(#[source] std::io::Error),
}

/// An open file.
pub(super) enum Handle {
    /// `ram`, served by the daemon.
    Ram(Arc<MountedVm>),
    /// `physical`: guest RAM at other offsets.
    Physical(Arc<MountedVm>),
    /// `core`, with the registers of the moment it was opened.
    Core(Arc<MountedVm>, crate::ram::dump::Core),
    /// `cpus/<n>/memory`, through the page tables of the moment it was opened.
    Virtual(Arc<MountedVm>, crate::guest::VirtualSpace),
    /// A generated file, made at open.
    Text(Vec<u8>),
    /// A generated file kept for the VM's boot (the Volatility symbol table).
    Shared(Arc<Vec<u8>>),
}

/// Options of the file system.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// When `ram` is served by FUSE passthrough.
    pub passthrough: super::Passthrough,
}

/// Backing files registered with the kernel for passthrough, by inode, with their open count;
/// and the inodes whose passthrough failed in `auto` (said once in the log, then served by the
/// daemon).
#[derive(Default)]
struct Backing {
    ids: HashMap<u64, (Arc<BackingId>, usize)>,
    refused: std::collections::HashSet<u64>,
}

/// The FUSE file system.
pub struct Tree {
    registry: Arc<Registry>,
    audit: Option<AuditLog>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    handles: RwLock<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// `Never` once the kernel refused passthrough at init.
    passthrough: Mutex<super::Passthrough>,
    backing: Mutex<Backing>,
}

impl Tree {
    /// A tree over `registry`, owned by the mounting user.
    pub fn new(registry: Arc<Registry>, audit: Option<AuditLog>, options: &TreeOptions) -> Self {
        Self {
            registry,
            audit,
            uid: crate::process::effective_uid(),
            gid: crate::process::effective_gid(),
            mounted_at: SystemTime::now(),
            handles: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            passthrough: Mutex::new(options.passthrough),
            backing: Mutex::new(Backing::default()),
        }
    }

    fn attr(&self, ino: INodeNo, kind: FileType, perm: u16, size: u64, time: SystemTime) -> FileAttr {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: crate::ram::PAGE_SIZE as u32,
            flags: 0,
        }
    }

    /// What `ino` names now (ENOENT: nothing, or a VM gone).
    fn place(&self, ino: INodeNo) -> Result<Place, Errno> {
        let node = Node::decode(ino.0).ok_or(Errno::ENOENT)?;
        super::table::place(&self.registry, node, self.mounted_at).ok_or(Errno::ENOENT)
    }

    /// The attributes of what `place` is.
    fn place_attr(&self, place: &Place) -> FileAttr {
        let ino = INodeNo(place.node.encode());
        match &place.what {
            What::Dir(_) => self.attr(ino, FileType::Directory, 0o555, 0, place.time),
            What::File { file, .. } => self.attr(ino, FileType::RegularFile, 0o444, file.size(), place.time),
        }
    }

    /// The entry `name` of the directory `parent`.
    fn lookup_place(&self, parent: INodeNo, name: &OsStr) -> Result<Place, Errno> {
        let What::Dir(dir) = self.place(parent)?.what else { return Err(Errno::ENOENT) };
        let node = name.to_str().and_then(|name| dir.find(name)).ok_or(Errno::ENOENT)?;
        super::table::place(&self.registry, node, self.mounted_at).ok_or(Errno::ENOENT)
    }

    /// The entries of the directory `ino`: itself, its parent, then its own.
    fn entries(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let place = self.place(ino)?;
        let What::Dir(dir) = place.what else { return Err(Errno::ENOTDIR) };
        let mut entries = vec![
            (place.node.encode(), FileType::Directory, ".".into()),
            (place.node.parent().encode(), FileType::Directory, "..".into()),
        ];
        for (name, node) in dir.entries()? {
            let kind = if node.is_directory() { FileType::Directory } else { FileType::RegularFile };
            entries.push((node.encode(), kind, name));
        }
        Ok(entries)
    }

    fn audit(&self, req: &Request, instance: &MountedVm, file: &str, op: AuditOp, offset: u64, len: u64) {
        if let Some(audit) = &self.audit {
            audit.record(&AuditEvent {
                uid: req.uid(),
                pid: crate::process::thread_group(req.pid()),
                vm: instance.vm.name().as_str(),
                file,
                op,
                offset,
                len,
            });
        }
    }

    /// `len` bytes at `offset` of `physical` or `core`: RAM pieces read live (one RAM piece
    /// alone is answered without a copy), holes and padding as zeros, headers as generated.
    fn read_view<'a>(instance: &'a MountedVm, pieces: Vec<Piece<'_>>) -> Result<Cow<'a, [u8]>, BridgeError> {
        let mapping = instance.bridge.mapping();
        if let [Piece::Ram { offset, len }] = pieces.as_slice() {
            return mapping.read_for_reply(*offset as usize, *len as usize);
        }
        let mut bytes = Vec::with_capacity(pieces.iter().map(Piece::len).sum::<u64>() as usize);
        for piece in pieces {
            match piece {
                Piece::Ram { offset, len } => {
                    bytes.extend_from_slice(&mapping.read_for_reply(offset as usize, len as usize)?)
                }
                Piece::Bytes(generated) => bytes.extend_from_slice(generated),
                Piece::Zeros(len) => bytes.resize(bytes.len() + len as usize, 0),
            }
        }
        Ok(Cow::Owned(bytes))
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.write().unwrap_or_else(|e| e.into_inner()).insert(fh, handle);
        fh
    }

    fn open_ram(&self, instance: Arc<MountedVm>, ino: INodeNo, reply: ReplyOpen) {
        use super::Passthrough;
        let mode = *self.passthrough.lock().unwrap_or_else(|e| e.into_inner());
        if mode != Passthrough::Never {
            match self.backing_id(&instance, ino, &reply) {
                Ok(Some(id)) => {
                    let fh = self.new_handle(Handle::Ram(instance));
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                Ok(None) if mode == Passthrough::Always => return reply.error(Errno::EOPNOTSUPP),
                Ok(None) => {}
                Err(err) if mode == Passthrough::Always => {
                    log::error!("{}/ram: --passthrough=always: {err}", instance.vm.name());
                    return reply.error(Errno::EOPNOTSUPP);
                }
                Err(err) => {
                    log::info!("{}/ram: no passthrough ({err}); served by the daemon", instance.vm.name());
                }
            }
        }
        let fh = self.new_handle(Handle::Ram(instance));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    /// The kernel's backing id of `ram` (one per inode, counted by open), `Ok(None)` for a file
    /// whose passthrough failed before (already logged), or why it cannot be had.
    fn backing_id(
        &self,
        instance: &MountedVm,
        ino: INodeNo,
        reply: &ReplyOpen,
    ) -> Result<Option<Arc<BackingId>>, PassthroughError> {
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, count)) = backing.ids.get_mut(&ino.0) {
            *count += 1;
            return Ok(Some(Arc::clone(id)));
        }
        if backing.refused.contains(&ino.0) {
            return Ok(None);
        }
        // private RAM and RAM over several backends have no one file for the kernel to read
        let file = match instance.bridge.mapping().try_clone_file() {
            Some(file) if instance.bridge.mapping().is_one_file() => file.map_err(PassthroughError::Reopen),
            _ => Err(PassthroughError::NotOneFile),
        };
        match file.and_then(|file| reply.open_backing(&file).map_err(PassthroughError::Backing)) {
            Ok(id) => {
                let id = Arc::new(id);
                backing.ids.insert(ino.0, (Arc::clone(&id), 1));
                Ok(Some(id))
            }
            Err(err) => {
                backing.refused.insert(ino.0);
                Err(err)
            }
        }
    }
}

impl Filesystem for Tree {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use super::Passthrough;
        let mode = self.passthrough.get_mut().unwrap_or_else(|e| e.into_inner());
        if *mode != Passthrough::Never {
            let enabled = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !enabled && *mode == Passthrough::Always {
                log::error!("--passthrough=always: the kernel does not offer FUSE passthrough");
                return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
            }
            if !enabled {
                log::info!("the kernel does not offer FUSE passthrough; ram is served by the daemon");
                *mode = Passthrough::Never;
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_place(parent, name) {
            Ok(place) => {
                reply.entry_with_ttls(&ATTRIBUTES, &place.ttl, &self.place_attr(&place), Generation(0))
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.place(ino) {
            Ok(place) => reply.attr(&ATTRIBUTES, &self.place_attr(&place)),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.entries(ino) {
            Ok(entries) => entries,
            Err(errno) => return reply.error(errno),
        };
        for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let (instance, file) = match self.place(ino) {
            Ok(Place { what: What::File { vm, file }, .. }) => (vm, file),
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(errno) => return reply.error(errno),
        };
        if file.audited() {
            self.audit(req, &instance, file.name(), AuditOp::Open, 0, 0);
        }
        match file.open() {
            Opening::Ram => self.open_ram(instance, ino, reply),
            Opening::Handle(Ok(handle)) => {
                let fh = self.new_handle(handle);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Opening::Handle(Err(err)) => {
                let errno = err.errno();
                // ENOENT and ENODATA say it all (a process gone, a kernel not booted)
                if errno == Errno::EIO {
                    log::error!("{}/{}: {}", instance.vm.name(), file.path(), crate::error::chain(&err));
                } else {
                    log::debug!("{}/{}: {}", instance.vm.name(), file.path(), crate::error::chain(&err));
                }
                reply.error(errno);
            }
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
        match handles.get(&fh.0) {
            Some(Handle::Shared(text)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
                let end = start.saturating_add(size as usize).min(text.len());
                reply.data(&text[start..end]);
            }
            Some(Handle::Text(text)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
                let end = start.saturating_add(size as usize).min(text.len());
                reply.data(&text[start..end]);
            }
            Some(Handle::Ram(instance)) => {
                let total = instance.bridge.size() as u64;
                if offset >= total {
                    return reply.data(&[]);
                }
                let len = (size as u64).min(total - offset) as usize;
                self.audit(req, instance, "ram", AuditOp::Read, offset, len as u64);
                // Data is written to /dev/fuse straight from the mapping (zero copy); holes are
                // answered with zeros, never by touching (and so allocating) the guest's pages.
                match instance.bridge.mapping().read_for_reply(offset as usize, len) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/ram at {offset:#x}: {err}", instance.vm.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::Physical(instance)) => {
                self.audit(req, instance, "physical", AuditOp::Read, offset, u64::from(size));
                match Self::read_view(instance, instance.parts.physical.pieces(offset, u64::from(size))) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/physical at {offset:#x}: {err}", instance.vm.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::Core(instance, core)) => {
                self.audit(req, instance, "core", AuditOp::Read, offset, u64::from(size));
                match Self::read_view(instance, core.pieces(offset, u64::from(size))) {
                    Ok(bytes) => reply.data(&bytes),
                    Err(err) => {
                        log::error!("{}/core at {offset:#x}: {err}", instance.vm.name());
                        reply.error(Errno::EIO);
                    }
                }
            }
            Some(Handle::Virtual(instance, space)) => {
                let mut bytes = vec![0u8; size as usize];
                let len = space.read_at(&instance.bridge, offset, &mut bytes);
                reply.data(&bytes[..len]);
            }
            None => {
                log::warn!("read of inode {ino:?} with unknown handle {}", fh.0);
                reply.error(Errno::EBADF);
            }
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
        let Ok(start) = u64::try_from(offset) else { return reply.error(Errno::EINVAL) };
        // SEEK_DATA / SEEK_HOLE over `physical` walk its RAM ranges; elsewhere the kernel's
        // default (all data) is right for generated files and `ram`.
        let found = match (handles.get(&fh.0), whence) {
            (Some(Handle::Physical(instance)), libc::SEEK_DATA) => instance.parts.physical.seek_data(start),
            (Some(Handle::Physical(instance)), libc::SEEK_HOLE) => instance.parts.physical.seek_hole(start),
            (Some(_), libc::SEEK_SET) => Some(start),
            (Some(Handle::Ram(instance)), libc::SEEK_DATA) => {
                (start < instance.bridge.size() as u64).then_some(start)
            }
            (Some(Handle::Ram(instance)), libc::SEEK_HOLE) => {
                (start < instance.bridge.size() as u64).then_some(instance.bridge.size() as u64)
            }
            (Some(Handle::Virtual(instance, space)), libc::SEEK_DATA) => {
                space.seek_data(&instance.bridge, start)
            }
            (Some(Handle::Virtual(instance, space)), libc::SEEK_HOLE) => {
                space.seek_hole(&instance.bridge, start)
            }
            (Some(Handle::Core(_, core)), libc::SEEK_DATA) => (start < core.size()).then_some(start),
            (Some(Handle::Core(_, core)), libc::SEEK_HOLE) => (start < core.size()).then_some(core.size()),
            (None, _) => {
                log::warn!("lseek of inode {ino:?} with unknown handle {}", fh.0);
                return reply.error(Errno::EBADF);
            }
            _ => return reply.error(Errno::EINVAL),
        };
        match found.and_then(|at| i64::try_from(at).ok()) {
            Some(at) => reply.offset(at),
            None => reply.error(Errno::ENXIO),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // nothing is ever written: ENOSYS tells the kernel so once, and it sends no FLUSH at
        // the close of any file again (one round trip less per file read)
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // no file here is a terminal or a device (`cat` asks TCGETS of every file it opens):
        // answered at once, without fuser's warning per call
        reply.error(Errno::ENOTTY);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.write().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = backing.ids.get_mut(&ino.0) {
            *count -= 1;
            if *count == 0 {
                backing.ids.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // no file here has extended attributes: ENOSYS tells the kernel so once, and it answers
        // every later getxattr itself (EOPNOTSUPP) instead of asking the daemon (`ls -l` asks
        // three of every file it lists)
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
