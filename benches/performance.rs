//! qemu-bridge benchmarks: every figure with its median and p99, a baseline measured in the same
//! run and the ratio to it, against the targets this tool is held to (latency, throughput, 60 snapshots a second).
//!
//! `cargo bench --bench performance` (or `scripts/bench.sh`) launches a 64 MiB VM under TCG (and
//! two more for the multi-VM figures), mounts them, measures, tears everything down and writes
//! `target/bench/results.md`. Timing lives here only: the tests never assert on time.
//!
//! `BENCH_SECONDS` shortens the sustained runs (default 10 s each); `BENCH_ONLY=peers,listing`
//! runs only the sections named (the functions of `Bench`).

use qemu_bridge_test_support as common;
#[path = "support/fuse_ceiling.rs"]
mod fuse_ceiling;

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use qemu_bridge::launch::{self, LaunchOptions};
use qemu_bridge::RunDir;
use qemu_bridge::{Gva, SharedMemoryBridge, Vm, VmInfo};

const RAM: usize = 64 << 20;

/// One row of the results table.
struct Row {
    name: String,
    target: String,
    median: f64,
    p99: f64,
    unit: &'static str,
    baseline: Option<(String, f64)>,
    /// ratio = baseline speed / our speed expressed as "x of baseline" (higher is better)
    ratio: Option<f64>,
    verdict: String,
}

struct Results {
    rows: Vec<Row>,
}

impl Results {
    fn add(&mut self, row: Row) {
        let baseline = row
            .baseline
            .as_ref()
            .map_or(String::new(), |(name, value)| format!(" | {name} {}", fmt(*value, row.unit)));
        let ratio = row.ratio.map_or(String::new(), |r| format!(" | {r:.2}x"));
        println!(
            "{:<58} median {:>12} p99 {:>12}{baseline}{ratio}  {}",
            row.name,
            fmt(row.median, row.unit),
            fmt(row.p99, row.unit),
            row.verdict
        );
        self.rows.push(row);
    }

    fn markdown(&self, machine: &str) -> String {
        let mut text = String::new();
        text.push_str(&format!("Machine: {machine}\n\n"));
        text.push_str("| figure | seed target | median | p99 | baseline (same run) | ratio | verdict |\n");
        text.push_str("|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                row.name,
                row.target,
                fmt(row.median, row.unit),
                fmt(row.p99, row.unit),
                row.baseline
                    .as_ref()
                    .map_or("-".into(), |(name, value)| format!("{name}: {}", fmt(*value, row.unit))),
                row.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                row.verdict
            ));
        }
        text
    }
}

fn fmt(value: f64, unit: &str) -> String {
    match unit {
        "s" if value < 1e-6 => format!("{:.0} ns", value * 1e9),
        "s" if value < 1e-3 => format!("{:.1} µs", value * 1e6),
        "s" => format!("{:.2} ms", value * 1e3),
        "GB/s" => format!("{value:.2} GB/s"),
        "MB/s" => format!("{value:.0} MB/s"),
        "%" => format!("{value:.1} %"),
        _ => format!("{value:.3} {unit}"),
    }
}

/// Median and 99th percentile of `samples`.
fn stats(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = samples[samples.len() / 2];
    let p99 = samples[((samples.len() as f64 * 0.99).ceil() as usize).clamp(1, samples.len()) - 1];
    (median, p99)
}

/// Seconds per call of `f`, `runs` times.
fn time(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect()
}

/// Per-call seconds of `f`, measured in batches of `batch` calls (for nanosecond operations).
fn time_batched(runs: usize, batch: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() / batch as f64
        })
        .collect()
}

fn cpu_seconds() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let user = usage.user_time();
    let system = usage.system_time();
    user.tv_sec() as f64
        + user.tv_usec() as f64 * 1e-6
        + system.tv_sec() as f64
        + system.tv_usec() as f64 * 1e-6
}

/// One reader of the peers' rounds.
struct PeerReader {
    name: &'static str,
    file: PathBuf,
    /// Processes put on one CPU with the reader, or none.
    pinned: Option<Vec<u32>>,
    /// `/proc/.../stat` of the threads serving it, whose CPU time is counted (none: not counted).
    server: Vec<PathBuf>,
}

struct Lab {
    _dir: tempfile::TempDir,
    run_dir: RunDir,
    vms: Vec<launch::LaunchedVm>,
    hand_started: Vec<u32>,
    mounts: Vec<(PathBuf, u32)>,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("qb-bench").tempdir().unwrap();
        let run_dir = RunDir::new(dir.path().join("run"));
        Self { _dir: dir, run_dir, vms: Vec::new(), hand_started: Vec::new(), mounts: Vec::new() }
    }

    fn launch(&mut self, name: &str) -> Vm {
        self.launch_with(name, 64 << 20)
    }

    fn launch_with(&mut self, name: &str, memory: u64) -> Vm {
        self.launch_extra(name, memory, &[])
    }

    fn launch_extra(&mut self, name: &str, memory: u64, extra_args: &[String]) -> Vm {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let image = self.run_dir.path().parent().unwrap().join(format!("{name}.img"));
        let status = Command::new(root.join("scripts/build-boot-guest.sh")).arg(&image).status().unwrap();
        assert!(status.success(), "cannot build the boot-sector guest");
        let name = qemu_bridge::VmName::new(&format!("{name}-{}", std::process::id())).unwrap();
        let mut options = LaunchOptions::new(name, self.run_dir.clone());
        options.drive = Some(image);
        options.memory = memory;
        options.extra_args = extra_args.to_vec();
        let vm = launch::launch(&options).expect("launch VM");
        let handle = vm.vm.clone();
        self.vms.push(vm);
        handle
    }

    /// A VM with private RAM (no memory backend option), started by hand; killed on drop.
    fn start_private(&mut self, name: &str) -> Vm {
        let pidfile = self.run_dir.path().join(format!("{name}.hand.pid"));
        let status = Command::new(launch::qemu_binary())
            .args([
                "-machine",
                "q35,accel=tcg",
                "-m",
                "64M",
                "-display",
                "none",
                "-nodefaults",
                "-daemonize",
                "-S",
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.run_dir.path().join(format!("{name}.qmp")).display()
            ))
            .arg("-pidfile")
            .arg(&pidfile)
            .status()
            .unwrap();
        assert!(status.success());
        self.hand_started.push(common::process::read_pid(&pidfile).unwrap());
        Vm::existing(&self.run_dir, name).unwrap()
    }

    fn mount(&mut self, extra: &[&str]) -> PathBuf {
        let mountpoint = self.run_dir.path().parent().unwrap().join(format!("mnt{}", self.mounts.len()));
        std::fs::create_dir_all(&mountpoint).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
            .arg("mount")
            .arg(&mountpoint)
            .arg("--run-dir")
            .arg(self.run_dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let pid = common::daemon_pid(&String::from_utf8_lossy(&output.stdout));
        self.mounts.push((mountpoint.clone(), pid));
        mountpoint
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (mountpoint, pid) in &self.mounts {
            let _ = qemu_bridge::mount::umount(mountpoint);
            common::wait_until(Duration::from_secs(5), || !common::process::alive(*pid));
        }
        for vm in &self.vms {
            let _ = launch::stop(&self.run_dir, vm.name().as_str(), true);
        }
        for &pid in &self.hand_started {
            common::process::end(pid, Duration::from_millis(100));
        }
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu = Command::new(launch::qemu_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, kernel {}, {qemu}", kernel.trim())
}

/// What the sections share: the first VM, its RAM, the same-run baselines.
struct Bench {
    results: Results,
    lab: Lab,
    vm: Vm,
    bridge: SharedMemoryBridge,
    info: VmInfo,
    cores: usize,
    seconds: f64,
    /// A 64 MiB heap buffer, the memcpy baseline's source.
    source: Vec<u8>,
    /// A reused 64 MiB snapshot buffer.
    snapshot: Vec<u8>,
    /// memcpy of 64 MiB, one thread and all cores: median seconds.
    memcpy_median: f64,
    memcpy_parallel_median: f64,
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.get(1).map(String::as_str) == Some(fuse_ceiling::SERVE_ARGUMENT) {
        if let Err(err) = fuse_ceiling::serve_process(&arguments[2..]) {
            eprintln!("fuse ceiling: {err}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to do then.
    if !arguments.iter().any(|arg| arg == "--bench") {
        println!("performance: run with `cargo bench --bench performance` (or scripts/bench.sh)");
        return;
    }
    let mut bench = Bench::start();
    // `BENCH_ONLY=peers,listing` runs those sections alone
    let only = std::env::var("BENCH_ONLY").ok();
    type Section = (&'static str, fn(&mut Bench));
    let sections: [Section; 19] = [
        ("baselines", Bench::baselines),
        ("views_and_copies", Bench::views_and_copies),
        ("snapshots", Bench::snapshots),
        ("sustained_rates", Bench::sustained_rates),
        ("mount_reads", Bench::mount_reads),
        ("peers", Bench::peers),
        ("idle_and_private", Bench::idle_and_private),
        ("listing", Bench::listing),
        ("many_vms", Bench::many_vms),
        ("pictures", Bench::pictures),
        ("view_scaling", Bench::view_scaling),
        ("incremental", Bench::incremental),
        ("captures", Bench::captures),
        ("soft_dirty", Bench::soft_dirty),
        ("soft_dirty_inside", Bench::soft_dirty_inside),
        ("captures_soft_dirty", Bench::captures_soft_dirty),
        ("captures_inside", Bench::captures_inside),
        ("guest_state", Bench::guest_state),
        ("linux_views", Bench::linux_views),
    ];
    for (name, section) in sections {
        // the runs inside the soft-dirty VM are asked for by name only
        let wanted = match only.as_deref() {
            None => !name.ends_with("_inside"),
            Some(only) => only.split(',').any(|wanted| wanted == name),
        };
        if wanted {
            section(&mut bench);
        }
    }
    let Bench { results, lab, .. } = bench;
    drop(lab);
    if std::env::var_os(BENCH_INSIDE).is_some() {
        return; // the run outside writes the table (this checkout is read-only in here)
    }

    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let markdown = results.markdown(&machine_description());
    std::fs::write(out_dir.join("results.md"), &markdown).unwrap();
    println!("\n{markdown}\nwritten to {}", out_dir.join("results.md").display());
}

/// Sustains `hz` snapshot rounds (one per bridge) for `seconds`: MB/s, CPU as % of one core,
/// and the p99 of how late a round finished past its tick.
fn sustained(
    bridges: &[&SharedMemoryBridge],
    hz: f64,
    buffers: &mut [Vec<u8>],
    seconds: f64,
) -> (f64, f64, f64) {
    let period = Duration::from_secs_f64(1.0 / hz);
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut late = Vec::new();
    let mut next = start;
    while start.elapsed().as_secs_f64() < seconds {
        for (bridge, buffer) in bridges.iter().zip(buffers.iter_mut()) {
            bridge.snapshot_into(buffer).unwrap();
            bytes += buffer.len() as u64;
        }
        // how far past its tick this frame finished
        late.push(Instant::now().saturating_duration_since(next).as_secs_f64());
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu_start) / wall * 100.0;
    (bytes as f64 / wall / 1e6, cpu, stats(late).1)
}

/// GB/s of one sequential pass over the first 64 MiB of `path` in 1 MiB reads.
fn sequential(path: &Path) -> f64 {
    sequential_over(path, RAM as u64)
}

/// User and system CPU seconds of the process or thread whose `/proc/.../stat` this is.
fn cpu_seconds_of(stat: &Path) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap();
    // after the command name in parentheses: state is field 3, utime 14, stime 15
    let fields: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ, 100 on every Linux architecture
}

/// Runs `f` with every thread of the processes `pids` (this one's included where named) on the
/// first CPU this process may use, then gives them back the CPUs they had. A reader and its FUSE
/// daemon on one CPU: each wakes the other without an inter-processor interrupt.
fn on_one_cpu<T>(pids: &[u32], f: impl FnOnce() -> T) -> T {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let tasks: Vec<Pid> = pids
        .iter()
        .flat_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).unwrap())
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok().map(Pid::from_raw))
        .collect();
    let before: Vec<CpuSet> = tasks.iter().map(|&task| sched_getaffinity(task).unwrap()).collect();
    let first = (0..CpuSet::count()).find(|&cpu| before[0].is_set(cpu).unwrap()).unwrap();
    let mut one = CpuSet::new();
    one.set(first).unwrap();
    for &task in &tasks {
        // a thread that has just ended cannot be moved: no matter
        let _ = sched_setaffinity(task, &one);
    }
    let result = f();
    for (&task, cpus) in tasks.iter().zip(&before) {
        let _ = sched_setaffinity(task, cpus);
    }
    result
}

/// GB/s of one sequential pass over the first `len` bytes of `path` (or all of a shorter file)
/// in 1 MiB reads.
fn sequential_over(path: &Path, len: u64) -> f64 {
    sequential_over_serving(path, len, &[]).0
}

/// [`sequential_over`] (the open not counted), and the CPU seconds that the threads of `server`
/// (their `/proc/.../stat`) spent meanwhile.
fn sequential_over_serving(path: &Path, len: u64, server: &[PathBuf]) -> (f64, f64) {
    let file = File::open(path).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let cpu = || server.iter().map(|stat| cpu_seconds_of(stat)).sum::<f64>();
    let cpu_before = cpu();
    let start = Instant::now();
    let mut offset = 0u64;
    // the first `len` bytes, or all of a shorter file (`core` of RAM minus the BIOS window)
    while offset < len {
        let n = file.read_at(&mut chunk, offset).unwrap();
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    let gbps = offset as f64 / start.elapsed().as_secs_f64() / 1e9;
    (gbps, cpu() - cpu_before)
}

/// Fills a paused guest's RAM file with pseudo-random bytes past its first MiB (the guest's
/// code and data): every page is data, as in a busy guest.
fn fill_with_noise(ram_path: &Path, len: usize) {
    let noise: Vec<u8> =
        (1 << 20..len as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
    std::fs::OpenOptions::new().write(true).open(ram_path).unwrap().write_all_at(&noise, 1 << 20).unwrap();
}

/// GB/s of LeechCore reading `len` bytes in 1 MiB reads (median of its rounds), through its
/// Python binding (`pip install leechcorepyc`) and its QEMU device.
fn leechcore(ram_path: &Path, qmp: &Path, len: u64) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/leechcore-read.py");
    let shm = ram_path.strip_prefix("/dev/shm").map_err(|_| "the RAM file is not under /dev/shm")?;
    let output = Command::new("python3")
        .arg(script)
        .arg(shm)
        .arg(qmp)
        .arg(len.to_string())
        .output()
        .map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
}

/// Writes data into every page of the RAM file at `path` (`memory` bytes: no hole, no page of
/// zeros, each page different), as a guest that touched all its RAM; the file, open for writing.
fn fill_with_data(path: &Path, memory: u64) -> std::fs::File {
    let ram = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for offset in (0..memory).step_by(chunk.len()) {
        for (index, word) in chunk.chunks_mut(8).enumerate() {
            word.copy_from_slice(
                &(offset + index as u64 * 8).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes(),
            );
        }
        ram.write_all_at(&chunk, offset).unwrap();
    }
    ram
}

/// Writes 8 bytes into each of 256 pages spread over `memory` bytes of `ram` (1 MiB of pages
/// dirtied), different each call.
fn dirty_a_mebibyte(ram: &std::fs::File, memory: u64, stamp: u64) {
    for index in 0..256u64 {
        let at = (index * 7 * 4096 * 4099 + stamp * 4096) % memory / 4096 * 4096;
        ram.write_all_at(&(stamp * 1000 + index).to_le_bytes(), at).unwrap();
    }
}

/// Writes into a VM's RAM as its vCPUs would under KVM: through the QEMU process's own mapping
/// (`/proc/PID/mem`), so that the kernel sets the soft-dirty bits of QEMU's pages (a write into
/// the RAM file from another process sets none).
struct QemuWriter {
    mem: File,
    /// Where the RAM file starts in QEMU's address space.
    base: u64,
}

impl QemuWriter {
    fn open(info: &VmInfo) -> Self {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&info.ram_path).unwrap().ino();
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", info.qemu_pid)).unwrap();
        // "start-end perms offset dev inode path": the line of the RAM file's first byte
        let base = maps
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (range, offset, file) = (fields.first()?, fields.get(2)?, fields.get(4)?);
                (u64::from_str_radix(offset, 16).ok()? == 0 && file.parse::<u64>().ok()? == inode)
                    .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())?
            })
            .expect("QEMU maps its RAM file");
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", info.qemu_pid))
            .unwrap();
        Self { mem, base }
    }

    fn write(&self, bytes: &[u8], offset: u64) {
        self.mem.write_all_at(bytes, self.base + offset).unwrap();
    }

    /// 8 bytes into each of 256 pages spread over `memory` (1 MiB of pages), different each call.
    fn dirty_a_mebibyte(&self, memory: u64, stamp: u64) {
        for index in 0..256u64 {
            let at = (index * 7 * 4096 * 4099 + stamp * 4096) % memory / 4096 * 4096;
            self.write(&(stamp * 1000 + index).to_le_bytes(), at);
        }
    }
}

