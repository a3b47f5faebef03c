//! The command line: clap definitions, their conversion into the library's option structs,
//! and one function per verb. Only this module prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use qemu_bridge::launch::{self, Accel, LaunchOptions};
use qemu_bridge::mount::{MountOptions, Passthrough};
use qemu_bridge::ram::HashAlgorithm;
use qemu_bridge::{default_run_dir, Gva, Machine, RunDir, RunState, Vm, VmName};
use qemu_bridge::{parse_number, parse_size};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What the guest of scripts/build-guest.sh prints once it is up.
pub const LINUX_MARKER: &str = "QEMU-BRIDGE-LINUX-MARKER";

/// Debian's kernel needs at least 80 MiB; 128 MiB is comfortable.
const LINUX_MEMORY: u64 = 128 << 20;

/// Look inside running QEMU virtual machines: their RAM as files and as a library.
#[derive(Debug, Parser)]
#[command(
    name = "qemu-bridge",
    version,
    about,
    after_help = "Exit status: 0 done, 1 failed, 2 usage error, 3 no such VM, 4 refused by the trust check, \
                  5 QEMU did not answer (its QMP socket timed out, closed or cannot be reached)."
)]
pub struct Cli {
    /// Less output: no progress display, and only errors logged
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output on stderr (-v: what it does, -vv: debugging, -vvv: everything;
    /// RUST_LOG, where set, decides instead)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// The verb.
    #[command(subcommand)]
    pub command: Verb,
}

impl Cli {
    /// The log filter the flags ask for (env_logger's syntax).
    pub fn log_filter(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn,fuser::mnt=error",
            (false, 1) => "info,fuser=warn",
            (false, 2) => "debug,fuser=info",
            (false, _) => "trace",
        }
    }
}

/// Options every verb takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Directory of the VMs' QMP sockets [default: $QEMU_BRIDGE_RUN_DIR, /run/qemu-bridge for
    /// root, else $XDG_RUNTIME_DIR/qemu-bridge]
    #[arg(long, value_name = "DIR", global = true)]
    pub run_dir: Option<PathBuf>,
}

impl Common {
    fn run_dir(&self) -> RunDir {
        let run_dir = RunDir::new(self.run_dir.clone().unwrap_or_else(default_run_dir));
        warn_if_shared(&run_dir);
        run_dir
    }
}

/// Says once per run (one verb) that the run directory is open to other users.
fn warn_if_shared(run_dir: &RunDir) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(warning) = run_dir.sharing_warning() {
        WARNED.call_once(|| eprintln!("warning: {warning}"));
    }
}

/// The verbs.
// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Start a daemonized QEMU whose RAM qemu-bridge can read
    Launch(LaunchArgs),
    /// Quit a VM through QMP; for a VM `launch` started, also remove exactly the files and
    /// cgroups it made (its saved states are kept unless --discard-state)
    Stop(StopArgs),
    /// List the VMs of the run directory with state, RAM size and RAM file
    List(ListArgs),
    /// Print a VM's live run state
    Status(StatusArgs),
    /// Pause a VM's vCPUs (QMP stop)
    Pause(NameArgs),
    /// Resume a paused VM (QMP cont)
    Resume(NameArgs),
    /// Reset a VM (QMP system_reset)
    Reset(NameArgs),
    /// Save a VM's whole state (RAM, devices, disks) under a name, with QEMU's snapshot-save
    Save(StateArgs),
    /// Bring a VM back to a saved state (QEMU's snapshot-load); RAM readers see it at once
    Restore(StateArgs),
    /// List a VM's saved states
    Saved(SavedArgs),
    /// Delete a saved state
    DeleteSaved(StateArgs),
    /// Read guest-physical memory: a hex dump, or raw bytes with --raw
    Read(ReadArgs),
    /// A Linux guest's kernel, read from its memory with no symbol file: version, kallsyms,
    /// dmesg, btf, ps, modules, isf, and a process's maps, status, cmdline, environ
    Linux(LinuxArgs),
    /// Write a VM's whole RAM to a file and print its checksum and consistency verdict
    Snapshot(SnapshotArgs),
    /// Print, every interval, the guest-physical ranges whose bytes changed and how many pages
    Changes(ChangesArgs),
    /// Mount the FUSE file system: one directory per VM
    Mount(MountArgs),
    /// Unmount a qemu-bridge mount
    Umount(UmountArgs),
    /// Serve a live picture of every VM's memory to a web browser (a local web page)
    View(ViewArgs),
    /// Remove what `launch` made for VMs that no longer run (sockets, pidfiles, logs, RAM
    /// files; state disks without saved states), and nothing else
    Clean(Nameless),
    /// Print what to add to a libvirt domain's XML for qemu-bridge to see it as NAME
    LibvirtXml(NameArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout
    #[command(hide = true)]
    Man,
}

/// A VM name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The VM's name (its socket's file stem)
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub vm: NameArgs,
    /// Print {"name", "status", "running"} as JSON
    #[arg(long)]
    pub json: bool,
}

/// `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VM's name
    pub name: String,
    /// Also delete the VM's state disk and so every state saved for it
    #[arg(long)]
    pub discard_state: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `save`, `restore`, `delete-saved`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The VM's name
    pub name: String,
    /// Name of the saved state
    pub tag: String,
    /// Seconds QEMU may take
    #[arg(long, default_value_t = qemu_bridge::saved_state::DEFAULT_WAIT.as_secs())]
    pub timeout: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `saved`.
#[derive(Debug, Args)]
pub struct SavedArgs {
    /// The VM's name
    pub name: String,
    /// One JSON array instead of a table
    #[arg(long, conflicts_with = "names")]
    pub json: bool,
    /// Only the saved states' names, one a line (what shell completion uses)
    #[arg(long)]
    pub names: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Name of the new VM (at most 100 bytes, no '/', no control characters, not starting
    /// with '.')
    pub name: String,
    /// Print what was started as JSON: name, pid, startup_s, qmp, ram, serial, boot_s,
    /// state_disk, user, limits, warnings
    #[arg(long)]
    pub json: bool,
    /// Guest RAM, e.g. 64M, 1G (a bare number is MiB, as in QEMU) [default: 64M, 128M with
    /// --linux]
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Boot the small Linux guest of scripts/build-guest.sh (vmlinuz, initrd.gz) from DIR, or
    /// with no DIR from the cache ($XDG_CACHE_HOME/qemu-bridge/linux, /var/cache/qemu-bridge/linux
    /// for root), building it there once: sets --kernel, --initrd, --append "console=ttyS0
    /// quiet", 128M and waits for its marker
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with_all = ["kernel", "initrd", "drive"])]
    pub linux: Option<Option<PathBuf>>,
    /// Return only once TEXT appears on the serial console, and report the boot time
    #[arg(long, value_name = "TEXT")]
    pub wait_for: Option<String>,
    /// Machine type: q35, pc, or any other QEMU knows (their RAM layout is asked of QEMU)
    #[arg(long, default_value = "q35")]
    pub machine: Machine,
    /// Accelerator, tcg or kvm. TCG is the default because it works everywhere, including hosts
    /// where /dev/kvm exists but guests hang under it; pass kvm where KVM really works
    #[arg(long, default_value = "tcg")]
    pub accel: Accel,
    /// Linux kernel to boot
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(long)]
    pub append: Option<String>,
    /// Raw disk image to boot from
    #[arg(long)]
    pub drive: Option<PathBuf>,
    /// Run QEMU as this user when started by root [default: the system user qemu-bridge,
    /// created on first use]; `--user root` keeps QEMU as root
    #[arg(long)]
    pub user: Option<String>,
    /// Memory limit for the QEMU process (guest RAM it touched plus its own), e.g. 256M,
    /// through a cgroup of its own (v2, else v1); warns and carries on where none is usable
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_memory: Option<u64>,
    /// CPU limit in percent of one CPU, e.g. 50% (150% = one and a half CPUs), through a
    /// cgroup of its own (v2, else v1); warns and carries on where none is usable
    #[arg(long, value_parser = qemu_bridge::cgroup::parse_cpu_quota, value_name = "PERCENT")]
    pub cpu_quota: Option<u32>,
    /// Attach no state disk (<run-dir>/<name>.state.qcow2): save and restore will not work
    #[arg(long)]
    pub no_state_disk: bool,
    /// Seconds to wait for QMP to answer
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Extra QEMU arguments, after --
    #[arg(last = true)]
    pub qemu_args: Vec<String>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON array instead of a table
    #[arg(long)]
    pub json: bool,
    /// Only the VMs' names, one a line, asking no QEMU (what shell completion uses)
    #[arg(long, conflicts_with = "json")]
    pub names: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `linux`.