/// Runs the benchmark section `section` of this very binary inside a VM of `memory_mib` MiB on
/// Debian's own kernel (test-support/src/nested.rs), with `environment` (`NAME=VALUE ...`)
/// exported, and adds the rows it prints to `results`.
fn rows_from_inside(results: &mut Results, section: &str, environment: &str, memory_mib: u64) {
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "export {BENCH_INSIDE}=1 BENCH_ONLY={section} {environment}\ncd /tmp && exec {} --bench\n",
        exe.display()
    );
    let run = common::nested::run_inside(&script, memory_mib, Duration::from_secs(3600));
    assert_eq!(run.exit_code, 0, "the run inside failed:\n{}", run.output);
    for row in run.output.lines().filter_map(Row::from_line) {
        results.add(row);
    }
}

/// Set in the environment of the benchmark run inside the soft-dirty VM.
const BENCH_INSIDE: &str = "QEMU_BRIDGE_BENCH_INSIDE";
/// Prefix of the rows the run inside prints for the run outside.
const ROW_LINE: &str = "QB-ROW ";

impl Row {
    fn to_line(&self) -> String {
        let json = serde_json::json!({
            "name": self.name, "target": self.target, "median": self.median, "p99": self.p99,
            "unit": self.unit, "baseline": self.baseline, "ratio": self.ratio, "verdict": self.verdict,
        });
        format!("{ROW_LINE}{json}")
    }

    fn from_line(line: &str) -> Option<Row> {
        let json: serde_json::Value = serde_json::from_str(line.strip_prefix(ROW_LINE)?).ok()?;
        let text = |key: &str| json[key].as_str().unwrap_or_default().to_string();
        Some(Row {
            name: text("name"),
            target: text("target"),
            median: json["median"].as_f64()?,
            p99: json["p99"].as_f64()?,
            unit: Box::leak(text("unit").into_boxed_str()),
            baseline: json["baseline"]
                .as_array()
                .map(|pair| (pair[0].as_str().unwrap_or_default().into(), pair[1].as_f64().unwrap_or(0.0))),
            ratio: json["ratio"].as_f64(),
            verdict: text("verdict"),
        })
    }
}

/// Seconds `qemu-bridge snapshot` of `vm` to `out` takes, with `extra` arguments.
fn snapshot_seconds(run_dir: &RunDir, vm: &Vm, out: &str, extra: &[&str]) -> f64 {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
        .args(["snapshot", vm.name().as_str(), "-o", out, "--quiet", "--run-dir"])
        .arg(run_dir.path())
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    started.elapsed().as_secs_f64()
}

/// What a browser saw of `qemu-bridge view`.
struct ViewSample {
    /// Median frames per second per VM.
    fps: f64,
    /// The server's CPU, % of one core.
    cpu: f64,
    /// The server's private resident memory at the end (`RssAnon`: its own heap, not the guest
    /// RAM it maps shared, which `VmRSS` counts too), bytes.
    rss: u64,
    /// The last `sweep_ms` the server reported (every page re-checked within it).
    sweep_ms: Option<u64>,
    /// How the server said it tracks changes.
    tracking: String,
}

/// Rows: the pause of `snapshot --consistent` of a running `label` guest (fingerprints) against
/// `--pause`'s, idle and with 1 MiB written into `ram` every 16 ms; `capture` takes one and says
/// (seconds in all, seconds paused).
fn consistent_against_pause(
    results: &mut Results,
    label: &str,
    ram: &File,
    memory: u64,
    capture: &(dyn Fn(&qemu_bridge::capture::CaptureOptions) -> (f64, f64) + Sync),
) {
    use qemu_bridge::capture::CaptureOptions;
    let writing = std::sync::atomic::AtomicBool::new(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut stamp = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if writing.load(std::sync::atomic::Ordering::Relaxed) {
                    stamp += 1;
                    dirty_a_mebibyte(ram, memory, stamp);
                }
                std::thread::sleep(Duration::from_millis(16));
            }
        });
        for (load, writes) in [("idle", false), ("1 MiB written every 16 ms", true)] {
            writing.store(writes, std::sync::atomic::Ordering::Relaxed);
            let pause = CaptureOptions { pause: true, ..Default::default() };
            let consistent = CaptureOptions { consistent: true, ..Default::default() };
            let paused: Vec<(f64, f64)> = (0..3).map(|_| capture(&pause)).collect();
            let pre_copy: Vec<(f64, f64)> = (0..3).map(|_| capture(&consistent)).collect();
            let paused_whole = stats(paused.iter().map(|run| run.0).collect());
            let consistent_pause = stats(pre_copy.iter().map(|run| run.1).collect());
            let consistent_whole = stats(pre_copy.iter().map(|run| run.0).collect());
            results.add(Row {
                name: format!("guest paused by snapshot --consistent, {label} running guest, {load}"),
                target: "<= 1/4 of --pause's pause (fingerprints)".into(),
                median: consistent_pause.0,
                p99: consistent_pause.1,
                unit: "s",
                baseline: Some(("--pause (paused for the whole copy)".into(), paused_whole.0)),
                ratio: Some(paused_whole.0 / consistent_pause.0),
                verdict: format!(
                    "{}: {:.1}x shorter; whole capture {:.2} s against {:.2} s",
                    if consistent_pause.0 * 4.0 <= paused_whole.0 { "met" } else { "not met" },
                    paused_whole.0 / consistent_pause.0,
                    consistent_whole.0,
                    paused_whole.0
                ),
            });
        }
        // the writer ends before the scope does (the scope waits for it)
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// A thread that writes 1 MiB into each RAM file per frame (every 1/60 s), as the guests' vCPUs
/// would: an 8-byte stamp into each of 256 pages spread over RAM (`spread`: 256 system calls a
/// VM a frame), or one run of 256 pages, each page stamped, at a moving offset (one call); stopped
/// when dropped.
struct FrameWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FrameWriter {
    fn start(rams: Vec<File>, memory: u64, spread: bool) -> Self {
        const RUN: usize = 1 << 20;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut at = 0u64;
            let mut stamp = 0u64;
            let mut run = vec![0u8; RUN];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for ram in &rams {
                    if spread {
                        for _ in 0..256 {
                            stamp += 1;
                            ram.write_all_at(&stamp.to_le_bytes(), at).unwrap();
                            at = (at + 7 * 4096 * 4099) % memory;
                        }
                    } else {
                        stamp += 1;
                        for page in run.chunks_mut(4096) {
                            page[..8].copy_from_slice(&stamp.to_le_bytes());
                        }
                        ram.write_all_at(&run, at).unwrap();
                        at = (at + RUN as u64) % memory;
                    }
                }
                std::thread::sleep(Duration::from_micros(16_667));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Frames drawn per second by each of the `vms` bricks of the view's page in headless Chromium
/// (the page counts them in each brick's `data-frames`) over `duration`: the slowest brick's
/// rate and the median.
fn browser_frames(run_dir: &common::TestRunDir, vms: usize, duration: Duration) -> (f64, f64) {
    let (server, address) = common::browser::start_view(run_dir.path(), &[]);
    let url = format!("http://{address}/");
    let mut browser = common::browser::Browser::open(&url);
    assert!(
        common::wait_until(Duration::from_secs(60), || browser.bricks().len() == vms),
        "the page never showed {vms} bricks"
    );
    let frames = |browser: &mut common::browser::Browser| -> std::collections::HashMap<String, u64> {
        browser.bricks().into_iter().map(|(name, frames, _)| (name, frames)).collect()
    };
    let before = frames(&mut browser);
    let start = Instant::now();
    std::thread::sleep(duration);
    let after = frames(&mut browser);
    let seconds = start.elapsed().as_secs_f64();
    drop(browser);
    drop(server);
    let mut rates: Vec<f64> = after
        .iter()
        .map(|(name, frames)| frames.saturating_sub(before.get(name).copied().unwrap_or(0)) as f64 / seconds)
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates.first().copied().unwrap_or(0.0), rates.get(rates.len() / 2).copied().unwrap_or(0.0))
}

/// Runs `qemu-bridge view` on `run_dir` with `extra` arguments and reads its WebSocket like a
/// browser for `duration` once all `vms` are shown: frames per second per VM, the server's CPU
/// and memory, and what it said of its tracking.
fn view_sample(run_dir: &RunDir, vms: usize, duration: Duration, extra: &[&str]) -> ViewSample {
    let (server, address) = common::browser::start_view(run_dir.path(), extra);
    let stream = std::net::TcpStream::connect(address).unwrap();
    let (mut socket, _) = tungstenite::client::client(format!("ws://{address}/ws"), stream).unwrap();
    let cpu_ticks = |pid: u32| cpu_seconds_of(Path::new(&format!("/proc/{pid}/stat")));
    // wait until every VM is shown and has sent a frame
    let mut frames: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sweep_ms = None;
    let mut tracking = String::new();
    let mut note_sweep = |text: &str| {
        let message: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        if let Some(sweep) = message["vms"][0]["sweep_ms"].as_u64() {
            sweep_ms = Some(sweep);
        }
        if let Some(way) = message["vms"][0]["tracking"].as_str() {
            tracking = way.to_string();
        }
    };
    while frames.len() < vms && Instant::now() < deadline {
        match socket.read() {
            Ok(tungstenite::Message::Binary(bytes)) => {
                frames.insert(u32::from_le_bytes(bytes[1..5].try_into().unwrap()), 0);
            }
            Ok(tungstenite::Message::Text(text)) => note_sweep(&text),
            _ => {}
        }
    }
    let (start, cpu_start) = (Instant::now(), cpu_ticks(server.0.id()));
    while start.elapsed() < duration {
        match socket.read() {
            Ok(tungstenite::Message::Binary(bytes)) => {
                *frames.entry(u32::from_le_bytes(bytes[1..5].try_into().unwrap())).or_default() += 1;
            }
            Ok(tungstenite::Message::Text(text)) => note_sweep(&text),
            _ => {}
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(server.0.id()) - cpu_start) / seconds * 100.0;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let rates: Vec<f64> = frames.values().map(|count| *count as f64 / seconds).collect();
    ViewSample { fps: stats(rates).0, cpu, rss, sweep_ms, tracking }
}

/// Alternates the two readers sample by sample, so that a noisy neighbour on a shared machine
/// hits both alike; the median and the 1st percentile (the slow tail) of GB/s of each.
fn interleaved(ours: &Path, baseline: &Path) -> ((f64, f64), (f64, f64)) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        a.push(sequential(ours));
        b.push(sequential(baseline));
    }
    let summary = |samples: Vec<f64>| {
        let (median, _) = stats(samples.clone());
        let (slow, _) = stats(samples.iter().map(|s| -s).collect());
        (median, -slow)
    };
    (summary(a), summary(b))
}

/// Median and p99 seconds of random 4 KiB reads of `path`.
fn random_reads(path: &Path) -> (f64, f64) {
    let file = File::open(path).unwrap();
    let mut page = [0u8; 4096];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    stats(time(20000, || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = (seed % (RAM as u64 / 4096)) * 4096;
        file.read_exact_at(&mut page, offset).unwrap();
    }))
}

/// Median aggregate GB/s of two parallel sequential readers of `path`.
fn parallel_readers(path: &Path) -> f64 {
    let samples: Vec<f64> = (0..10)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| sequential(path));
                }
            });
            2.0 * RAM as f64 / start.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    stats(samples).0
}

impl Bench {
    fn start() -> Self {
        let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut lab = Lab::new();
        let vm = lab.launch("bench");
        let (bridge, info) = vm.open_bridge().unwrap();
        assert_eq!(bridge.size(), RAM);
        std::thread::sleep(Duration::from_millis(500));
        // The VMs are paused except where a guest writing is the point of the figure, so that
        // the figures measure copies, not TCG's share of a 2-core machine.
        vm.with_qmp(|q| q.stop()).unwrap();
        // pseudo-random bytes: every page is data, as in a busy guest (an idle one is mostly
        // holes, which read as zeros without a copy: measured apart, in `idle_and_private`)
        fill_with_noise(&info.ram_path, RAM);
        Self {
            results: Results { rows: Vec::new() },
            lab,
            vm,
            bridge,
            info,
            cores,
            seconds,
            source: vec![7u8; RAM],
            snapshot: vec![0u8; RAM],
            memcpy_median: 0.0,
            memcpy_parallel_median: 0.0,
        }
    }

    /// memcpy of 64 MiB heap to heap, pre-faulted, on one thread and on all cores.
    fn baselines(&mut self) {
        let Self { results, cores, source, .. } = self;
        let cores = *cores;
        let source = &*source;
        let mut target = vec![0u8; RAM];
        let memcpy = time(40, || {
            target.copy_from_slice(black_box(source));
            black_box(&target);
        });
        let (memcpy_median, memcpy_p99) = stats(memcpy);
        let memcpy_parallel = time(40, || {
            std::thread::scope(|scope| {
                let chunk = RAM / cores;
                for (dst, src) in target.chunks_mut(chunk).zip(source.chunks(chunk)) {
                    scope.spawn(move || dst.copy_from_slice(src));
                }
            });
            black_box(&target);
        });
        let (memcpy_parallel_median, _) = stats(memcpy_parallel);
        results.add(Row {
            name: "baseline: memcpy 64 MiB heap->heap, 1 thread".into(),
            target: "-".into(),
            median: memcpy_median,
            p99: memcpy_p99,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: format!("{:.1} GB/s", RAM as f64 / memcpy_median / 1e9),
        });
        self.memcpy_median = memcpy_median;
        self.memcpy_parallel_median = memcpy_parallel_median;
    }