#[derive(Debug, Args)]
pub struct LinuxArgs {
    /// The VM's name (its socket's file stem)
    pub name: String,
    /// What to print
    #[arg(value_enum)]
    pub what: LinuxWhat,
    /// The process, for maps, status, cmdline and environ
    pub pid: Option<i32>,
    /// Print JSON: ps and modules as arrays of objects, kallsyms of {"address", "kind", "name"},
    /// dmesg of lines, maps of areas, status and environ as objects, cmdline as an array,
    /// version as {"version"}, isf as it is (btf has none)
    #[arg(long)]
    pub json: bool,
    /// Write binary output (btf) to a terminal too
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// What `linux` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LinuxWhat {
    /// The version banner, as /proc/version
    Version,
    /// The kernel's symbols, as /proc/kallsyms lists them
    Kallsyms,
    /// The kernel log, as dmesg prints it
    Dmesg,
    /// The kernel's raw BTF, as /sys/kernel/btf/vmlinux (binary: redirect it to a file)
    Btf,
    /// Every process, as ps -e lists them: PID TGID PPID UID STATE COMM
    Ps,
    /// The loaded modules, as /proc/modules
    Modules,
    /// A process's memory areas, as /proc/PID/maps (give the PID)
    Maps,
    /// Who a process is, as the first lines of /proc/PID/status (give the PID)
    Status,
    /// A process's arguments, NUL-separated, as /proc/PID/cmdline (give the PID)
    Cmdline,
    /// A process's environment, NUL-separated, as /proc/PID/environ (give the PID)
    Environ,
    /// A Volatility 3 symbol table of the kernel (JSON), from its BTF and kallsyms: save it in a
    /// directory and give that directory to vol -s
    Isf,
}

/// `read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The VM's name
    pub name: String,
    /// Guest-physical address (decimal or 0x hex)
    #[arg(value_parser = parse_number)]
    pub addr: u64,
    /// Number of bytes (decimal or 0x hex, at most 1 GiB)
    #[arg(value_parser = parse_number)]
    pub len: u64,
    /// Write raw bytes to stdout instead of a hex dump (refused on a terminal unless --force)
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Print {"address", "length", "virtual", "hex"} as JSON
    #[arg(long)]
    pub json: bool,
    /// With --raw, write to a terminal too
    #[arg(long)]
    pub force: bool,
    /// ADDR is a virtual address, translated by a vCPU's page tables as they are now (x86_64 in
    /// long mode, riscv64 through satp, aarch64 with --root; pause the VM for a translation
    /// that holds)
    #[arg(long = "virtual")]
    pub virtual_address: bool,
    /// With --virtual: the vCPU whose page tables translate
    #[arg(long, value_name = "N", default_value_t = 0, requires = "virtual_address")]
    pub cpu: usize,
    /// With --virtual: the page tables at this guest-physical address instead of the vCPU's
    /// (CR3, satp's root); the vCPU's registers still say the mode (4 or 5 levels and NX,
    /// Sv39/48/57). aarch64 needs it: TTBR0_EL1's table for the lower half, TTBR1_EL1's for the
    /// upper (QEMU does not print them), walked with the 4 KiB granule and 48-bit addresses
    #[arg(long, value_name = "GPA", value_parser = parse_number, requires = "virtual_address")]
    pub root: Option<u64>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `changes`.
#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// The VM's name
    pub name: String,
    /// Seconds between two looks (fractions allowed)
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after this many intervals (default: until interrupted)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per interval (pages, ranges as [start, end) pairs, tracking method)
    #[arg(long)]
    pub json: bool,
    /// Track changes by page fingerprints even where the host's soft-dirty bits could say which
    /// pages QEMU wrote
    #[arg(long)]
    pub fingerprints: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.001..=86_400.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!("{text:?} is not a number of seconds between 0.001 and 86400")),
    }
}

/// `snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM's name
    pub name: String,
    /// Output file (written to a temporary name, then renamed: never left half-written)
    #[arg(short, long)]
    pub output: PathBuf,
    /// What the file holds: raw (the RAM in RAM-file order, as the RAM file holds it) or elf (an
    /// ELF core as QEMU's dump-guest-memory writes one, with the vCPUs' registers and the guest
    /// kernel's VMCOREINFO: crash, drgn, Volatility and makedumpfile read it)
    #[arg(long, value_name = "FORMAT", default_value = "raw")]
    pub format: qemu_bridge::capture::Format,
    /// An image of one instant with a pause of milliseconds: copy while the guest runs, copy
    /// again what it wrote, until that stops shrinking; then pause, copy the last pages, resume
    #[arg(long, conflicts_with = "pause")]
    pub consistent: bool,
    /// Pause the VM during the copy for an exact image (resumed only if it was running)
    #[arg(long)]
    pub pause: bool,
    /// With --update, look at every page even where the host's soft-dirty bits could say which pages
    /// QEMU wrote
    #[arg(long)]
    pub fingerprints: bool,
    /// Most passes of --consistent while the guest runs, after the first copy
    #[arg(long, default_value_t = 8)]
    pub attempts: u32,
    /// Print the report as one JSON object (digest, verdict, passes, pause, smear) instead of
    /// the summary line
    #[arg(long)]
    pub json: bool,
    /// Rewrite, in an existing snapshot of this VM's QEMU, only the pages that changed since it
    /// was written (its side record FILE.qbsnap says what it was taken from); anything else is
    /// written whole, and said so
    #[arg(long)]
    pub update: bool,
    /// Digest printed for the file: blake3 (what `b3sum` prints; fast) or sha256 (what
    /// `sha256sum` prints)
    #[arg(long, value_name = "HASH", default_value = "blake3")]
    pub hash: HashAlgorithm,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `mount`.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Where to mount (an existing directory)
    pub mountpoint: PathBuf,
    /// Directory of the VMs' QMP sockets (see `launch --help`)
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Stay attached; Ctrl-C or SIGTERM unmounts
    #[arg(long)]
    pub foreground: bool,
    /// Let other users enter the mount (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long)]
    pub allow_other: bool,
    /// Append one line per operation on guest RAM (time, uid, pid, VM, file, offset, length)
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// When the kernel serves `ram` straight from the RAM file (fastest; `mmap` works): auto =
    /// wherever kernel (>= 6.9) and privileges (root) allow, else through the daemon with a log
    /// line; always = fail where it cannot; never = always through the daemon. `--passthrough`
    /// alone means always. An audit log turns auto into never (every read recorded)
    #[arg(long, value_name = "WHEN", default_value = "auto", num_args = 0..=1, require_equals = true,
          default_missing_value = "always")]
    pub passthrough: Passthrough,
    /// Threads serving requests [default: number of cores, 2 to 8]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
    /// Where the background daemon logs [default: <run-dir>/mount.log]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

impl MountArgs {
    /// The library's options (everything but `--foreground`, which says how to run them).
    pub fn options(&self) -> MountOptions {
        let MountArgs {
            mountpoint,
            run_dir,
            foreground: _,
            allow_other,
            audit_log,
            passthrough,
            threads,
            log_file,
        } = self.clone();
        MountOptions { mountpoint, run_dir, allow_other, audit_log, passthrough, threads, log_file }
    }
}

/// `umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point
    pub mountpoint: PathBuf,
}

/// `view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Where to serve the page (loopback by default: anyone who reaches it sees the VMs'
    /// memory maps)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8077")]
    pub listen: std::net::SocketAddr,
    /// Share of one core spent finding changed pages, over all VMs (a bigger budget re-checks
    /// every page sooner; the page says how fresh each picture is)
    #[arg(long, value_name = "CORES", default_value_t = qemu_bridge::view::DEFAULT_SCAN_BUDGET)]
    pub scan_budget: f64,
    /// Track changes by page fingerprints even where the host's soft-dirty bits could say which
    /// pages QEMU wrote
    #[arg(long)]
    pub fingerprints: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// A verb about the whole run directory.
#[derive(Debug, Args)]
pub struct Nameless {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

/// Options of `mount -o` (fstab, `mount -t fuse.qemu-bridge`) that qemu-bridge takes as its own
/// mount flags: `run_dir=DIR`, `allow_other`, `audit_log=FILE`, `passthrough=MODE`,
/// `threads=N`, `log_file=FILE`.
const MOUNT_OPTIONS: [&str; 6] =
    ["run_dir", "allow_other", "audit_log", "passthrough", "threads", "log_file"];

/// Options mount(8) and fstab carry that concern mount(8) or are what a qemu-bridge mount is
/// anyway: accepted and ignored.
/// (`rw` too: mount(8) passes it when `ro` is not given; the mount is read-only whatever it says.)
const IGNORED_MOUNT_OPTIONS: [&str; 21] = [
    "ro", "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "dev", "nodev",
    "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "nofail", "_netdev",
];

/// The command line as mount(8) calls a FUSE program through `mount.fuse3` (for
/// `mount -t fuse.qemu-bridge SOURCE MOUNTPOINT -o OPTIONS` and fstab lines of that type):
/// `qemu-bridge SOURCE MOUNTPOINT [-o OPTIONS]...`, turned into `qemu-bridge mount MOUNTPOINT
/// FLAGS`. `None` when `argv` is not of that form (a verb); an error names an option it does
/// not know.
pub fn from_mount_helper(argv: &[std::ffi::OsString]) -> Option<Result<Vec<std::ffi::OsString>, String>> {
    use clap::CommandFactory;
    let word = |index: usize| argv.get(index).and_then(|arg| arg.to_str());
    // run as /usr/sbin/mount.fuse.qemu-bridge (scripts/install.sh), every call is mount(8)'s
    let as_helper =
        std::path::Path::new(argv.first()?).file_name().is_some_and(|name| name == "mount.fuse.qemu-bridge");
    let first = word(1)?;
    let verb = Cli::command().get_subcommands().any(|verb| verb.get_name() == first) || first == "help";
    if !as_helper
        && (verb
            || first.starts_with('-')
            || argv.len() < 3
            || word(2).is_none_or(|arg| arg.starts_with('-')))
    {
        return None;
    }
    if argv.len() < 3 {
        return Some(Err("usage: mount.fuse.qemu-bridge SOURCE MOUNTPOINT -o OPTIONS".into()));
    }
    let mut args: Vec<std::ffi::OsString> = vec![argv[0].clone(), "mount".into(), argv[2].clone()];
    let mut rest = argv[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("-o") => {
                let Some(options) = rest.next().and_then(|o| o.to_str()) else {
                    return Some(Err("-o needs a list of options".into()));
                };
                for option in options.split(',').filter(|o| !o.is_empty()) {
                    let (name, value) = option.split_once('=').map_or((option, None), |(n, v)| (n, Some(v)));
                    match (name, value) {
                        ("allow_other", None) => args.push("--allow-other".into()),
                        (known, Some(value)) if MOUNT_OPTIONS.contains(&known) && known != "allow_other" => {
                            args.push(format!("--{}={value}", known.replace('_', "-")).into());
                        }
                        (ignored, None) if IGNORED_MOUNT_OPTIONS.contains(&ignored) => {}
                        (other, _) if other.starts_with("x-") || other == "comment" => {}
                        _ => {
                            return Some(Err(format!(
                                "unknown mount option {option:?} (qemu-bridge takes {}={{...}}, allow_other)",
                                MOUNT_OPTIONS
                                    .iter()
                                    .filter(|o| **o != "allow_other")
                                    .copied()
                                    .collect::<Vec<_>>()
                                    .join("=, ")
                            )))
                        }
                    }
                }
            }
            // mount(8)'s own flags: no mtab, verbose, sloppy (fake mounts are done by mount(8))
            Some("-n" | "-v" | "-s") => {}
            // the type mount(8) names the helper by
            Some("-t") => {
                if rest.next().and_then(|t| t.to_str()).is_none_or(|t| t != "fuse.qemu-bridge" && t != "fuse")
                {
                    return Some(Err("-t must be fuse.qemu-bridge".into()));
                }
            }
            _ => {
                return Some(Err(format!(
                    "unexpected argument {arg:?} (usage: qemu-bridge SOURCE MOUNTPOINT -o OPTIONS)"
                )))
            }
        }
    }
    Some(Ok(args))
}

/// Runs the parsed command line.
///
/// # Errors
///
/// Whatever the verb failed with.
pub fn run(cli: Cli) -> CliResult {
    let quiet = cli.quiet;
    match cli.command {
        Verb::Launch(args) => launch_verb(args),
        Verb::Stop(args) => stop_verb(&args),
        Verb::List(args) => list_verb(args),
        Verb::Status(args) => {
            let vm = Vm::existing(&args.vm.common.run_dir(), &args.vm.name)?;
            let status = vm.status()?;
            if args.json {
                let json = serde_json::json!({
                    "name": args.vm.name, "status": status.status.as_str(), "running": status.running,
                });
                println!("{json}");
            } else {
                println!("{}", status.status);
            }
            Ok(())
        }
        Verb::Pause(args) => lifecycle(&args, |qmp| qmp.stop()),
        Verb::Resume(args) => lifecycle(&args, |qmp| qmp.cont()),
        Verb::Reset(args) => lifecycle(&args, |qmp| qmp.system_reset()),
        Verb::Save(args) => {
            // QEMU does not answer its monitor while it writes the state: time, not a fraction
            let progress = Progress::spinner(&format!("saving {}", args.name), quiet);
            let saved = qemu_bridge::saved_state::save(&args.vm()?, &args.tag, args.wait());
            progress.finish();
            let saved = saved?;
            println!("saved {} as {:?} ({} bytes of VM state)", args.name, saved.tag, saved.vm_state_size);
            Ok(())
        }
        Verb::Restore(args) => {
            let vm = args.vm()?;
            let progress = Progress::spinner(&format!("restoring {}", args.name), quiet);
            let restored = qemu_bridge::saved_state::restore(&vm, &args.tag, args.wait());
            progress.finish();
            restored?;
            println!("restored {} to {:?}; now {}", args.name, args.tag, vm.status()?.status);
            Ok(())
        }
        Verb::DeleteSaved(args) => {
            qemu_bridge::saved_state::delete(&args.vm()?, &args.tag, args.wait())?;
            println!("deleted saved state {:?} of {}", args.tag, args.name);
            Ok(())
        }
        Verb::Saved(args) => saved_verb(args),
        Verb::Read(args) => read_verb(args),
        Verb::Linux(args) => linux_verb(&args),
        Verb::Snapshot(args) => snapshot_verb(args, quiet),
        Verb::Changes(args) => changes_verb(&args),
        Verb::Mount(args) => mount_verb(&args),
        Verb::Umount(args) => qemu_bridge::mount::umount(&args.mountpoint).map_err(Into::into),
        Verb::Clean(args) => clean_verb(&args),
        Verb::LibvirtXml(args) => {
            let name = VmName::new(&args.name)?;
            print!("{}", libvirt_xml(&args.common.run_dir(), &name));
            Ok(())
        }
        Verb::Completions(args) => {
            std::io::stdout().lock().write_all(&completions(args.shell))?;
            Ok(())
        }
        Verb::Man => {
            std::io::stdout().lock().write_all(&man_page()?)?;
            Ok(())
        }
        Verb::View(args) => {
            let server = qemu_bridge::view::ViewServer::bind(args.listen, args.common.run_dir())?
                .with_scan_budget(args.scan_budget)
                .with_soft_dirty(!args.fingerprints);
            if let Some(address) = server.address() {
                println!(
                    "serving the VMs of {} on http://{address}/",
                    args.common.run_dir().path().display()
                );
            }
            server.serve();
            Ok(())
        }
    }
}