    /// Zero-copy views and small copies against memcpy.
    fn views_and_copies(&mut self) {
        let Self { results, bridge, source, .. } = self;
        for (label, len) in [("4 KiB", 4096usize), ("1 MiB", 1 << 20), ("64 MiB", RAM)] {
            let samples = time_batched(200, 1000, || {
                black_box(bridge.read_physical(black_box(0), black_box(len)).unwrap());
            });
            let (median, p99) = stats(samples);
            results.add(Row {
                name: format!("read_physical view {label} (zero copy, no bytes move)"),
                target: "< 1 ms".into(),
                median,
                p99,
                unit: "s",
                baseline: None,
                ratio: None,
                verdict: if p99 < 1e-3 { "met".into() } else { "not met".into() },
            });
        }
        // test_performance_latency (seed name): read_into copies of random ranges up to 1 MiB
        let mut buffer = vec![0u8; 1 << 20];
        let mut seed = 0x1234_5678_9abc_def1u64;
        let latency = time(2000, || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % (1 << 20)) as usize + 1;
            let addr = (seed >> 24) % (RAM - len) as u64;
            bridge.read_into(addr, &mut buffer[..len]).unwrap();
        });
        let (median, p99) = stats(latency);
        results.add(Row {
            name: "test_performance_latency: read_into, random 1 B..1 MiB".into(),
            target: "< 1 ms any range".into(),
            median,
            p99,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: if p99 < 1e-3 { "met".into() } else { "not met".into() },
        });
        // small copies cost a bounds check and a memcpy, no system call (issue: <= 3x memcpy of
        // 8 B, <= 2x of 4 KiB); the baseline copies out of a slice, bounds check included
        for (label, len, batch, limit) in
            [("8 B", 8usize, 20_000, 3.0), ("4 KiB", 4096, 2000, 2.0), ("1 MiB", 1 << 20, 20, 1.25)]
        {
            let mut at = 0usize;
            let mut next = || {
                at = (at + 4096 + 8) % (1 << 20);
                at
            };
            let ours = stats(time_batched(100, batch, || {
                bridge.read_into(black_box(0x100000 + next() as u64), &mut buffer[..len]).unwrap()
            }))
            .0;
            let base = stats(time_batched(100, batch, || {
                let from = black_box(0x100000 + next());
                buffer[..len].copy_from_slice(black_box(&source[from..from + len]));
            }))
            .0;
            results.add(Row {
                name: format!("read_into copy {label}"),
                target: format!("<= {limit}x memcpy"),
                median: ours,
                p99: ours,
                unit: "s",
                baseline: Some(("memcpy".into(), base)),
                ratio: Some(base / ours),
                verdict: if ours <= limit * base { "met".into() } else { "not met".into() },
            });
        }
    }

    /// Whole-RAM snapshots: reused buffer vs fresh Vec, checked vs plain, back to back.
    fn snapshots(&mut self) {
        let Self { results, bridge, vm, cores, snapshot, memcpy_median, memcpy_parallel_median, .. } = self;
        let (cores, memcpy_median, memcpy_parallel_median) =
            (*cores, *memcpy_median, *memcpy_parallel_median);
        bridge.snapshot_into(snapshot).unwrap();
        let single = stats(time(40, || bridge.mapping().copy_with_threads(0, snapshot, 1).unwrap()));
        let parallel = stats(time(40, || bridge.snapshot_into(snapshot).unwrap()));
        let out_of_reach = format!(
            "not met: out of reach here, memcpy of 64 MiB alone takes {:.1} ms ({:.1} GB/s); < 1 ms needs 67 GB/s",
            memcpy_median * 1e3,
            RAM as f64 / memcpy_median / 1e9
        );
        results.add(Row {
            name: "snapshot 64 MiB into reused buffer, 1 thread".into(),
            target: "< 1 ms median, < 5 ms p99".into(),
            median: single.0,
            p99: single.1,
            unit: "s",
            baseline: Some(("memcpy 1 thread".into(), memcpy_median)),
            ratio: Some(memcpy_median / single.0),
            verdict: if single.0 < 1e-3 && single.1 < 5e-3 { "met".into() } else { out_of_reach.clone() },
        });
        results.add(Row {
            name: format!("snapshot 64 MiB into reused buffer, {cores} threads"),
            target: "< 1 ms median, < 5 ms p99".into(),
            median: parallel.0,
            p99: parallel.1,
            unit: "s",
            baseline: Some((format!("memcpy {cores} threads"), memcpy_parallel_median)),
            ratio: Some(memcpy_parallel_median / parallel.0),
            verdict: if parallel.0 < 1e-3 && parallel.1 < 5e-3 {
                "met".into()
            } else if parallel.1 < 5e-3 {
                format!("p99 met; median {}", out_of_reach)
            } else {
                out_of_reach.clone()
            },
        });
        let allocating = stats(time(20, || {
            black_box(bridge.snapshot());
        }));
        results.add(Row {
            name: "snapshot() 64 MiB, fresh Vec each time".into(),
            target: "-".into(),
            median: allocating.0,
            p99: allocating.1,
            unit: "s",
            baseline: Some(("reused buffer".into(), parallel.0)),
            ratio: Some(parallel.0 / allocating.0),
            verdict: "page faults of new memory dominate: use snapshot_into".into(),
        });

        // ---- consistency-checked vs plain, quiet (paused) and written (running guest)
        let quiet = stats(time(20, || {
            let report = bridge.consistent_snapshot_into(snapshot, 4).unwrap();
            assert_eq!(report.attempts, 1);
        }));
        let plain_quiet = stats(time(20, || bridge.snapshot_into(snapshot).unwrap()));
        results.add(Row {
            name: "checked snapshot 64 MiB, quiet guest (paused)".into(),
            target: "-".into(),
            median: quiet.0,
            p99: quiet.1,
            unit: "s",
            baseline: Some(("plain snapshot".into(), plain_quiet.0)),
            ratio: Some(plain_quiet.0 / quiet.0),
            verdict: "copy + one verifying pass".into(),
        });
        vm.with_qmp(|q| q.cont()).unwrap();
        let mut torn = 0;
        let written = stats(time(20, || {
            let report = bridge.consistent_snapshot_into(snapshot, 4).unwrap();
            if report.verdict == qemu_bridge::Verdict::Torn {
                torn += 1;
            }
        }));
        results.add(Row {
            name: "checked snapshot 64 MiB, guest writing (running, counter at 18 Hz)".into(),
            target: "-".into(),
            median: written.0,
            p99: written.1,
            unit: "s",
            baseline: Some(("plain snapshot".into(), plain_quiet.0)),
            ratio: Some(plain_quiet.0 / written.0),
            verdict: format!("{torn}/20 torn after 4 attempts"),
        });
        vm.with_qmp(|q| q.stop()).unwrap();
        // test_performance_throughput (seed name): back-to-back snapshots for 2 s
        let start = Instant::now();
        let mut copies = 0;
        while start.elapsed() < Duration::from_secs(2) {
            bridge.snapshot_into(snapshot).unwrap();
            copies += 1;
        }
        let throughput = copies as f64 * RAM as f64 / start.elapsed().as_secs_f64() / 1e6;
        results.add(Row {
            name: "test_performance_throughput: back-to-back snapshots".into(),
            target: "> 960 MB/s".into(),
            median: throughput,
            p99: throughput,
            unit: "MB/s",
            baseline: Some(("memcpy".into(), RAM as f64 / memcpy_parallel_median / 1e6)),
            ratio: Some(throughput / (RAM as f64 / memcpy_parallel_median / 1e6)),
            verdict: if throughput > 960.0 { "met".into() } else { "not met".into() },
        });
    }

    /// 60 snapshots a second of one VM, and 20 each of three, for `seconds`.
    fn sustained_rates(&mut self) {
        let Self { results, lab, bridge, snapshot, seconds, memcpy_median, .. } = self;
        let (seconds, memcpy_median) = (*seconds, *memcpy_median);
        let bridge = &*bridge;
        let (rate, cpu, _) = sustained(&[bridge], 60.0, std::slice::from_mut(snapshot), seconds);
        let copy_cpu_floor = 60.0 * memcpy_median * 100.0;
        results.add(Row {
            name: format!("60 Hz snapshots for {seconds} s: throughput"),
            target: "> 960 MB/s".into(),
            median: rate,
            p99: rate,
            unit: "MB/s",
            baseline: None,
            ratio: None,
            verdict: if rate > 960.0 { "met".into() } else { "not met".into() },
        });
        results.add(Row {
            name: format!("60 Hz snapshots for {seconds} s: CPU (% of one core)"),
            target: "< 5 %".into(),
            median: cpu,
            p99: cpu,
            unit: "%",
            baseline: Some(("memcpy alone at 60 Hz".into(), copy_cpu_floor)),
            ratio: Some(copy_cpu_floor / cpu),
            verdict: if cpu < 5.0 {
                "met".into()
            } else {
                format!("not met: copying 3.8 GB/s costs {copy_cpu_floor:.0} % of a core in memcpy alone; a zero-copy reader (read_physical) costs ~0")
            },
        });
        let second = lab.launch("bench2");
        let third = lab.launch("bench3");
        let (bridge2, _) = second.open_bridge().unwrap();
        let (bridge3, _) = third.open_bridge().unwrap();
        second.with_qmp(|q| q.stop()).unwrap();
        third.with_qmp(|q| q.stop()).unwrap();
        let mut buffers = vec![vec![0u8; RAM]; 3];
        // fault the buffers in first: a visualizer allocates once
        for (bridge, buffer) in [bridge, &bridge2, &bridge3].into_iter().zip(buffers.iter_mut()) {
            bridge.snapshot_into(buffer).unwrap();
        }
        let (rate3, cpu3, late3) = sustained(&[bridge, &bridge2, &bridge3], 20.0, &mut buffers, seconds);
        results.add(Row {
            name: format!("3 VMs x 20 Hz (60 snapshots/s in all) for {seconds} s"),
            target: "3 VMs at 60 FPS in all".into(),
            median: rate3,
            p99: rate3,
            unit: "MB/s",
            baseline: None,
            ratio: None,
            verdict: format!(
                "{}: p99 lateness {:.1} ms (period 50 ms); CPU {cpu3:.0} % of one core",
                if rate3 >= 0.99 * 60.0 * RAM as f64 / 1e6 && late3 < 0.05 { "met" } else { "not met" },
                late3 * 1e3
            ),
        });
        drop(buffers);
    }

    /// Reads through the default mount (passthrough as root) and through the daemon, against
    /// the RAM file; `status` against a raw QMP round trip.
    fn mount_reads(&mut self) {
        let Self { results, lab, vm, info, .. } = self;
        // the default mount (passthrough=auto: the kernel reads the RAM file itself, as root)
        let default_mount = lab.mount(&[]);
        let default_ram = default_mount.join(&info.name).join("ram");
        let direct_path = info.ram_path.clone();
        let (ours, direct) = interleaved(&default_ram, &direct_path);
        results.add(Row {
            name: "mount (default, passthrough=auto): sequential ram reads, 1 MiB".into(),
            target: ">= 0.95 x direct".into(),
            median: ours.0,
            p99: ours.1,
            unit: "GB/s",
            baseline: Some(("pread of the RAM file".into(), direct.0)),
            ratio: Some(ours.0 / direct.0),
            verdict: if ours.0 / direct.0 >= 0.95 { "met".into() } else { "not met".into() },
        });
        // every read through the daemon
        let mountpoint = lab.mount(&["--passthrough=never"]);
        let ram_path = mountpoint.join(&info.name).join("ram");
        let (fuse, direct) = interleaved(&ram_path, &direct_path);
        results.add(Row {
            name: "mount --passthrough=never: sequential ram reads, 1 MiB".into(),
            target: ">= 0.85 x direct".into(),
            median: fuse.0,
            p99: fuse.1,
            unit: "GB/s",
            baseline: Some(("pread of the RAM file".into(), direct.0)),
            ratio: Some(fuse.0 / direct.0),
            verdict: if fuse.0 / direct.0 >= 0.85 { "met".into() } else { "not met (see README)".into() },
        });
        // the guest-physical views add an offset translation to `ram`: same run, ratio
        for view in ["physical", "core"] {
            let path = mountpoint.join(info.name.as_str()).join(view);
            let (ours, base) = interleaved(&path, &ram_path);
            results.add(Row {
                name: format!("mount: sequential {view} reads (daemon), 1 MiB"),
                target: ">= 0.95 x ram".into(),
                median: ours.0,
                p99: ours.1,
                unit: "GB/s",
                baseline: Some(("ram through the daemon".into(), base.0)),
                ratio: Some(ours.0 / base.0),
                verdict: if ours.0 / base.0 >= 0.95 { "met".into() } else { "not met".into() },
            });
        }
        let random_direct = random_reads(&direct_path);
        let random_fuse = random_reads(&ram_path);
        results.add(Row {
            name: "mount --passthrough=never: random 4 KiB reads".into(),
            target: "< 1 ms".into(),
            median: random_fuse.0,
            p99: random_fuse.1,
            unit: "s",
            baseline: Some(("pread of the RAM file".into(), random_direct.0)),
            ratio: Some(random_direct.0 / random_fuse.0),
            verdict: if random_fuse.1 < 1e-3 { "met".into() } else { "not met".into() },
        });
        // two parallel readers
        let two_direct = parallel_readers(&direct_path);
        let two_fuse = parallel_readers(&ram_path);
        results.add(Row {
            name: "mount --passthrough=never: 2 parallel sequential readers".into(),
            target: "-".into(),
            median: two_fuse,
            p99: two_fuse,
            unit: "GB/s",
            baseline: Some(("2 readers of the RAM file".into(), two_direct)),
            ratio: Some(two_fuse / two_direct),
            verdict: "-".into(),
        });
        // status: raw QMP round trip first (the mount must not hold the socket meanwhile)
        vm.with_qmp(|q| q.stop()).unwrap();
        let mut qmp = vm.connect().unwrap();
        let raw = stats(time(300, || {
            qmp.query_status().unwrap();
        }));
        drop(qmp);
        let status_path = mountpoint.join(&info.name).join("status");
        std::fs::read(&status_path).unwrap();
        let status = stats(time(300, || {
            assert_eq!(std::fs::read(&status_path).unwrap(), b"paused\n");
        }));
        results.add(Row {
            name: "mount: status open+read+close".into(),
            target: "<= 3 x raw QMP round trip".into(),
            median: status.0,
            p99: status.1,
            unit: "s",
            baseline: Some(("raw QMP query-status".into(), raw.0)),
            ratio: Some(raw.0 / status.0),
            verdict: if status.0 <= 3.0 * raw.0 { "met".into() } else { "not met".into() },
        });
    }

    /// Peers side by side on one 256 MiB paused VM full of pseudo-random bytes, each as a ratio
    /// to the limit measured in the same run (pread of the RAM file, 1 MiB reads): the mount
    /// (default and daemon), its views, the library, LeechCore (its Python binding, own QMP
    /// socket) and QEMU's `pmemsave` against `qemu-bridge snapshot` (whole process, digest
    /// included).
    fn peers(&mut self) {
        const SIZE: u64 = 256 << 20;
        let Self { results, lab, .. } = self;
        // LeechCore's own QMP socket, outside the run dir (QEMU 7.2 serves one client per socket)
        let leech_qmp = lab.run_dir.path().parent().unwrap().join("leechcore.qmp");
        let vm = lab.launch_extra(
            "peers",
            SIZE,
            &["-qmp".into(), format!("unix:{},server=on,wait=off", leech_qmp.display())],
        );
        vm.with_qmp(|q| q.stop()).unwrap();
        let info = vm.info().unwrap();
        fill_with_noise(&info.ram_path, SIZE as usize);
        let (bridge, _) = vm.open_bridge().unwrap();
        let default_mount = lab.mount(&[]);
        let daemon_mount = lab.mount(&["--passthrough=never"]);
        let daemon_pid = lab.mounts.last().unwrap().1;
        let ceiling_mountpoint = lab.run_dir.path().parent().unwrap().join("ceiling");
        std::fs::create_dir_all(&ceiling_mountpoint).unwrap();
        let ceiling = fuse_ceiling::CeilingServer::start(&info.ram_path, &ceiling_mountpoint).unwrap();
        // a broken server would measure nothing: its bytes are the RAM file's
        assert!(
            std::fs::read(ceiling.file()).unwrap() == std::fs::read(&info.ram_path).unwrap(),
            "the FUSE ceiling server reads wrong bytes"
        );
        let in_mount = |mount: &Path, file: &str| mount.join(info.name.as_str()).join(file);
        let mut buffer = vec![0u8; 1 << 20];
        let mut library = || {
            let start = Instant::now();
            // RAM-file offsets, as the other readers (guest-physical 0xA0000.. is not RAM)
            for offset in (0..SIZE as usize).step_by(1 << 20) {
                bridge.mapping().copy_to(offset, &mut buffer).unwrap();
            }
            SIZE as f64 / start.elapsed().as_secs_f64() / 1e9
        };
        // the CPU time each daemon spends serving its reader's reads (steadier than wall time on
        // a shared machine; opens not counted): qemu-bridge's request threads (not the ones
        // that check the VMs in the background), the ceiling's one
        let fuse_workers: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{daemon_pid}/task"))
            .unwrap()
            .map(|task| task.unwrap().path())
            .filter(|task| {
                std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.starts_with("fuser-"))
            })
            .map(|task| task.join("stat"))
            .collect();
        assert!(!fuse_workers.is_empty(), "no fuser worker threads in the daemon");
        let here = std::process::id();
        let reader = |name, file, pinned, server| PeerReader { name, file, pinned, server };
        let readers = [
            reader("mount, default (passthrough=auto): ram", in_mount(&default_mount, "ram"), None, vec![]),
            reader("mount --passthrough=never: ram", in_mount(&daemon_mount, "ram"), None, fuse_workers),
            reader(
                "FUSE ceiling: a minimal daemon (raw /dev/fuse, one writev per read)",
                ceiling.file(),
                None,
                vec![ceiling.stat()],
            ),
            reader("mount: physical (daemon)", in_mount(&default_mount, "physical"), None, vec![]),
            reader("mount: core (daemon)", in_mount(&default_mount, "core"), None, vec![]),
            reader(
                "on one CPU with its reader: mount --passthrough=never",
                in_mount(&daemon_mount, "ram"),
                Some(vec![here, daemon_pid]),
                vec![],
            ),
            reader(
                "on one CPU with its reader: FUSE ceiling",
                ceiling.file(),
                Some(vec![here, ceiling.pid()]),
                vec![],
            ),
            reader("on one CPU: pread of the RAM file", info.ram_path.clone(), Some(vec![here]), vec![]),
            reader("pread of the RAM file (the limit)", info.ram_path.clone(), None, vec![]),
        ];
        let mut samples = vec![Vec::new(); readers.len() + 1];
        let mut server_cpu = vec![0.0f64; readers.len()];
        // rounds interleave the readers, so that a noisy neighbour hits all alike
        for _ in 0..10 {
            for (index, reader) in readers.iter().enumerate() {
                let read = || sequential_over_serving(&reader.file, SIZE, &reader.server);
                let (gbps, cpu) = match &reader.pinned {
                    Some(pids) => on_one_cpu(pids, read),
                    None => read(),
                };
                samples[index].push(gbps);
                server_cpu[index] += cpu;
            }
            samples[readers.len()].push(library());
        }
        drop(ceiling);
        let medians: Vec<f64> = samples.into_iter().map(|s| stats(s).0).collect();
        let limit = medians[readers.len() - 1];
        let mut row = |name: String, target: &str, gbps: f64, floor: Option<f64>| {
            let ratio = gbps / limit;
            results.add(Row {
                name,
                target: target.into(),
                median: gbps,
                p99: gbps,
                unit: "GB/s",
                baseline: Some(("pread of the RAM file".into(), limit)),
                ratio: Some(ratio),
                verdict: match floor {
                    Some(floor) if ratio >= floor => "met".into(),
                    Some(_) => "not met".into(),
                    None => "-".into(),
                },
            });
        };
        for (index, PeerReader { name, .. }) in readers.iter().enumerate().take(readers.len() - 1) {
            let (target, floor) = match index {
                0 => (">= 0.95 x direct", Some(0.95)),
                1 => (">= 0.85 x direct", Some(0.85)),
                _ => ("-", None),
            };
            row(format!("peers 256 MiB: {name}"), target, medians[index], floor);
        }
        row("peers 256 MiB: library copy_to, 1 MiB".into(), "-", medians[readers.len()], None);
        match leechcore(&info.ram_path, &leech_qmp, SIZE) {
            Ok(gbps) => row("peers 256 MiB: LeechCore (Python, 1 MiB reads)".into(), "-", gbps, None),
            Err(why) => println!("LeechCore not measured: {why}"),
        }
        let (daemon, ceiling) = (medians[1], medians[2]);
        results.add(Row {
            name: "peers 256 MiB: mount --passthrough=never against the FUSE ceiling".into(),
            target: "-".into(),
            median: daemon,
            p99: daemon,
            unit: "GB/s",
            baseline: Some(("FUSE ceiling".into(), ceiling)),
            ratio: Some(daemon / ceiling),
            verdict: "-".into(),
        });
        // CPU seconds per GiB served, over all rounds (1/100 s resolution: about 40 ticks each)
        let per_gib = [server_cpu[1], server_cpu[2]]
            .map(|seconds| seconds / (10.0 * SIZE as f64 / (1u64 << 30) as f64));
        results.add(Row {
            name: "peers 256 MiB: daemon CPU per GiB served, --passthrough=never against the FUSE ceiling"
                .into(),
            target: "-".into(),
            median: per_gib[0],
            p99: per_gib[0],
            unit: "s",
            baseline: Some(("FUSE ceiling".into(), per_gib[1])),
            ratio: Some(per_gib[1] / per_gib[0]),
            verdict: "-".into(),
        });

        // whole RAM to a file: QEMU's pmemsave against the `qemu-bridge snapshot` process
        let out = PathBuf::from(format!("/dev/shm/qb-bench-{}.bin", std::process::id()));
        let pmemsave = stats(time(5, || {
            vm.with_qmp(|q| q.pmemsave(0, SIZE, &out)).unwrap();
            assert_eq!(std::fs::metadata(&out).unwrap().len(), SIZE);
            std::fs::remove_file(&out).unwrap();
        }));
        for hash in ["blake3", "sha256"] {
            let cli = stats(time(5, || {
                let status = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
                    .args(["snapshot", info.name.as_str(), "--hash", hash, "-o"])
                    .arg(&out)
                    .arg("--run-dir")
                    .arg(lab.run_dir.path())
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
                std::fs::remove_file(&out).unwrap();
            }));
            let target = if hash == "blake3" { ">= 1.5 x pmemsave" } else { "-" };
            results.add(Row {
                name: format!("256 MiB to a file: `qemu-bridge snapshot --hash {hash}` (whole process)"),
                target: target.into(),
                median: cli.0,
                p99: cli.1,
                unit: "s",
                baseline: Some(("QMP pmemsave".into(), pmemsave.0)),
                ratio: Some(pmemsave.0 / cli.0),
                verdict: match (hash, pmemsave.0 / cli.0 >= 1.5) {
                    ("blake3", true) => "met".into(),
                    ("blake3", false) => "not met".into(),
                    _ => "-".into(),
                },
            });
        }
    }

    /// Pictures: classifying every page against a plain copy of the same RAM, and `qemu-bridge
    /// view`'s frame rate per VM and CPU for 1, 3, 10 and 50 VMs, as a browser receives them
    /// over the WebSocket and, for 10 and 50, as headless Chromium draws them.
    fn pictures(&mut self) {
        let Self { results, bridge, snapshot, .. } = self;
        // per page against per page: both on one thread
        let copy = stats(time(10, || bridge.mapping().copy_with_threads(0, snapshot, 1).unwrap()));
        let classify = stats(time(10, || {
            black_box(qemu_bridge::ram::page_classes(bridge.mapping()).unwrap());
        }));
        results.add(Row {
            name: "classify every page of 64 MiB (map.png's work)".into(),
            target: "<= 1 x a plain read".into(),
            median: classify.0,
            p99: classify.1,
            unit: "s",
            baseline: Some(("plain copy, 1 thread".into(), copy.0)),
            ratio: Some(copy.0 / classify.0),
            verdict: if classify.0 <= copy.0 { "met".into() } else { "not met".into() },
        });
        // 64 MiB VMs never started (`-S`), in a run directory of their own (on 2 cores,
        // spinning TCG vCPUs would measure contention): every frame still looks at their RAM
        let run_dir = common::TestRunDir::new();
        let mut vms = Vec::new();
        // every VM at 60 frames a second since the VMs share the scan budget, not the frames;
        // the old rate shared 60 frames a second among the VMs
        for (count, target_fps) in [(1usize, 60.0), (3, 60.0), (10, 60.0), (50, 60.0)] {
            vms.extend(common::never_started_vms("view", &run_dir, count - vms.len(), 64 << 20));
            // idle, and with 1 MiB written into each VM per frame (a run of 256 pages: with 50
            // VMs, 256 calls a VM a frame would be 768,000 system calls a second)
            for writing in [false, true] {
                let writer = writing.then(|| {
                    let open = |vm: &common::TestVm| {
                        std::fs::OpenOptions::new().write(true).open(&vm.launched.ram_path).unwrap()
                    };
                    FrameWriter::start(vms.iter().map(open).collect(), 64 << 20, false)
                });
                let sample = view_sample(&run_dir.run_dir, count, Duration::from_secs_f64(3.0), &[]);
                drop(writer);
                let shared = 60.0 / count as f64;
                let load = if writing { "1 MiB written into each per frame" } else { "idle" };
                results.add(Row {
                    name: format!(
                        "view: {count} VM(s), {load}: frames per second each, as a browser receives them"
                    ),
                    target: format!("{target_fps} FPS each"),
                    median: sample.fps,
                    p99: sample.fps,
                    unit: "fps",
                    baseline: Some(("the old shared rate, 60/VMs".into(), shared)),
                    ratio: Some(sample.fps / shared),
                    verdict: format!(
                        "{}: server CPU {:.0} % of one core, private memory {:.1} MiB",
                        if sample.fps >= 0.9 * target_fps { "met" } else { "not met" },
                        sample.cpu,
                        sample.rss as f64 / f64::from(1 << 20),
                    ),
                });
            }
            if count >= 10 {
                let (least, median) = browser_frames(&run_dir, count, Duration::from_secs(3));
                results.add(Row {
                    name: format!("view in Chromium: {count} VMs, frames drawn per second by each brick"),
                    target: format!("{target_fps} FPS each"),
                    median,
                    p99: least,
                    unit: "fps",
                    baseline: None,
                    ratio: None,
                    verdict: format!(
                        "{}: the slowest brick {least:.1} (headless Chromium, no GPU, same 2 cores)",
                        if least >= 0.9 * target_fps { "met" } else { "not met" }
                    ),
                });
            }
        }
        drop(vms);
    }

    /// `qemu-bridge view` of one paused VM whose RAM is all data, at 64 MiB, 1 GiB and 4 GiB,
    /// idle and with about 1 MiB written into its RAM per frame (through the RAM file, as a
    /// guest's vCPU would): frames per second, the server's CPU and memory, and how long a sweep
    /// over every page takes within the scan budget (half a core by default).
    fn view_scaling(&mut self) {
        let Self { results, .. } = self;
        let seconds = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0f64);
        for (label, memory) in [("64 MiB", 64u64 << 20), ("1 GiB", 1 << 30), ("4 GiB", 4 << 30)] {
            let mut lab = Lab::new();
            let vm = lab.launch_with("scale", memory);
            vm.with_qmp(|q| q.stop()).unwrap();
            let (_, info) = vm.open_bridge().unwrap();
            let ram = fill_with_data(&info.ram_path, memory);
            for writing in [false, true] {
                let writer =
                    writing.then(|| FrameWriter::start(vec![ram.try_clone().unwrap()], memory, true));
                let sample = view_sample(&lab.run_dir, 1, Duration::from_secs_f64(seconds), &[]);
                drop(writer);
                let load = if writing { "1 MiB written per frame" } else { "idle" };
                let sweep = sample.sweep_ms.map_or("-".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0));
                results.add(Row {
                    name: format!("view: one {label} VM, all data, {load} (fingerprints)"),
                    target: "60 FPS".into(),
                    median: sample.fps,
                    p99: sample.fps,
                    unit: "fps",
                    baseline: None,
                    ratio: None,
                    verdict: format!(
                        "{}: CPU {:.0} % of one core, private memory {} MiB ({:.2} % of RAM), every page re-checked within {sweep}",
                        if sample.fps >= 54.0 { "met" } else { "not met" },
                        sample.cpu,
                        sample.rss >> 20,
                        sample.rss as f64 / memory as f64 * 100.0,
                    ),
                });
            }
            drop(lab);
        }
    }

    /// Snapshots at the cost of what changed: `snapshot --update` of a paused 4 GiB VM whose RAM
    /// is all data, after 1 MiB of pages was written, against a full `snapshot` of it (both to
    /// tmpfs, so that the disk does not decide); and a 64 MiB snapshot buffer refreshed after
    /// 1 MiB of writes (the specification's 60 snapshots a second).
    fn incremental(&mut self) {
        let Self { results, .. } = self;
        const MEMORY: u64 = 4 << 30;
        let mut lab = Lab::new();
        let vm = lab.launch_with("incr", MEMORY);
        vm.with_qmp(|q| q.stop()).unwrap();
        let (bridge, info) = vm.open_bridge().unwrap();
        let ram = fill_with_data(&info.ram_path, MEMORY);
        let out = tempfile::Builder::new().prefix("qb-bench-snap").tempfile_in("/dev/shm").unwrap();
        let out_path = out.path().to_str().unwrap().to_string();
        let run = |extra: &[&str]| snapshot_seconds(&lab.run_dir, &vm, &out_path, extra);
        let full = stats((0..3).map(|_| run(&[])).collect());
        run(&["--update"]); // the first update writes whole and leaves its record
        let update = stats(
            (0..5)
                .map(|stamp| {
                    dirty_a_mebibyte(&ram, MEMORY, stamp + 1);
                    run(&["--update"])
                })
                .collect(),
        );
        results.add(Row {
            name: "snapshot --update of a 4 GiB VM after 1 MiB of writes".into(),
            target: ">= 20x a full snapshot (soft-dirty); fingerprints: one read pass".into(),
            median: update.0,
            p99: update.1,
            unit: "s",
            baseline: Some(("full snapshot of the same VM".into(), full.0)),
            ratio: Some(full.0 / update.0),
            verdict: format!(
                "{:.1}x faster than a full snapshot (fingerprint way: hashes all RAM once)",
                full.0 / update.0
            ),
        });
        drop(bridge);
        // the snapshot's side record sits beside it: ours to remove too
        let _ = std::fs::remove_file(qemu_bridge::ram::record_path(out.path()));
        drop(out);
        drop(lab);

        let mut lab = Lab::new();
        let vm = lab.launch_with("buffer", 64 << 20);
        vm.with_qmp(|q| q.stop()).unwrap();
        let (bridge, info) = vm.open_bridge().unwrap();
        let ram = fill_with_data(&info.ram_path, 64 << 20);
        let mut buffer = qemu_bridge::ram::SnapshotBuffer::new(bridge.mapping()).unwrap();
        let mut stamp = 0;
        let refresh = stats(time(30, || {
            stamp += 1;
            dirty_a_mebibyte(&ram, 64 << 20, stamp);
            black_box(buffer.refresh(bridge.mapping()).unwrap());
        }));
        let copy = stats(time(30, || {
            black_box(bridge.snapshot());
        }));
        results.add(Row {
            name: "64 MiB snapshot buffer refreshed after 1 MiB of writes (SnapshotBuffer)".into(),
            target: "60 snapshots/s".into(),
            median: refresh.0,
            p99: refresh.1,
            unit: "s",
            baseline: Some(("a full copy (snapshot())".into(), copy.0)),
            ratio: Some(copy.0 / refresh.0),
            verdict: format!(
                "{}: {:.0} refreshes/s",
                if refresh.0 <= 1.0 / 60.0 { "met" } else { "not met" },
                1.0 / refresh.0
            ),
        });
        drop(lab);
    }

    /// Captures of a 1 GiB guest full of data (the fingerprint way: this host has no soft-dirty
    /// bits; `soft_dirty_inside` has the other), in process through `capture::to_file`, to
    /// /dev/shm: the pause and the whole time of `consistent` against `pause`, idle and with
    /// 1 MiB written every 16 ms; a plain snapshot with its side record against the pipelined
    /// writer alone (no record); the ELF format against raw and against QEMU's
    /// `dump-guest-memory` of the same paused guest.
    fn captures(&mut self) {
        use qemu_bridge::capture::{self, CaptureOptions, Format};
        let Self { results, .. } = self;
        // the pause of --consistent against --pause's, at 4 GiB and (the rows below too) 1 GiB
        {
            const MEMORY: u64 = 4 << 30;
            let mut lab = Lab::new();
            let vm = lab.launch_with("capture", MEMORY);
            let (bridge, info) = vm.open_bridge().unwrap();
            let ram = fill_with_data(&info.ram_path, MEMORY);
            let out = tempfile::Builder::new().prefix("qb-bench-capture").tempfile_in("/dev/shm").unwrap();
            let capture = |options: &CaptureOptions| {
                let started = Instant::now();
                let captured = capture::to_file(&vm, &bridge, &info, out.path(), options, &|_| {}).unwrap();
                (
                    started.elapsed().as_secs_f64(),
                    captured.paused_for.map_or(0.0, |paused| paused.as_secs_f64()),
                )
            };
            consistent_against_pause(results, "4 GiB", &ram, MEMORY, &capture);
            // the temporary file goes with its block; its side record is ours to remove
            let _ = std::fs::remove_file(qemu_bridge::ram::record_path(out.path()));
        }
        const MEMORY: u64 = 1 << 30;
        let mut lab = Lab::new();
        let vm = lab.launch_with("capture", MEMORY);
        let (bridge, info) = vm.open_bridge().unwrap();
        let ram = fill_with_data(&info.ram_path, MEMORY);
        let dir = tempfile::Builder::new().prefix("qb-bench-capture").tempdir_in("/dev/shm").unwrap();
        // QEMU (another user) writes its dump here too
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let out = dir.path().join("capture");
        let capture = |options: &CaptureOptions| {
            let started = Instant::now();
            let captured = capture::to_file(&vm, &bridge, &info, &out, options, &|_| {}).unwrap();
            (started.elapsed().as_secs_f64(), captured.paused_for.map_or(0.0, |paused| paused.as_secs_f64()))
        };
        consistent_against_pause(results, "1 GiB", &ram, MEMORY, &capture);
        vm.with_qmp(|q| q.stop()).unwrap();

        // the side record's cost: the same pipelined copy, with and without it
        let plain = CaptureOptions::default();
        let without = dir.path().join("without");
        let recorded = stats((0..5).map(|_| capture(&plain).0).collect());
        let bare = stats(time(5, || {
            let file = std::fs::File::create(&without).unwrap();
            black_box(
                bridge
                    .write_snapshot_hashed(&file, qemu_bridge::ram::HashAlgorithm::Blake3, &|_| {})
                    .unwrap(),
            );
            file.sync_all().unwrap();
        }));
        results.add(Row {
            name: "snapshot of 1 GiB with its side record (paused guest)".into(),
            target: "<= 1.05x the copy without one".into(),
            median: recorded.0,
            p99: recorded.1,
            unit: "s",
            baseline: Some(("the pipelined copy alone, no record".into(), bare.0)),
            ratio: Some(bare.0 / recorded.0),
            verdict: format!(
                "{}: {:.2}x the time",
                if recorded.0 <= bare.0 * 1.05 { "met" } else { "not met" },
                recorded.0 / bare.0
            ),
        });
        let elf = CaptureOptions { format: Format::Elf, ..Default::default() };
        let ours = stats((0..5).map(|_| capture(&elf).0).collect());
        let dump = dir.path().join("qemu.core");
        let qemus = stats(time(3, || common::qemu_dump(&vm, &dump)));
        results.add(Row {
            name: "snapshot --format elf of 1 GiB (paused guest)".into(),
            target: "-".into(),
            median: ours.0,
            p99: ours.1,
            unit: "s",
            baseline: Some(("QEMU's dump-guest-memory".into(), qemus.0)),
            ratio: Some(qemus.0 / ours.0),
            verdict: format!("{:.2}x the time of --format raw ({:.2} s)", ours.0 / recorded.0, recorded.0),
        });
        drop(bridge);
        drop(lab);
    }

    /// The soft-dirty way, measured where it exists: boots Debian's own kernel under TCG with
    /// this host's root shared (test-support/src/nested.rs) and runs `soft_dirty_inside` of this very
    /// binary there; its rows join this table. Everything in that VM runs under TCG, so only the
    /// ratios between its rows mean something.
    fn soft_dirty(&mut self) {
        let seconds = self.seconds;
        rows_from_inside(&mut self.results, "soft_dirty_inside", &format!("BENCH_SECONDS={seconds}"), 16384);
    }

    /// `snapshot --consistent` where the kernel keeps soft-dirty bits: boots Debian's own kernel
    /// (as [`soft_dirty`](Self::soft_dirty) does) and runs `captures_inside` there.
    fn captures_soft_dirty(&mut self) {
        // the 4 GiB guest's RAM file and its capture both in the VM's tmpfs (half its memory)
        let sizes = std::env::var("BENCH_CAPTURE_GIB").map(|gib| format!("BENCH_CAPTURE_GIB={gib}"));
        rows_from_inside(&mut self.results, "captures_inside", &sizes.unwrap_or_default(), 20480);
    }

    /// Inside the Debian-kernel VM: the pause of `snapshot --consistent` of a running 1 GiB and
    /// 4 GiB guest whose RAM is all data, with 1 MiB written through QEMU every 16 ms, by
    /// soft-dirty bits and by fingerprints, against `--pause` (paused for the whole copy).
    /// Everything here runs under TCG: the ratios mean more than the times.
    fn captures_inside(&mut self) {
        use qemu_bridge::capture::{self, CaptureOptions};
        assert!(
            qemu_bridge::ram::host_has_soft_dirty(),
            "captures_inside runs on a kernel with soft-dirty bits (captures_soft_dirty boots one)"
        );
        let Self { results, .. } = self;
        let mut add = |row: Row| {
            println!("{}", row.to_line());
            results.add(row);
        };
        // BENCH_CAPTURE_GIB=1 measures the 1 GiB guest alone (the 4 GiB rows take most of the
        // section's half hour under TCG)
        let sizes = std::env::var("BENCH_CAPTURE_GIB").unwrap_or_else(|_| "1,4".into());
        let sizes: Vec<u64> = sizes.split(',').filter_map(|gib| gib.trim().parse().ok()).collect();
        for memory in sizes.iter().map(|gib| gib << 30) {
            let label = format!("{} GiB", memory >> 30);
            let mut lab = Lab::new();
            let vm = lab.launch_with("capture", memory);
            let (bridge, info) = vm.open_bridge().unwrap();
            drop(fill_with_data(&info.ram_path, memory));
            let writer = QemuWriter::open(&info);
            let out = tempfile::Builder::new().prefix("qb-capture").tempfile_in("/dev/shm").unwrap();
            let capture = |options: &CaptureOptions| {
                let started = Instant::now();
                let captured = capture::to_file(&vm, &bridge, &info, out.path(), options, &|_| {}).unwrap();
                let paused = captured.paused_for.map_or(0.0, |paused| paused.as_secs_f64());
                (started.elapsed().as_secs_f64(), paused, captured.tracking)
            };
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let mut stamp = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        stamp += 1;
                        writer.dirty_a_mebibyte(memory, stamp);
                        std::thread::sleep(Duration::from_millis(16));
                    }
                });
                let whole = stats(
                    (0..2)
                        .map(|_| capture(&CaptureOptions { pause: true, ..Default::default() }).1)
                        .collect(),
                );
                for fingerprints in [false, true] {
                    let options = CaptureOptions { consistent: true, fingerprints, ..Default::default() };
                    let runs: Vec<(f64, f64, Option<qemu_bridge::ram::TrackingMethod>)> =
                        (0..3).map(|_| capture(&options)).collect();
                    let tracking = runs[0].2.map_or("-".to_string(), |method| method.to_string());
                    let pause = stats(runs.iter().map(|run| run.1).collect());
                    let total = stats(runs.iter().map(|run| run.0).collect());
                    let goal = if fingerprints {
                        "<= 1/4 of --pause's pause"
                    } else {
                        "< 20 ms for 4 GiB (under KVM)"
                    };
                    add(Row {
                        name: format!(
                            "guest paused by snapshot --consistent, {label} running guest, 1 MiB written every 16 ms, {tracking} (inside the Debian-kernel VM, TCG)"
                        ),
                        target: goal.into(),
                        median: pause.0,
                        p99: pause.1,
                        unit: "s",
                        baseline: Some(("--pause (paused for the whole copy)".into(), whole.0)),
                        ratio: Some(whole.0 / pause.0),
                        verdict: format!("whole capture {:.2} s; only ratios mean something under TCG", total.0),
                    });
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let _ = std::fs::remove_file(qemu_bridge::ram::record_path(out.path()));
            drop(bridge);
            drop(lab);
        }
    }

    /// Inside the Debian-kernel VM: the view of one paused VM whose RAM is all data, idle and with
    /// 1 MiB written through QEMU per frame, by soft-dirty bits and by fingerprints (the baseline,
    /// same VM, same run); `snapshot --update` after 1 MiB of such writes both ways against a
    /// full snapshot; and what a clear costs the writer: minor faults per page written.
    fn soft_dirty_inside(&mut self) {
        assert!(
            qemu_bridge::ram::host_has_soft_dirty(),
            "soft_dirty_inside runs on a kernel with soft-dirty bits (the `soft_dirty` section boots one)"
        );
        let Self { results, .. } = self;
        let seconds = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0f64);
        let mut add = |row: Row| {
            println!("{}", row.to_line());
            results.add(row);
        };
        for (label, memory) in [("64 MiB", 64u64 << 20), ("1 GiB", 1 << 30), ("4 GiB", 4 << 30)] {
            let mut lab = Lab::new();
            let vm = lab.launch_with("sd", memory);
            vm.with_qmp(|q| q.stop()).unwrap();
            let (bridge, info) = vm.open_bridge().unwrap();
            let ram = fill_with_data(&info.ram_path, memory);
            let writer = std::sync::Arc::new(QemuWriter::open(&info));
            // what the frames cost with next to no tracking: the floor of both ways' CPU
            let floor = view_sample(
                &lab.run_dir,
                1,
                Duration::from_secs_f64(seconds),
                &["--fingerprints", "--scan-budget", "0.01"],
            );
            add(Row {
                name: format!("view in the soft-dirty VM: one {label} VM, idle, frames alone (fingerprints, --scan-budget 0.01)"),
                target: "-".into(),
                median: floor.cpu,
                p99: floor.cpu,
                unit: "%",
                baseline: None,
                ratio: None,
                verdict: format!("{:.1} fps, view CPU {:.1} % of one core (TCG): taking and sending frames", floor.fps, floor.cpu),
            });
            for writing in [false, true] {
                let mut cpu_by_fingerprints = None;
                for way in ["fingerprints", "soft-dirty"] {
                    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let thread = writing.then(|| {
                        let (writer, stop) = (std::sync::Arc::clone(&writer), std::sync::Arc::clone(&stop));
                        std::thread::spawn(move || {
                            let mut stamp = 0;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                stamp += 1;
                                writer.dirty_a_mebibyte(memory, stamp);
                                std::thread::sleep(Duration::from_micros(16_667));
                            }
                        })
                    });
                    let extra: &[&str] = if way == "fingerprints" { &["--fingerprints"] } else { &[] };
                    let sample = view_sample(&lab.run_dir, 1, Duration::from_secs_f64(seconds), extra);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    if let Some(thread) = thread {
                        thread.join().unwrap();
                    }
                    assert_eq!(sample.tracking, way, "the view tracked another way than asked");
                    let load = if writing { "1 MiB written through QEMU per frame" } else { "idle" };
                    let sweep =
                        sample.sweep_ms.map_or("-".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0));
                    let baseline = cpu_by_fingerprints
                        .map(|cpu| ("view CPU by fingerprints, same VM (%)".to_string(), cpu));
                    add(Row {
                        name: format!("view in the soft-dirty VM: one {label} VM, all data, {load} ({way})"),
                        target: if way == "soft-dirty" && !writing { "< 5 % of a core".into() } else { "60 FPS".into() },
                        median: sample.cpu,
                        p99: sample.cpu,
                        unit: "%",
                        ratio: cpu_by_fingerprints.map(|cpu: f64| cpu / sample.cpu.max(0.01)),
                        baseline,
                        verdict: format!(
                            "{:.1} fps, view CPU {:.1} % of one core (TCG), private memory {} MiB ({:.2} % of RAM), writes seen within {sweep}",
                            sample.fps,
                            sample.cpu,
                            sample.rss >> 20,
                            sample.rss as f64 / memory as f64 * 100.0,
                        ),
                    });
                    cpu_by_fingerprints.get_or_insert(sample.cpu);
                }
            }
            if memory == 4 << 30 {
                Self::soft_dirty_snapshots(&mut add, &lab, &vm, &writer, memory);
            }
            drop(bridge);
            drop(ram);
            drop(lab);
        }
        // a clear costs a writer one minor fault per page it writes next, and nothing after
        let mut lab = Lab::new();
        let vm = lab.launch("faults");
        vm.with_qmp(|q| q.stop()).unwrap();
        let (bridge, info) = vm.open_bridge().unwrap();
        let writer = QemuWriter::open(&info);
        let source = qemu_bridge::ram::soft_dirty_for(info.qemu_pid, bridge.mapping()).unwrap();
        let faults = || getrusage(UsageWho::RUSAGE_SELF).unwrap().minor_page_faults() as f64;
        let pages = 4096u64;
        let write_all =
            |stamp: u64| (0..pages).for_each(|page| writer.write(&stamp.to_le_bytes(), page * 4096));
        write_all(1); // every page present in QEMU's page tables, writable
        let before = faults();
        write_all(2);
        let without_clear = (faults() - before) / pages as f64;
        source.clear().unwrap();
        let before = faults();
        write_all(3);
        let after_clear = (faults() - before) / pages as f64;
        add(Row {
            name: "what a clear costs a writer: minor faults per page written next".into(),
            target: "1 per written page per clear".into(),
            median: after_clear,
            p99: after_clear,
            unit: "faults",
            baseline: Some(("the same writes without a clear".into(), without_clear)),
            ratio: None,
            verdict: format!("{after_clear:.2} faults a page after a clear, {without_clear:.2} without (16 MiB written through QEMU's mapping)"),
        });
        drop(bridge);
        drop(lab);
    }

    /// `snapshot --update` of the 4 GiB VM after 1 MiB written through QEMU, by soft-dirty bits
    /// and by fingerprints, against a full snapshot; all to tmpfs.
    fn soft_dirty_snapshots(add: &mut impl FnMut(Row), lab: &Lab, vm: &Vm, writer: &QemuWriter, memory: u64) {
        let out = tempfile::Builder::new().prefix("qb-bench-snap").tempfile_in("/tmp").unwrap();
        let out_path = out.path().to_str().unwrap().to_string();
        let run = |extra: &[&str]| snapshot_seconds(&lab.run_dir, vm, &out_path, extra);
        let full = stats((0..3).map(|_| run(&[])).collect());
        let mut stamp = 0;
        for way in ["fingerprints", "soft-dirty"] {
            let extra: &[&str] =
                if way == "fingerprints" { &["--update", "--fingerprints"] } else { &["--update"] };
            run(extra); // written whole: the record is new
            let update = stats(
                (0..5)
                    .map(|_| {
                        stamp += 1;
                        writer.dirty_a_mebibyte(memory, stamp);
                        run(extra)
                    })
                    .collect(),
            );
            add(Row {
                name: format!(
                    "snapshot --update of a 4 GiB VM after 1 MiB of writes, in the soft-dirty VM ({way})"
                ),
                target: ">= 20x a full snapshot (soft-dirty)".into(),
                median: update.0,
                p99: update.1,
                unit: "s",
                baseline: Some(("full snapshot of the same VM".into(), full.0)),
                ratio: Some(full.0 / update.0),
                verdict: format!("{:.1}x faster than a full snapshot", full.0 / update.0),
            });
            let _ = std::fs::remove_file(qemu_bridge::ram::record_path(out.path()));
        }
    }

    /// `ls` of a fresh mount whose run directory holds four sockets that accept and never
    /// answer, beside a healthy VM: the first `ls` after mounting and the slowest of ten.
    /// Guest state of the paused Linux guest (with `-device vmcoreinfo`, so that every peer
    /// can run): `cat cpus/0/mappings`; `read_virtual` of 1 MiB in 4 KiB and in 2 MiB pages
    /// against reading the same physical bytes (already translated); drgn listing every task
    /// through our live `core`, through QEMU's own `dump-guest-memory` (the dump's writing
    /// counted) and over QMP (`drgn --qemu`, the guest read through QEMU).
    fn guest_state(&mut self) {
        use qemu_bridge::guest::GuestMemory;
        use qemu_bridge::guest::Limits;
        let Self { results, .. } = self;
        let run_dir = common::TestRunDir::new();
        let (linux, vm) = common::linux::paused_linux(&run_dir, &["-device", "vmcoreinfo"]);
        let name = linux.launched.name().to_string();
        let mount = common::TestMount::new(&run_dir, &[]);
        let mappings = mount.path(&format!("{name}/cpus/0/mappings"));
        let lines = std::fs::read_to_string(&mappings).unwrap().lines().count();
        let cat = stats(time(20, || {
            black_box(std::fs::read(&mappings).unwrap());
        }));
        results.add(Row {
            name: format!("cat cpus/0/mappings of the Linux guest ({lines} lines)"),
            target: "-".into(),
            median: cat.0,
            p99: cat.1,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: "a walk of every table of the vCPU's address space, per open".into(),
        });

        // 1 MiB of the kernel's address space, in 4 KiB pages and in a 2 MiB page, against a copy
        // of the same physical bytes
        let (bridge, info) = vm.open_bridge().unwrap();
        let vcpus = vm.vcpu_registers().unwrap();
        let paging = qemu_bridge::guest::vcpu_paging(&info.arch, &vcpus, 0, None).unwrap();
        let runs: Vec<_> = paging.page_runs(&bridge, .., Limits::default()).filter_map(Result::ok).collect();
        for page_size in [4u64 << 10, 2 << 20] {
            // 1 MiB of pages of this size, from the first runs that have them
            let mut pages = Vec::new();
            'runs: for run in runs.iter().filter(|run| run.page_size == page_size && run.va.0 >> 63 == 1) {
                let mut at = 0;
                while at < run.len {
                    let len = (run.len - at).min(page_size);
                    let gpa = qemu_bridge::guest::Gpa(run.gpa.0 + at);
                    at += len;
                    // RAM only (the kernel maps the BIOS window and devices too)
                    if bridge.read_at(gpa, &mut vec![0u8; len as usize]).is_err() {
                        continue;
                    }
                    pages.push((run.va + at - len, gpa, len));
                    if pages.iter().map(|(_, _, len)| len).sum::<u64>() >= 1 << 20 {
                        break 'runs;
                    }
                }
            }
            let total: u64 = pages.iter().map(|(_, _, len)| len).sum();
            if total < 1 << 20 {
                println!("no 1 MiB of {page_size}-byte pages in the kernel's address space: row skipped");
                continue;
            }
            // one read_virtual per stretch of consecutive addresses, as a reader would ask
            let mut spans: Vec<(Gva, u64)> = Vec::new();
            for &(va, _, len) in &pages {
                match spans.last_mut() {
                    Some((start, span)) if *start + *span == va => *span += len,
                    _ => spans.push((va, len)),
                }
            }
            let mut buffer = vec![0u8; 1 << 20];
            let virtual_read = stats(time_batched(20, 20, || {
                let mut done = 0;
                for &(va, len) in &spans {
                    let part = (len as usize).min(buffer.len() - done);
                    paging.read_virtual(&bridge, va, &mut buffer[done..done + part]).unwrap();
                    done += part;
                }
                black_box(&buffer);
            }));
            let physical_read = stats(time_batched(20, 20, || {
                let mut done = 0;
                for &(_, gpa, len) in &pages {
                    let part = (len as usize).min(buffer.len() - done);
                    bridge.read_at(gpa, &mut buffer[done..done + part]).unwrap();
                    done += part;
                }
                black_box(&buffer);
            }));
            let ratio = physical_read.0 / virtual_read.0;
            results.add(Row {
                name: format!("read_virtual of 1 MiB in {} KiB pages (kernel space)", page_size >> 10),
                target: ">= 0.8x of the physical read".into(),
                median: virtual_read.0,
                p99: virtual_read.1,
                unit: "s",
                baseline: Some(("the same physical bytes".into(), physical_read.0)),
                ratio: Some(ratio),
                verdict: if ratio >= 0.8 { "met".into() } else { "not met".into() },
            });
        }
        drop(bridge);

        // drgn, with the kernel's debug symbols, listing every task three ways
        let vmlinux = common::linux::debug_vmlinux_of(&mount.path(&format!("{name}/vmcoreinfo")));
        let drgn = |target: &[&std::ffi::OsStr]| common::linux::drgn_tasks(target, &vmlinux);
        let core = mount.path(&format!("{name}/core"));
        let mut tasks = 0;
        let ours = stats(time(5, || tasks = drgn(&["-c".as_ref(), core.as_os_str()])));
        let dump = run_dir.qemu_output("drgn.core");
        let qemus = stats(time(5, || {
            common::qemu_dump(&vm, &dump);
            assert_eq!(drgn(&["-c".as_ref(), dump.as_os_str()]), tasks);
        }));
        drop(mount);
        let socket = run_dir.path().join(format!("{name}.qmp"));
        let over_qmp = stats(time(5, || assert_eq!(drgn(&["--qemu".as_ref(), socket.as_os_str()]), tasks)));
        for (how, figure) in
            [("QEMU's dump-guest-memory, then drgn -c", qemus), ("drgn --qemu (QMP)", over_qmp)]
        {
            results.add(Row {
                name: format!("drgn lists every task ({tasks}) through our live core vs {how}"),
                target: "ours fastest".into(),
                median: ours.0,
                p99: ours.1,
                unit: "s",
                baseline: Some((how.into(), figure.0)),
                ratio: Some(figure.0 / ours.0),
                verdict: if ours.0 < figure.0 { "met".into() } else { "not met".into() },
            });
        }
    }

    /// The Linux views of a guest with 1000 processes more: the first reading of its kernel
    /// (vmcoreinfo found, kallsyms decoded, BTF parsed), `cat linux/tasks` warm, against drgn
    /// (with the kernel's debug symbols) over QMP and through our core, and against mquire on a
    /// dump of `physical` of the 6.12 guest (mquire reads kallsyms of Linux >= 6.4 only).
    fn linux_views(&mut self) {
        use common::linux::{boot_kernel, Kernel};
        use qemu_bridge::guest::linux::LinuxGuest;
        let Self { results, .. } = self;
        let run_dir = common::TestRunDir::new();
        let linux =
            boot_kernel(Kernel::Debian12, &run_dir, 512 << 20, &["-device", "vmcoreinfo"], "qb_tasks=1000");
        let name = linux.launched.name().to_string();
        let vm = qemu_bridge::Vm::existing(&run_dir.run_dir, &name).unwrap();
        vm.with_qmp(|qmp| qmp.stop()).unwrap();
        let (bridge, _) = vm.open_bridge().unwrap();
        let mut count = 0;
        let discovery = stats(time(5, || {
            let info = qemu_bridge::guest::find_vmcoreinfo(bridge.mapping()).unwrap().unwrap();
            let guest = LinuxGuest::read(info, &bridge).unwrap();
            count = guest.tasks(&bridge).unwrap().len();
        }));
        results.add(Row {
            name: format!("first reading of a Linux guest's kernel and its {count} tasks (512 MiB: vmcoreinfo found, kallsyms decoded, BTF parsed)"),
            target: "-".into(),
            median: discovery.0,
            p99: discovery.1,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: "once per boot in the mount".into(),
        });
        drop(bridge);

        let mount = common::TestMount::new(&run_dir, &[]);
        let tasks = mount.path(&format!("{name}/linux/tasks"));
        let lines = std::fs::read_to_string(&tasks).unwrap().lines().count() - 1;
        assert!(lines > 1000, "{lines} tasks");
        let warm = stats(time(20, || {
            black_box(std::fs::read(&tasks).unwrap());
        }));
        results.add(Row {
            name: format!("cat linux/tasks, {lines} tasks (warm)"),
            target: "< 20 ms".into(),
            median: warm.0,
            p99: warm.1,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: if warm.0 < 0.020 { "met".into() } else { "not met".into() },
        });

        // every process's status, and a long listing of linux/proc, as a shell runs them, against
        // cat linux/tasks run the same way (each lookup finds its process by pid)
        let shell = |command: String| {
            move || {
                let status = std::process::Command::new("sh").args(["-c", &command]).status().unwrap();
                assert!(status.success(), "{command}");
            }
        };
        let dir = mount.path(&format!("{name}/linux"));
        let tasks_by_shell = stats(time(10, shell(format!("cat {}/tasks > /dev/null", dir.display()))));
        // what FUSE itself costs for as many files: one cat of the same one-line file, as many
        // times (open, read, read to EOF, release each; no lookup, nothing generated)
        let processes = std::fs::read_dir(mount.path(&format!("{name}/linux/proc"))).unwrap().count();
        let version = format!("{}/version ", dir.display());
        let floor = stats(time(5, shell(format!("cat {} > /dev/null", version.repeat(processes)))));
        for (what, command, baseline) in [
            (
                "cat linux/proc/*/status",
                format!("cat {}/proc/*/status > /dev/null", dir.display()),
                (format!("cat of linux/version {processes} times (the FUSE floor)"), floor.0),
            ),
            (
                "ls -l linux/proc",
                format!("ls -l {}/proc > /dev/null", dir.display()),
                ("cat linux/tasks, by the same shell".into(), tasks_by_shell.0),
            ),
        ] {
            let figure = stats(time(5, shell(command)));
            results.add(Row {
                name: format!("{what}, {processes} processes (paused)"),
                target: "< 300 ms".into(),
                median: figure.0,
                p99: figure.1,
                unit: "s",
                ratio: Some(baseline.1 / figure.0),
                baseline: Some(baseline),
                verdict: if figure.0 < 0.3 { "met".into() } else { "not met".into() },
            });
        }

        // drgn lists the same tasks with the kernel's debug symbols
        let vmlinux = common::linux::debug_vmlinux_of(&mount.path(&format!("{name}/vmcoreinfo")));
        let drgn = |target: &[&std::ffi::OsStr]| common::linux::drgn_tasks(target, &vmlinux);
        let core = mount.path(&format!("{name}/core"));
        let through_core = stats(time(3, || assert!(drgn(&["-c".as_ref(), core.as_os_str()]) > 1000)));
        drop(mount);
        let socket = run_dir.path().join(format!("{name}.qmp"));
        let over_qmp = stats(time(3, || assert!(drgn(&["--qemu".as_ref(), socket.as_os_str()]) > 1000)));
        for (how, figure, goal) in
            [("drgn --qemu (QMP)", over_qmp, 10.0), ("drgn -c on our core", through_core, 1.0)]
        {
            let ratio = figure.0 / warm.0;
            results.add(Row {
                name: format!("cat linux/tasks ({lines} tasks) vs {how}"),
                target: format!(">= {goal}x faster"),
                median: warm.0,
                p99: warm.1,
                unit: "s",
                baseline: Some((how.into(), figure.0)),
                ratio: Some(ratio),
                verdict: if ratio >= goal { "met".into() } else { "not met".into() },
            });
        }
        drop(linux);

        // mquire on a dump of the 6.12 guest (it maps its snapshot: not the mount's direct-I/O files)
        let mquire = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".cargo/bin/mquire"))
            .filter(|path| path.exists())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths).map(|dir| dir.join("mquire")).find(|path| path.exists())
                })
            });
        let Some(mquire) = mquire else {
            println!("mquire not found (cargo install mquire): its row is left out");
            return;
        };
        let (linux, _vm) = common::linux::paused_kernel(Kernel::Backports, &run_dir, &[]);
        let name = linux.launched.name().to_string();
        let mount = common::TestMount::new(&run_dir, &[]);
        let dump = run_dir.qemu_output("physical.raw");
        let copied = Command::new("cp")
            .arg("--sparse=always")
            .arg(mount.path(&format!("{name}/physical")))
            .arg(&dump)
            .status()
            .unwrap();
        assert!(copied.success());
        let theirs = stats(time(3, || {
            let output = Command::new(&mquire)
                .args(["query", "-f", "json"])
                .arg(&dump)
                .arg("SELECT pid FROM tasks")
                .output()
                .unwrap();
            assert!(output.status.success(), "mquire: {}", String::from_utf8_lossy(&output.stderr));
        }));
        let ours = stats(time(3, || {
            let output = Command::new(env!("CARGO_BIN_EXE_qemu-bridge"))
                .args(["linux", &name, "ps", "--run-dir"])
                .arg(run_dir.path())
                .output()
                .unwrap();
            assert!(output.status.success());
        }));
        results.add(Row {
            name: "every task of a 6.12 guest, from nothing: qemu-bridge linux ps (live) vs mquire on a dump of physical".into(),
            target: "ours faster".into(),
            median: ours.0,
            p99: ours.1,
            unit: "s",
            baseline: Some(("mquire query 'SELECT pid FROM tasks'".into(), theirs.0)),
            ratio: Some(theirs.0 / ours.0),
            verdict: if ours.0 < theirs.0 { "met".into() } else { "not met".into() },
        });
        drop(mount);
    }

    /// A mount of 1, 10 and 100 paused 64 MiB VMs: the first `ls`, `ls -l` of every VM's
    /// directory, `cat */status`, and the daemon's memory and threads.
    fn many_vms(&mut self) {
        let Self { results, .. } = self;
        let mut lab = Lab::new();
        let mut launched = 0;
        for count in [1usize, 10, 100] {
            while launched < count {
                let vm = lab.launch(&format!("many{launched}"));
                vm.with_qmp(|q| q.stop()).unwrap();
                launched += 1;
            }
            let mountpoint = lab.mount(&[]);
            let daemon = lab.mounts.last().unwrap().1;
            let started = Instant::now();
            let listed = std::fs::read_dir(&mountpoint).unwrap().count();
            let first_ls = started.elapsed().as_secs_f64();
            let dirs: Vec<PathBuf> =
                std::fs::read_dir(&mountpoint).unwrap().map(|entry| entry.unwrap().path()).collect();
            let ls_l = stats(time(3, || {
                for dir in &dirs {
                    for entry in std::fs::read_dir(dir).unwrap() {
                        black_box(entry.unwrap().metadata().unwrap());
                    }
                }
            }));
            let statuses = stats(time(3, || {
                for dir in &dirs {
                    black_box(std::fs::read_to_string(dir.join("status")).unwrap());
                }
            }));
            let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_string())
                    .unwrap_or_default()
            };
            let (rss, threads) = (field("RssAnon:"), field("Threads:"));
            for (what, value) in [
                ("first ls", first_ls),
                ("ls -l of every VM directory", ls_l.0),
                ("cat */status", statuses.0),
            ] {
                results.add(Row {
                    name: format!("mount of {count} VMs: {what}"),
                    target: "-".into(),
                    median: value,
                    p99: value,
                    unit: "s",
                    baseline: None,
                    ratio: None,
                    verdict: format!("{listed} VMs listed; daemon private memory {rss}, {threads} threads"),
                });
            }
            assert_eq!(listed, count, "every VM in the mount");
        }
        drop(lab);
    }

    fn listing(&mut self) {
        let Self { results, lab, .. } = self;
        let mut hostile = Vec::new();
        for index in 0..4 {
            let path = lab.run_dir.path().join(format!("hostile{index}.qmp"));
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            // accepts, holds every connection and never says a word
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    held.push(stream);
                }
            });
            hostile.push(path);
        }
        let mountpoint = lab.mount(&[]);
        let ls = || {
            let start = Instant::now();
            let names = std::fs::read_dir(&mountpoint).unwrap().count();
            (start.elapsed().as_secs_f64(), names)
        };
        let (first, listed) = ls();
        let slowest = (0..10).map(|_| ls().0).fold(first, f64::max);
        results.add(Row {
            name: "ls of a new mount with 4 hostile sockets (max of 10)".into(),
            target: "< 100 ms".into(),
            median: first,
            p99: slowest,
            unit: "s",
            baseline: None,
            ratio: None,
            verdict: format!(
                "{}: {listed} VMs listed on the first call",
                if slowest < 0.1 { "met" } else { "not met" }
            ),
        });
        for path in hostile {
            let _ = std::fs::remove_file(path);
        }
    }

    /// What reading costs by RAM kind: a 4 GiB VM that touched little of its RAM, read whole
    /// through the mount (time and bytes the RAM file gained) against `dd` of the RAM file; and
    /// private RAM (`process_vm_readv`) against a shared mapping, 64 MiB each.
    fn idle_and_private(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Self { results, lab, bridge, snapshot, .. } = self;
        let idle = lab.launch_with("idle", 4 << 30);
        idle.with_qmp(|q| q.stop()).unwrap();
        let info = idle.info().unwrap();
        let allocated = || std::fs::metadata(&info.ram_path).unwrap().blocks() * 512;
        let mountpoint = lab.mount(&[]);
        let dd = |path: &Path| -> f64 {
            let start = Instant::now();
            let status = Command::new("dd")
                .arg(format!("if={}", path.display()))
                .args(["of=/dev/null", "bs=1M", "status=none"])
                .status()
                .unwrap();
            assert!(status.success());
            start.elapsed().as_secs_f64()
        };
        let before = allocated();
        let direct = dd(&info.ram_path);
        let through_mount = dd(&mountpoint.join(info.name.as_str()).join("ram"));
        let grown = allocated().saturating_sub(before);
        results.add(Row {
            name: "dd of a 4 GiB idle VM's ram through the mount".into(),
            target: "allocates nothing".into(),
            median: through_mount,
            p99: through_mount,
            unit: "s",
            baseline: Some(("dd of the RAM file".into(), direct)),
            ratio: Some(direct / through_mount),
            verdict: format!("RAM file allocated {} MiB before, +{} MiB after", before >> 20, grown >> 20),
        });
        let private = lab.start_private("private");
        let (private_bridge, _) = private.open_bridge().unwrap();
        let mut private_buffer = vec![0u8; RAM];
        private_bridge.snapshot_into(&mut private_buffer).unwrap();
        let copied = stats(time(20, || private_bridge.snapshot_into(&mut private_buffer).unwrap()));
        let mapped = stats(time(20, || bridge.snapshot_into(snapshot).unwrap()));
        results.add(Row {
            name: "private RAM 64 MiB copy (process_vm_readv)".into(),
            target: "-".into(),
            median: copied.0,
            p99: copied.1,
            unit: "s",
            baseline: Some(("shared file mapping".into(), mapped.0)),
            ratio: Some(mapped.0 / copied.0),
            verdict: "-".into(),
        });
    }
}