impl StateArgs {
    fn vm(&self) -> Result<Vm, qemu_bridge::VmError> {
        Vm::existing(&self.common.run_dir(), &self.name)
    }

    fn wait(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

fn saved_verb(args: SavedArgs) -> CliResult {
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let states = qemu_bridge::saved_state::list(&vm)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&states)?)?;
        return Ok(());
    }
    if args.names {
        for state in states {
            writeln!(out, "{}", state.tag)?;
        }
        return Ok(());
    }
    writeln!(out, "{:<24} {:>12} {:>12}  SAVED AT (UTC)", "NAME", "STATE SIZE", "GUEST TIME")?;
    for state in states {
        writeln!(
            out,
            "{:<24} {:>12} {:>11.1}s  {}",
            state.tag,
            state.vm_state_size,
            state.vm_clock_ns as f64 / 1e9,
            utc_time(state.date)
        )?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc_time(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

fn lifecycle(
    args: &NameArgs,
    act: impl FnOnce(
        &mut qemu_bridge::QmpClient<std::os::unix::net::UnixStream>,
    ) -> Result<(), qemu_bridge::QmpError>,
) -> CliResult {
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let status = vm.with_qmp(|qmp| {
        act(qmp)?;
        qmp.query_status()
    })?;
    println!("{}", status.status);
    Ok(())
}

impl LaunchArgs {
    /// The library's options.
    fn options(self) -> Result<LaunchOptions, Box<dyn std::error::Error + Send + Sync>> {
        // Checked here rather than by clap, whose message would show a newline in the name raw.
        let mut options = LaunchOptions::new(VmName::new(&self.name)?, self.common.run_dir());
        options.memory = self.memory.unwrap_or(if self.linux.is_some() { LINUX_MEMORY } else { 64 << 20 });
        options.machine = self.machine;
        options.accel = self.accel;
        options.kernel = self.kernel;
        options.initrd = self.initrd;
        options.append = self.append;
        options.wait_for = self.wait_for;
        if let Some(dir) = &self.linux {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => {
                    let dir = qemu_bridge::launch::linux_image::default_dir();
                    if !qemu_bridge::launch::linux_image::is_built(&dir) {
                        eprintln!(
                            "building the Linux guest in {} (once; downloads two packages)",
                            dir.display()
                        );
                    }
                    qemu_bridge::launch::linux_image::ensure(&dir)?;
                    dir
                }
            };
            options.kernel = Some(dir.join("vmlinuz"));
            options.initrd = Some(dir.join("initrd.gz"));
            options.append.get_or_insert_with(|| "console=ttyS0 quiet".into());
            options.wait_for.get_or_insert_with(|| LINUX_MARKER.into());
        }
        options.drive = self.drive;
        options.user = self.user;
        options.limits.max_memory = self.max_memory;
        options.limits.cpu_quota_percent = self.cpu_quota;
        options.state_disk = !self.no_state_disk;
        options.extra_args = self.qemu_args;
        options.timeout = Duration::from_secs(self.timeout);
        Ok(options)
    }
}

fn stop_verb(args: &StopArgs) -> CliResult {
    let stopped = launch::stop(&args.common.run_dir(), &args.name, args.discard_state)?;
    let how = if stopped.graceful { "quit" } else { "killed" };
    if !stopped.launched {
        println!(
            "{} {how}; it was not started by qemu-bridge launch, so its files are left alone",
            args.name
        );
        return Ok(());
    }
    println!("{} {how}; removed {} files", args.name, stopped.removed.len());
    for path in &stopped.replaced {
        println!("left {} alone: it is no longer the file launch made", path.display());
    }
    report_state_disk(&args.name, &stopped);
    Ok(())
}

/// What happened to a stopped VM's state disk.
fn report_state_disk(name: &str, stopped: &launch::Stopped) {
    match (&stopped.kept_state_disk, stopped.saved_states.as_slice()) {
        (Some(disk), []) => println!("kept {} (its saved states could not be read)", disk.display()),
        (Some(disk), states) => println!(
            "kept {}: saved states {} (`qemu-bridge stop {name} --discard-state` or `delete-saved` remove them)",
            disk.display(),
            states.join(", ")
        ),
        (None, _) => {}
    }
}

fn clean_verb(args: &Nameless) -> CliResult {
    let cleaned = launch::clean(&args.common.run_dir())?;
    if cleaned.is_empty() {
        println!("nothing to clean");
    }
    for (name, stopped) in &cleaned {
        println!("{name}: removed {} files", stopped.removed.len());
        for path in &stopped.replaced {
            println!("left {} alone: it is no longer the file launch made", path.display());
        }
        report_state_disk(name.as_str(), stopped);
    }
    Ok(())
}

fn launch_verb(args: LaunchArgs) -> CliResult {
    let json = args.json;
    let options = args.options()?;
    let vm = launch::launch(&options)?;
    if json {
        let json = serde_json::json!({
            "name": vm.name().as_str(),
            "pid": vm.pid,
            "startup_s": vm.startup.as_secs_f64(),
            "qmp": vm.vm.socket(),
            "ram": vm.ram_path,
            "serial": vm.serial,
            "boot_s": vm.boot.map(|boot| boot.as_secs_f64()),
            "state_disk": vm.state_disk,
            "user": vm.user,
            "limits": vm.cgroup.iter().flat_map(|cgroup| cgroup.describe()).collect::<Vec<_>>(),
            "warnings": vm.warnings,
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "launched {} (pid {}) in {:.2} s\n  qmp:    {}\n  ram:    {}\n  serial: {}",
        vm.name(),
        vm.pid,
        vm.startup.as_secs_f64(),
        vm.vm.socket().display(),
        vm.ram_path.display(),
        vm.serial.display()
    );
    if let (Some(boot), Some(text)) = (vm.boot, &options.wait_for) {
        println!("  booted: {text:?} on the serial console after {:.2} s", boot.as_secs_f64());
    }
    if let Some(state_disk) = &vm.state_disk {
        println!("  states: {}", state_disk.display());
    }
    if let Some(user) = &vm.user {
        println!("  user:   {user}");
    }
    for limit in vm.cgroup.iter().flat_map(|cgroup| cgroup.describe()) {
        println!("  limit:  {limit}");
    }
    for warning in &vm.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// One row of `list`: what `--json` prints and the table shows.
#[derive(Debug, Serialize)]
struct ListRow {
    name: VmName,
    state: ListState,
    #[serde(skip_serializing_if = "Option::is_none")]
    ram_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ram_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ram_kind: Option<qemu_bridge::ram::RamKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zero_copy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
    /// How `view` and `changes` find the pages the guest wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    tracking: Option<qemu_bridge::ram::TrackingMethod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// For a stopped VM: the states saved in its state disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_states: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_disk: Option<PathBuf>,
}

/// A VM's state in `list`: QEMU's run state, or why it is not shown.
#[derive(Debug)]
enum ListState {
    Run(RunState),
    /// The trust check refused its peer or its RAM file.
    Refused,
    Unreachable,
    /// Launched by qemu-bridge, not running, with saved states kept.
    Stopped,
}

impl Serialize for ListState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for ListState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListState::Run(state) => state.fmt(f),
            ListState::Refused => f.write_str("refused"),
            ListState::Unreachable => f.write_str("unreachable"),
            ListState::Stopped => f.write_str("stopped"),
        }
    }
}

impl ListRow {
    /// A row with a name and a state and nothing else known.
    fn bare(name: VmName, state: ListState) -> Self {
        ListRow {
            name,
            state,
            ram_size: None,
            ram_path: None,
            ram_kind: None,
            zero_copy: None,
            machine: None,
            tracking: None,
            error: None,
            saved_states: None,
            state_disk: None,
        }
    }

    fn of(run_dir: &RunDir, name: VmName) -> Self {
        let vm = Vm::named(run_dir, name.clone());
        match vm.info() {
            Ok(info) => ListRow {
                tracking: Some(info.tracking_method()),
                name,
                state: ListState::Run(info.status),
                ram_size: Some(info.ram_size),
                ram_path: Some(info.ram_path),
                ram_kind: Some(info.ram_kind),
                zero_copy: Some(info.ram_kind.zero_copy()),
                machine: Some(info.machine),
                error: None,
                saved_states: None,
                state_disk: None,
            },
            Err(err) => ListRow {
                error: Some(qemu_bridge::error::chain(&err)),
                ..ListRow::bare(
                    name,
                    if err.is_refusal() { ListState::Refused } else { ListState::Unreachable },
                )
            },
        }
    }
}

fn list_verb(args: ListArgs) -> CliResult {
    let run_dir = args.common.run_dir();
    if args.names {
        let mut out = std::io::stdout().lock();
        for name in run_dir.vm_names()? {
            writeln!(out, "{}", name.as_str())?;
        }
        return Ok(());
    }
    let mut rows: Vec<ListRow> =
        run_dir.vm_names()?.into_iter().map(|name| ListRow::of(&run_dir, name)).collect();
    // VMs that no longer run but keep saved states: to be found (and deleted) later
    for stopped in launch::stopped_vms(&run_dir) {
        if stopped.saved_states.is_empty() || rows.iter().any(|row| row.name == stopped.name) {
            continue;
        }
        rows.push(ListRow {
            saved_states: Some(stopped.saved_states),
            state_disk: stopped.state_disk,
            ..ListRow::bare(stopped.name, ListState::Stopped)
        });
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(out, "{:<20} {:<14} {:>10} {:<10} {:<13} RAM FILE", "NAME", "STATE", "RAM", "KIND", "TRACKING")?;
    for row in rows {
        let size = row.ram_size.map_or_else(|| "-".to_string(), |size| format!("{}M", size >> 20));
        let kind = row.ram_kind.map_or_else(|| "-".to_string(), |kind| kind.to_string());
        let tracking = row.tracking.map_or_else(|| "-".to_string(), |method| method.to_string());
        let detail = match (&row.ram_path, &row.error, &row.saved_states) {
            (Some(path), _, _) => path.display().to_string(),
            (None, Some(error), _) => error.clone(),
            (None, None, Some(states)) => format!(
                "saved states: {} (in {})",
                states.join(", "),
                row.state_disk.as_deref().unwrap_or(Path::new("?")).display()
            ),
            (None, None, None) => "-".into(),
        };
        writeln!(
            out,
            "{:<20} {:<14} {size:>10} {kind:<10} {tracking:<13} {detail}",
            row.name.as_str(),
            row.state.to_string()
        )?;
    }
    Ok(())
}

fn mount_verb(args: &MountArgs) -> CliResult {
    let options = args.options();
    if args.foreground {
        qemu_bridge::mount::serve(&options)?;
        return Ok(());
    }
    // the daemon logs it too, in its log file
    warn_if_shared(&options.run_dir());
    let daemon = qemu_bridge::mount::spawn_daemon(&options, &std::env::current_exe()?)?;
    println!("mounted {} (pid {}, log {})", options.mountpoint.display(), daemon.pid, daemon.log.display());
    Ok(())
}

fn read_verb(args: ReadArgs) -> CliResult {
    if args.len > 1 << 30 {
        return Err(format!("length {:#x} too large: at most 1 GiB per read", args.len).into());
    }
    if args.raw {
        refuse_binary_on_terminal(args.force)?;
    }
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let (bridge, info) = vm.open_bridge()?;
    let mut buffer = vec![0u8; args.len as usize];
    if args.virtual_address {
        let paging = vcpu_paging(&vm, &info, args.cpu, args.root)?;
        paging.read_virtual(&bridge, Gva(args.addr), &mut buffer)?;
    } else {
        bridge.read_into(args.addr, &mut buffer)?;
    }
    let mut out = std::io::stdout().lock();
    if args.raw {
        out.write_all(&buffer)?;
    } else if args.json {
        let hex: String = buffer.iter().map(|byte| format!("{byte:02x}")).collect();
        let json = serde_json::json!({
            "address": args.addr, "length": buffer.len(), "virtual": args.virtual_address, "hex": hex,
        });
        writeln!(out, "{json}")?;
    } else {
        out.write_all(hex_dump(args.addr, &buffer).as_bytes())?;
    }
    Ok(())
}

/// Binary output is not for a terminal (it can leave it in a state of its own): refused there
/// unless `force`.
fn refuse_binary_on_terminal(force: bool) -> CliResult {
    use std::io::IsTerminal;
    if !force && std::io::stdout().is_terminal() {
        return Err(
            "refusing to write binary data to a terminal: redirect it to a file or a pipe, or pass --force"
                .into(),
        );
    }
    Ok(())
}

fn linux_verb(args: &LinuxArgs) -> CliResult {
    use qemu_bridge::guest::linux::{LinuxFile, LinuxGuest, ProcessFile};
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let (bridge, _) = vm.open_bridge()?;
    let vmcoreinfo = qemu_bridge::guest::find_vmcoreinfo(bridge.mapping())?.ok_or_else(|| {
        format!("VM {}: no Linux kernel's vmcoreinfo in its RAM (not Linux, or not booted yet)", args.name)
    })?;
    let failed =
        |err: &dyn std::error::Error| format!("VM {}: {}", args.name, qemu_bridge::error::chain(err));
    let view = match args.what {
        LinuxWhat::Version => Ok(LinuxFile::Version),
        LinuxWhat::Kallsyms => Ok(LinuxFile::Kallsyms),
        LinuxWhat::Dmesg => Ok(LinuxFile::Dmesg),
        LinuxWhat::Btf => Ok(LinuxFile::Btf),
        LinuxWhat::Ps => Ok(LinuxFile::Tasks),
        LinuxWhat::Modules => Ok(LinuxFile::Modules),
        LinuxWhat::Maps => Err(ProcessFile::Maps),
        LinuxWhat::Status => Err(ProcessFile::Status),
        LinuxWhat::Cmdline => Err(ProcessFile::Cmdline),
        LinuxWhat::Environ => Err(ProcessFile::Environ),
        LinuxWhat::Isf => Ok(LinuxFile::Volatility),
    };
    if matches!(args.what, LinuxWhat::Btf) {
        if args.json {
            return Err("btf is binary: it has no JSON form".into());
        }
        refuse_binary_on_terminal(args.force)?;
    }
    let guest = LinuxGuest::read(vmcoreinfo, &bridge).map_err(|err| failed(&err))?;
    if args.json && !matches!(args.what, LinuxWhat::Isf) {
        let json = linux_json(&guest, &bridge, args.what, args.pid).map_err(|err| failed(err.as_ref()))?;
        writeln!(std::io::stdout().lock(), "{json}")?;
        return Ok(());
    }
    let text = match (view, args.pid) {
        (Ok(view), None) => view.render(&guest, &bridge).map_err(|err| failed(&err))?,
        (Ok(view), Some(_)) => return Err(format!("{} takes no PID", view.name()).into()),
        (Err(view), None) => return Err(format!("{} needs a PID", view.name()).into()),
        (Err(view), Some(pid)) => {
            let process = guest
                .process(&bridge, pid)
                .map_err(|err| failed(&err))?
                .ok_or_else(|| format!("VM {}: no process {pid}", args.name))?;
            view.render(&process).map_err(|err| failed(&err))?
        }
    };
    std::io::stdout().lock().write_all(&text)?;
    Ok(())
}

/// What `linux WHAT --json` prints.
fn linux_json(
    guest: &qemu_bridge::guest::linux::LinuxGuest,
    bridge: &qemu_bridge::SharedMemoryBridge,
    what: LinuxWhat,
    pid: Option<i32>,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    use qemu_bridge::guest::linux::LinuxFile;
    use serde_json::{json, Value};
    let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let nul_separated = |bytes: Vec<u8>| -> Vec<String> {
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes).to_vec();
        if bytes.is_empty() {
            return Vec::new();
        }
        bytes.split(|&byte| byte == 0).map(lossy).collect()
    };
    type Process<'a> = qemu_bridge::guest::linux::Process<'a, qemu_bridge::SharedMemoryBridge>;
    let process = |pid: Option<i32>| -> Result<Process<'_>, Box<dyn std::error::Error + Send + Sync>> {
        let pid = pid.ok_or_else(|| format!("{what:?} needs a PID").to_lowercase())?;
        let found = guest.process(bridge, pid)?;
        Ok(found.ok_or_else(|| format!("no process {pid}"))?)
    };
    Ok(match what {
        LinuxWhat::Version => json!({ "version": lossy(&LinuxFile::Version.render(guest, bridge)?).trim_end() }),
        LinuxWhat::Kallsyms => Value::Array(
            guest
                .symbols()
                .iter()
                .map(|symbol| json!({ "address": symbol.address, "kind": symbol.kind.to_string(), "name": symbol.name }))
                .collect(),
        ),
        LinuxWhat::Dmesg => json!(lossy(&LinuxFile::Dmesg.render(guest, bridge)?).lines().collect::<Vec<_>>()),
        LinuxWhat::Ps => Value::Array(
            guest
                .tasks(bridge)?
                .iter()
                .map(|task| {
                    json!({
                        "pid": task.pid, "tgid": task.tgid, "ppid": task.ppid, "uid": task.uid,
                        "state": task.state_letter().to_string(), "comm": task.comm, "address": task.address.0,
                    })
                })
                .collect(),
        ),
        LinuxWhat::Modules => Value::Array(
            guest
                .modules(bridge)?
                .iter()
                .map(|module| {
                    json!({
                        "name": module.name, "size": module.size, "refcount": module.refcount,
                        "users": module.users, "state": module.state.word(), "base": module.base.0,
                        "address": module.address.0,
                    })
                })
                .collect(),
        ),
        LinuxWhat::Maps => {
            let process = process(pid)?;
            Value::Array(
                process
                    .areas()?
                    .iter()
                    .map(|area| {
                        json!({
                            "start": area.start.0, "end": area.end.0, "flags": area.flags, "offset": area.offset,
                            "device": area.device, "inode": area.inode, "name": area.name,
                        })
                    })
                    .collect(),
            )
        }
        LinuxWhat::Status => {
            let process = process(pid)?;
            let status = process.status()?;
            Value::Object(
                status
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .map(|(key, value)| (key.to_string(), Value::String(value.trim().to_string())))
                    .collect(),
            )
        }
        LinuxWhat::Cmdline => json!(nul_separated(process(pid)?.cmdline()?)),
        LinuxWhat::Environ => Value::Object(
            nul_separated(process(pid)?.environ()?)
                .into_iter()
                .map(|entry| match entry.split_once('=') {
                    Some((name, value)) => (name.to_string(), Value::String(value.to_string())),
                    None => (entry, Value::String(String::new())),
                })
                .collect(),
        ),
        LinuxWhat::Btf | LinuxWhat::Isf => unreachable!("handled by the caller"),
    })
}

/// How vCPU `cpu` of the VM translates virtual addresses now (with `root` in place of its CR3).
fn vcpu_paging(
    vm: &Vm,
    info: &qemu_bridge::VmInfo,
    cpu: usize,
    root: Option<u64>,
) -> Result<qemu_bridge::guest::Paging, Box<dyn std::error::Error + Send + Sync>> {
    use qemu_bridge::guest::{Gpa, VcpuPagingError};
    let vcpus = vm.vcpu_registers()?;
    qemu_bridge::guest::vcpu_paging(&info.arch, &vcpus, cpu, root.map(Gpa)).map_err(|err| {
        let detail = match &err {
            VcpuPagingError::Paging { source, .. } => format!(": {source}"),
            _ => String::new(),
        };
        format!("VM {}: {err}{detail}", info.name).into()
    })
}

fn changes_verb(args: &ChangesArgs) -> CliResult {
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let (bridge, info) = vm.open_bridge()?;
    let soft_dirty = qemu_bridge::capture::soft_dirty_unless(args.fingerprints, &info, &bridge);
    let changes = qemu_bridge::ram::Changes::new(
        &bridge,
        std::time::Duration::from_secs_f64(args.interval),
        soft_dirty,
    )?;
    let method = changes.method();
    let mut out = std::io::stdout().lock();
    for (index, set) in changes.enumerate() {
        if args.count.is_some_and(|count| index as u64 >= count) {
            break;
        }
        let set = set?;
        if args.json {
            let ranges: Vec<[u64; 2]> = set.ranges.iter().map(|range| [range.start, range.end]).collect();
            let line = serde_json::json!({
                "interval": index + 1,
                "pages": set.pages,
                "ranges": ranges,
                "unmapped_pages": set.unmapped_pages,
                "tracking": method,
            });
            writeln!(out, "{line}")?;
        } else {
            let ranges: Vec<String> =
                set.ranges.iter().map(|range| format!("{:#x}-{:#x}", range.start, range.end)).collect();
            let unmapped = match set.unmapped_pages {
                0 => String::new(),
                n => format!(" (+{n} at no guest-physical address)"),
            };
            writeln!(out, "{} pages changed{unmapped}: {}", set.pages, ranges.join(" "))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `xxd`-style lines: address, 16 bytes in hex, printable ASCII.
pub fn hex_dump(start: u64, bytes: &[u8]) -> String {
    let mut text = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        text.push_str(&format!("{:08x}:", start + row as u64 * 16));
        for (index, byte) in chunk.iter().enumerate() {
            if index % 2 == 0 {
                text.push(' ');
            }
            text.push_str(&format!("{byte:02x}"));
        }
        let width = chunk.len() * 2 + chunk.len().div_ceil(2);
        text.push_str(&" ".repeat(40 - width));
        text.push_str("  ");
        text.extend(chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }));
        text.push('\n');
    }
    text
}

fn snapshot_verb(args: SnapshotArgs, quiet: bool) -> CliResult {
    use qemu_bridge::capture::{self, CaptureOptions};
    let vm = Vm::existing(&args.common.run_dir(), &args.name)?;
    let (bridge, info) = vm.open_bridge()?;
    let options = CaptureOptions {
        format: args.format,
        consistent: args.consistent,
        pause: args.pause,
        update: args.update,
        fingerprints: args.fingerprints,
        attempts: args.attempts,
        hash: args.hash,
    };
    let progress =
        Progress::bytes(bridge.size() as u64, &format!("snapshot of {}", args.name), quiet || args.update);
    let report = |done: u64| progress.set(done);
    let captured = capture::to_file(&vm, &bridge, &info, &args.output, &options, &report);
    progress.finish();
    let captured = captured?;
    if let Some(update) = &captured.update {
        match &update.full {
            Some(reason) => eprintln!("qemu-bridge: a full snapshot: {reason}"),
            None => eprintln!(
                "qemu-bridge: updated {} of {} pages (looked at {}: {})",
                update.pages_written, update.pages, update.pages_looked, update.method
            ),
        }
    }
    if captured.passes.len() > 1 {
        let passes: Vec<String> = captured.passes.iter().map(u64::to_string).collect();
        let tracking =
            captured.tracking.map(|method| format!(" (changes found by {method})")).unwrap_or_default();
        eprintln!(
            "qemu-bridge: {} passes, pages written by each: {}{tracking}",
            passes.len(),
            passes.join(" ")
        );
    }
    if let Some(paused) = captured.paused_for {
        eprintln!("qemu-bridge: the guest was paused for {:.1} ms", paused.as_secs_f64() * 1e3);
    }
    if let Some(smear) = captured.smear.as_ref().filter(|smear| smear.pages > 0) {
        eprintln!(
            "qemu-bridge: the guest wrote {} pages while they were copied (not of one instant; in {}): {}",
            smear.pages,
            qemu_bridge::ram::record_path(&args.output).display(),
            smear_text(smear)
        );
    }
    if args.json {
        let smear = captured.smear.as_ref().map(|smear| {
            serde_json::json!({
                "pages": smear.pages,
                "ranges": smear.ranges.iter().map(|range| [range.start, range.end]).collect::<Vec<_>>(),
            })
        });
        let update = captured.update.as_ref().map(|update| {
            serde_json::json!({
                "full": update.full,
                "pages_written": update.pages_written,
                "pages_looked": update.pages_looked,
                "pages": update.pages,
                "tracking": update.method,
            })
        });
        let summary = &captured.summary;
        let report = serde_json::json!({
            "path": args.output,
            "algorithm": summary.algorithm.to_string(),
            "digest": summary.digest,
            "verdict": summary.verdict.to_string(),
            "format": args.format.to_string(),
            "size": summary.size,
            "passes": captured.passes,
            "paused_ms": captured.paused_for.map(|paused| paused.as_secs_f64() * 1e3),
            "tracking": captured.tracking,
            "smear": smear,
            "update": update,
        });
        println!("{report}");
    } else {
        println!("{} {}", captured.summary, args.output.display());
    }
    Ok(())
}

/// The verbs whose first argument is the name of a VM that runs (all but `launch`).
fn verbs_of_a_vm() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_subcommands()
        .filter(|verb| verb.get_name() != "launch")
        .filter(|verb| verb.get_positionals().next().is_some_and(|first| first.get_id() == "name"))
        .map(|verb| verb.get_name().to_string())
        .collect()
}

/// Shell completions: clap_complete's from the definitions, and VM names (from `list --names`,
/// which asks no QEMU) where a verb takes one, in bash, zsh and fish.
fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "qemu-bridge", &mut script);
    let verbs = verbs_of_a_vm().join(" ");
    // the verbs whose second argument is one of the VM's saved states (save makes a new one)
    let tag_verbs = "restore delete-saved";
    let mut text = String::from_utf8_lossy(&script).into_owned();
    match shell {
        Shell::Bash => text.push_str(&format!(
            r#"
# VM names where a verb takes one (qemu-bridge list --names asks no QEMU)
_qemu_bridge_with_vms() {{
    _qemu__bridge "$@"
    local verb=${{COMP_WORDS[1]}} cur=${{COMP_WORDS[COMP_CWORD]}} run_dir=() i
    for ((i = 1; i < ${{#COMP_WORDS[@]}} - 1; i++)); do
        [[ ${{COMP_WORDS[i]}} == --run-dir ]] && run_dir=(--run-dir "${{COMP_WORDS[i + 1]}}")
    done
    if [[ $COMP_CWORD -eq 2 && $cur != -* && " {verbs} " == *" $verb "* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(qemu-bridge list --names "${{run_dir[@]}}" 2>/dev/null)" -- "$cur")
    elif [[ $COMP_CWORD -eq 3 && $cur != -* && " {tag_verbs} " == *" $verb "* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(qemu-bridge saved "${{COMP_WORDS[2]}}" --names "${{run_dir[@]}}" 2>/dev/null)" -- "$cur")
    fi
}}
complete -F _qemu_bridge_with_vms -o bashdefault -o default qemu-bridge
"#
        )),
        Shell::Fish => text.push_str(&format!(
            "\n# VM names where a verb takes one (qemu-bridge list --names asks no QEMU)\n\
             complete -c qemu-bridge -n \"__fish_seen_subcommand_from {verbs}; and test (count (commandline -opc)) -eq 2\" -f -a \"(qemu-bridge list --names 2>/dev/null)\"\n\
             # saved states' names where a verb takes one (qemu-bridge saved VM --names)\n\
             complete -c qemu-bridge -n \"__fish_seen_subcommand_from {tag_verbs}; and test (count (commandline -opc)) -eq 3\" -f -a \"(qemu-bridge saved (commandline -opc)[3] --names 2>/dev/null)\"\n"
        )),
        Shell::Zsh => {
            // the VM's name argument of every verb but launch completes from list --names
            // and the tag of the verbs in `tag_verbs` from `saved VM --names`; clap_complete
            // writes each verb's arguments after a `(verb)` line
            let mut verb = "";
            let mut lines: Vec<String> = text
                .lines()
                .map(|line| {
                    if let Some(name) = line.strip_prefix('(').and_then(|rest| rest.strip_suffix(')')) {
                        verb = name;
                    }
                    if line.starts_with("':name -- The VM") && line.contains(":_default'") {
                        line.replace(":_default'", ":_qemu_bridge_vms'")
                    } else if line.starts_with("':tag -- ")
                        && line.contains(":_default'")
                        && tag_verbs.split(' ').any(|tagged| tagged == verb)
                    {
                        line.replace(":_default'", ":_qemu_bridge_saved'")
                    } else {
                        line.to_string()
                    }
                })
                .collect();
            let at = lines.iter().position(|line| line.starts_with("if [ \"$funcstack[1]\"")).unwrap_or(lines.len());
            lines.insert(
                at,
                "_qemu_bridge_vms() {\n    local -a vms\n    vms=(${(f)\"$(qemu-bridge list --names 2>/dev/null)\"})\n    \
                 _describe 'VM' vms\n}\n\
                 _qemu_bridge_saved() {\n    local -a tags\n    \
                 tags=(${(f)\"$(qemu-bridge saved ${words[2]} --names 2>/dev/null)\"})\n    \
                 _describe 'saved state' tags\n}\n"
                    .to_string(),
            );
            text = lines.join("\n") + "\n";
        }
        _ => {}
    }
    text.into_bytes()
}

/// The man page: clap_mangen's from the definitions, and the sections it cannot know.
fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    page.extend_from_slice(MAN_SECTIONS.as_bytes());
    Ok(page)
}

/// ENVIRONMENT, FILES, EXIT STATUS and EXAMPLES, in roff.
const MAN_SECTIONS: &str = r#".SH "ENVIRONMENT"
.TP
\fBQEMU_BRIDGE_RUN_DIR\fR
The run directory (one QMP socket per VM, \fINAME\fR.qmp), when \fB\-\-run\-dir\fR is not given.
.TP
\fBRUST_LOG\fR
The log filter (env_logger's syntax); it overrides \fB\-q\fR and \fB\-v\fR.
.TP
\fBQEMU_BRIDGE_QEMU\fR
The QEMU binary \fBlaunch\fR runs (default: qemu\-system\-\fIARCH\fR from PATH).
.TP
\fBXDG_RUNTIME_DIR\fR, \fBXDG_CACHE_HOME\fR
Where the default run directory (for users other than root) and the Linux guest's cache live.
.SH "FILES"
.TP
\fI/run/qemu\-bridge\fR
The default run directory for root; \fI$XDG_RUNTIME_DIR/qemu\-bridge\fR for other users.
.TP
\fIRUN_DIR/NAME.qmp\fR, \fI.pid\fR, \fI.serial\fR, \fI.log\fR, \fI.launch.json\fR, \fI.state.qcow2\fR
A VM's QMP socket, and what \fBlaunch\fR made for it (removed by \fBstop\fR and \fBclean\fR).
.TP
\fI/dev/shm/qemu_ram_NAME\fR
The RAM of a VM \fBlaunch\fR started.
.TP
\fIFILE.qbsnap\fR
The side record of a snapshot \fIFILE\fR: what \fBsnapshot \-\-update\fR needs to write only what changed.
.TP
\fI/var/cache/qemu\-bridge/linux\fR
The small Linux guest of \fBlaunch \-\-linux\fR (root; \fI$XDG_CACHE_HOME/qemu\-bridge/linux\fR otherwise).
.SH "EXIT STATUS"
.TP
\fB0\fR
Done.
.TP
\fB1\fR
Failed (the error says why).
.TP
\fB2\fR
A usage error.
.TP
\fB3\fR
No such VM in the run directory.
.TP
\fB4\fR
Refused by the trust check (a QMP peer of another user, a RAM file QEMU does not hold).
.TP
\fB5\fR
QEMU did not answer: its QMP socket timed out, closed or cannot be reached.
.SH "EXAMPLES"
.nf
qemu\-bridge launch web \-\-linux          # a small Linux guest, built once
qemu\-bridge mount /mnt/qemu               # every VM as files
cat /mnt/qemu/web/linux/tasks              # its processes, from its memory
qemu\-bridge read web 0x1000 64            # guest\-physical bytes
qemu\-bridge snapshot web \-o web.elf \-\-format elf \-\-consistent
qemu\-bridge status web \-\-json
qemu\-bridge umount /mnt/qemu && qemu\-bridge stop web
.fi
"#;

/// The first ranges of a smear report, as `0xSTART-0xEND`, and how many more.
fn smear_text(smear: &qemu_bridge::ChangeSet) -> String {
    const SHOWN: usize = 8;
    let mut text: Vec<String> =
        smear.ranges.iter().take(SHOWN).map(|range| format!("{:#x}-{:#x}", range.start, range.end)).collect();
    if smear.ranges.len() > SHOWN {
        text.push(format!("and {} more ranges", smear.ranges.len() - SHOWN));
    }
    text.join(" ")
}

/// What a libvirt domain needs for qemu-bridge to see it as `name`: shared file memory, QEMU
/// running as root (qemu-bridge trusts QMP peers of its own user or root, not libvirt-qemu), and
/// a QMP socket of its own in the run directory.
fn libvirt_xml(run_dir: &RunDir, name: &VmName) -> String {
    format!(
        "<!-- for qemu-bridge, in the <domain> of {name}; the <domain> element needs\n     \
         xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' -->\n\
         <memoryBacking>\n  <source type='file'/>\n  <access mode='shared'/>\n</memoryBacking>\n\
         <!-- QEMU as root: qemu-bridge refuses QMP peers of other users (libvirt-qemu) -->\n\
         <seclabel type='static' model='dac' relabel='no'>\n  <label>+0:+0</label>\n</seclabel>\n\
         <qemu:commandline>\n  <qemu:arg value='-qmp'/>\n  \
         <qemu:arg value='unix:{},server=on,wait=off'/>\n</qemu:commandline>\n",
        run_dir.socket_path(name).display()
    )
}

/// A progress display on stderr for work that may take a while: drawn only on a terminal, only
/// once the work has gone on for a second, never with `--quiet`; cleared when done.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// Bytes out of `total`, with the rate and the time left.
    fn bytes(total: u64, what: &str, quiet: bool) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::hidden());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self::start(bar, what, quiet)
    }

    /// Time only, for work whose progress QEMU does not report.
    fn spinner(what: &str, quiet: bool) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        Self::start(bar, what, quiet)
    }

    fn start(bar: indicatif::ProgressBar, what: &str, quiet: bool) -> Self {
        use std::io::IsTerminal;
        bar.set_message(what.to_string());
        if !quiet && std::io::stderr().is_terminal() {
            let shown = bar.clone();
            // after a second, if not done by then
            let _ = std::thread::Builder::new().name("progress".into()).spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                if !shown.is_finished() {
                    shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    shown.enable_steady_tick(Duration::from_millis(100));
                }
            });
        }
        Self { bar }
    }

    fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The background daemon gets its options as `mount --foreground` arguments: every option
    /// must survive the trip, or the daemon would silently serve something else.
    #[test]
    fn mount_options_survive_the_trip_to_the_daemon() {
        let mut all = MountOptions::new("/mnt/q m");
        all.run_dir = Some("/run/r".into());
        all.allow_other = true;
        all.audit_log = Some("/var/log/audit".into());
        all.passthrough = qemu_bridge::mount::Passthrough::Always;
        all.threads = Some(3);
        all.log_file = Some("/tmp/log".into());
        for options in [MountOptions::new("/mnt/q"), all] {
            let mut argv: Vec<std::ffi::OsString> =
                vec!["qemu-bridge".into(), "mount".into(), "--foreground".into()];
            argv.extend(options.to_args());
            let Verb::Mount(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("not mount") };
            assert!(args.foreground);
            assert_eq!(args.options(), options);
        }
    }

    fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(Into::into).collect()
    }

    /// mount(8) through mount.fuse3: `qemu-bridge SOURCE MOUNTPOINT -o OPTIONS` becomes the
    /// mount verb with flags, and what it becomes parses to the options asked for.
    #[test]
    fn mount_helper_arguments_become_the_mount_verb() {
        let translated = from_mount_helper(&os(&[
            "qemu-bridge",
            "qemu-bridge",
            "/mnt/qemu",
            "-o",
            "ro",
            "-o",
            "run_dir=/run/x,allow_other,noauto,passthrough=never,threads=3,audit_log=/a,log_file=/l,x-systemd.automount",
        ]))
        .unwrap()
        .unwrap();
        let Verb::Mount(args) = Cli::try_parse_from(&translated).unwrap().command else {
            panic!("not mount")
        };
        let mut expected = MountOptions::new("/mnt/qemu");
        expected.run_dir = Some("/run/x".into());
        expected.allow_other = true;
        expected.passthrough = Passthrough::Never;
        expected.threads = Some(3);
        expected.audit_log = Some("/a".into());
        expected.log_file = Some("/l".into());
        assert_eq!(args.options(), expected);
        assert!(!args.foreground, "mount(8) waits for the helper: it must return once mounted");
        // verbs and flags are not intercepted
        for argv in [
            os(&["qemu-bridge", "list"]),
            os(&["qemu-bridge", "mount", "/mnt"]),
            os(&["qemu-bridge", "--help"]),
        ] {
            assert!(from_mount_helper(&argv).is_none(), "{argv:?}");
        }
        let error =
            |options: &str| from_mount_helper(&os(&["qemu-bridge", "src", "/mnt", "-o", options])).unwrap();
        assert!(error("run_dir=/r,colour=blue")
            .unwrap_err()
            .contains("unknown mount option \"colour=blue\""));
        assert!(error("allow_other=yes").is_err());
        assert!(from_mount_helper(&os(&["qemu-bridge", "src", "/mnt", "-o"])).unwrap().is_err());
        // as mount(8) calls the installed helper, even with a source named like a verb
        let helper = from_mount_helper(&os(&[
            "/usr/sbin/mount.fuse.qemu-bridge",
            "launch",
            "/mnt/q",
            "-o",
            "run_dir=/r",
            "-t",
            "fuse.qemu-bridge",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(helper[1..], os(&["mount", "/mnt/q", "--run-dir=/r"]));
    }

    #[test]
    fn completions_and_man_page_come_from_the_command_line_definitions() {
        use clap::CommandFactory;
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "qemu-bridge", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("snapshot") && bash.contains("--passthrough"), "{bash}");
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(man.starts_with(".ie") || man.contains(".TH qemu-bridge"), "{man}");
        assert!(man.contains("launch"));
        for section in ["ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES"] {
            assert!(man.contains(&format!(".SH \"{section}\"")), "no {section} in the man page");
        }
    }

    #[test]
    fn list_rows_serialize_as_before() {
        let row = ListRow {
            name: VmName::new("a").unwrap(),
            state: ListState::Run(RunState::Paused),
            ram_size: Some(64 << 20),
            ram_path: Some("/dev/shm/qemu_ram_a".into()),
            ram_kind: Some(qemu_bridge::ram::RamKind::File),
            zero_copy: Some(true),
            machine: Some("pc-q35-7.2-machine".into()),
            tracking: None,
            error: None,
            saved_states: None,
            state_disk: None,
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({"name": "a", "state": "paused", "ram_size": 67108864,
                               "ram_path": "/dev/shm/qemu_ram_a", "ram_kind": "file", "zero_copy": true,
                               "machine": "pc-q35-7.2-machine"})
        );
        let row = ListRow {
            error: Some("boom".into()),
            ..ListRow::bare(VmName::new("b").unwrap(), ListState::Unreachable)
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({"name": "b", "state": "unreachable", "error": "boom"})
        );
        let row = ListRow {
            saved_states: Some(vec!["before".into()]),
            state_disk: Some("/run/q/c.state.qcow2".into()),
            ..ListRow::bare(VmName::new("c").unwrap(), ListState::Stopped)
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({"name": "c", "state": "stopped", "saved_states": ["before"],
                               "state_disk": "/run/q/c.state.qcow2"})
        );
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_795_492_691), "2026-11-24 03:58:11");
    }

    #[test]
    fn hex_dump_matches_xxd_layout() {
        let dump = hex_dump(0x7c00, b"QEMU-BRIDGE\x00\x01\xff tail!!");
        assert_eq!(
            dump,
            "00007c00: 5145 4d55 2d42 5249 4447 4500 01ff 2074  QEMU-BRIDGE... t\n\
             00007c10: 6169 6c21 21                             ail!!\n"
        );
    }
}
