//! Per-VM resource limits through the host's cgroups: QEMU runs in a cgroup of its own with a
//! memory limit and a CPU quota.
//!
//! Each controller is taken from the hierarchy that has it: cgroup v2 when the unified
//! hierarchy offers it, v1 otherwise (a controller is bound to one hierarchy at a time, so a
//! host can mix both: memory and cpu in v1 next to a v2 mount holding only hugetlb). No systemd
//! is involved; directories are made and files written directly, which needs root or a
//! delegated subtree.
//!
//! The VM's cgroup is made below the launcher's own cgroup (`<own>/qemu-bridge/<vm>-<id>`), so
//! the VM stays inside whatever limits the launcher itself lives under. cgroup v2 forbids
//! enabling controllers below a cgroup that holds processes (other than the root), so for v2
//! the hierarchy's root is tried when the launcher's own cgroup refuses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CPU bandwidth period (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Directory below the launcher's cgroup that holds the VMs' cgroups.
pub const PARENT_NAME: &str = "qemu-bridge";

/// Limits for one VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes for QEMU: guest RAM it has touched (the shared file's pages are
    /// charged to the cgroup that first touches them) plus QEMU's own memory. Swap is not
    /// limited.
    pub max_memory: Option<u64>,
    /// CPU time in percent of one CPU (100 = one core, 150 = one and a half) per 100 ms period.
    pub cpu_quota_percent: Option<u32>,
}

impl Limits {
    /// Whether no limit is asked for.
    pub fn is_empty(&self) -> bool {
        self.max_memory.is_none() && self.cpu_quota_percent.is_none()
    }

    fn controllers(&self) -> Vec<Controller> {
        let mut controllers = Vec::new();
        if self.max_memory.is_some() {
            controllers.push(Controller::Memory);
        }
        if self.cpu_quota_percent.is_some() {
            controllers.push(Controller::Cpu);
        }
        controllers
    }
}

/// The cgroup controllers qemu-bridge sets limits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// `memory`: [`Limits::max_memory`].
    Memory,
    /// `cpu`: [`Limits::cpu_quota_percent`].
    Cpu,
}

impl Controller {
    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }

    /// The file that holds the limit in a cgroup of `version`.
    fn limit_file(self, version: Version) -> &'static str {
        match (self, version) {
            (Controller::Memory, Version::V2) => "memory.max",
            (Controller::Memory, Version::V1) => "memory.limit_in_bytes",
            (Controller::Cpu, Version::V2) => "cpu.max",
            (Controller::Cpu, Version::V1) => "cpu.cfs_quota_us",
        }
    }
}

impl std::fmt::Display for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of `/proc/<pid>/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The controllers of a v1 hierarchy (comma-separated in the file); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup path.
    pub path: String,
}

impl Membership {
    /// Parses the text of `/proc/<pid>/cgroup`; malformed lines are skipped.
    pub fn parse_all(text: &str) -> Vec<Membership> {
        text.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, listed, path) = (parts.next()?, parts.next()?, parts.next()?);
                let controllers = listed.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
                Some(Membership { controllers, path: path.to_string() })
            })
            .collect()
    }

    /// Whether this line is about the hierarchy of `version` that has any of `controllers`
    /// (v2: the line with no controllers listed).
    fn is_in(&self, version: Version, controllers: &[String]) -> bool {
        match version {
            Version::V2 => self.controllers.is_empty(),
            Version::V1 => self.controllers.iter().any(|c| controllers.contains(c)),
        }
    }
}

/// Parses a CPU quota: percent of one CPU, `50%` or `50` (at least 1, as the kernel's smallest
/// quota is 1 ms per 100 ms).
///
/// # Errors
///
/// A message naming the input.
///
/// # Examples
///
/// ```
/// assert_eq!(qemu_bridge::cgroup::parse_cpu_quota("50%"), Ok(50));
/// assert_eq!(qemu_bridge::cgroup::parse_cpu_quota("150"), Ok(150));
/// assert!(qemu_bridge::cgroup::parse_cpu_quota("0%").is_err());
/// ```
pub fn parse_cpu_quota(text: &str) -> Result<u32, String> {
    let digits = text.trim().strip_suffix('%').unwrap_or(text.trim());
    match digits.parse::<u32>() {
        Ok(percent) if (1..=100_000).contains(&percent) => Ok(percent),
        _ => Err(format!(
            "invalid CPU quota {text:?}: expected a whole percentage of one CPU from 1% to 100000%, e.g. 50%"
        )),
    }
}

/// cgroup versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (or group of controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

/// Errors of making a VM's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No mounted hierarchy has the controller.
    #[error("no mounted cgroup hierarchy has the {0} controller")]
    NoController(Controller),
    /// A cgroup file or directory could not be read or written.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { what, path: path.to_path_buf(), source }
}

/// A mounted hierarchy and where this process sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    version: Version,
    /// Mount point.
    mount: PathBuf,
    /// The cgroup path the mount point shows (the mountinfo root field).
    mount_root: String,
    /// Controllers it offers.
    controllers: Vec<String>,
    /// This process's cgroup path in it (from /proc/self/cgroup).
    own: Option<String>,
}

impl Hierarchy {
    /// The directory of cgroup `path`, if the mount shows it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let root = self.mount_root.trim_end_matches('/');
        let relative = path.strip_prefix(root)?;
        if !(relative.is_empty() || relative.starts_with('/')) {
            return None;
        }
        Some(self.mount.join(relative.trim_start_matches('/')))
    }

    /// Where VM cgroups may go: (cgroup path, directory) of the launcher's own cgroup, then for
    /// v2 the mount's root.
    fn parents(&self) -> Vec<(String, PathBuf)> {
        let mut parents = Vec::new();
        if let Some(own) = &self.own {
            if let Some(dir) = self.dir_of(own) {
                parents.push((own.clone(), dir));
            }
        }
        if self.version == Version::V2 || parents.is_empty() {
            let root = (self.mount_root.clone(), self.mount.clone());
            if !parents.contains(&root) {
                parents.push(root);
            }
        }
        parents
    }
}

/// The cgroup hierarchies of this host, as this process sees them.
#[derive(Debug, Clone, Default)]
pub struct Host {
    hierarchies: Vec<Hierarchy>,
}

impl Host {
    /// Reads `/proc/self/mountinfo`, `/proc/self/cgroup` and the v2 root's `cgroup.controllers`.
    ///
    /// # Errors
    ///
    /// When the `/proc` files cannot be read.
    pub fn detect() -> io::Result<Self> {
        let mounts = crate::mountinfo::read_self()?;
        let own = fs::read_to_string("/proc/self/cgroup")?;
        Ok(Self::from_mounts(&mounts, &own, |mount| {
            fs::read_to_string(mount.join("cgroup.controllers")).ok()
        }))
    }

    /// Builds the picture from the text of a mountinfo and a `/proc/<pid>/cgroup` file;
    /// `v2_controllers` reads a v2 mount's `cgroup.controllers`.
    pub fn parse(
        mountinfo: &str,
        own_cgroups: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Self {
        Self::from_mounts(&crate::mountinfo::parse(mountinfo.as_bytes()), own_cgroups, v2_controllers)
    }

    fn from_mounts(
        mounts: &[crate::mountinfo::MountEntry],
        own_cgroups: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Self {
        let memberships = Membership::parse_all(own_cgroups);
        let mut hierarchies = Vec::new();
        for mount in mounts {
            let (version, controllers) = match mount.fs_type.as_str() {
                "cgroup2" => (
                    Version::V2,
                    v2_controllers(&mount.mount_point)
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                "cgroup" => (
                    Version::V1,
                    mount
                        .super_options
                        .split(',')
                        .filter(|option| !option.starts_with("name=") && !["rw", "ro"].contains(option))
                        .map(str::to_string)
                        .collect(),
                ),
                _ => continue,
            };
            let own = memberships
                .iter()
                .find(|membership| membership.is_in(version, &controllers))
                .map(|membership| membership.path.clone());
            hierarchies.push(Hierarchy {
                version,
                mount: mount.mount_point.clone(),
                mount_root: mount.root.to_string_lossy().into_owned(),
                controllers,
                own,
            });
        }
        Self { hierarchies }
    }

    /// The hierarchy that has `controller`: v2 first (a controller in use by v1 is not offered
    /// by v2's root).
    fn with_controller(&self, controller: Controller) -> Option<&Hierarchy> {
        let offers = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller.name());
        let v2 = self.hierarchies.iter().filter(|h| h.version == Version::V2).find(offers);
        v2.or_else(|| self.hierarchies.iter().filter(|h| h.version == Version::V1).find(offers))
    }

    /// Makes a cgroup for VM `vm_name` in every hierarchy its limits need and writes the limits.
    /// On failure nothing is left behind.
    ///
    /// # Errors
    ///
    /// [`CgroupError::NoController`] when a needed controller is not mounted; I/O errors (most
    /// often permission) naming the file.
    pub fn create(&self, vm_name: &str, limits: &Limits) -> Result<VmCgroup, CgroupError> {
        let mut groups: Vec<(&Hierarchy, Vec<Controller>)> = Vec::new();
        for controller in limits.controllers() {
            let hierarchy = self.with_controller(controller).ok_or(CgroupError::NoController(controller))?;
            match groups.iter_mut().find(|(h, _)| *h == hierarchy) {
                Some((_, controllers)) => controllers.push(controller),
                None => groups.push((hierarchy, vec![controller])),
            }
        }
        let leaf = leaf_name(vm_name);
        let mut cgroup = VmCgroup { placements: Vec::new(), limits: *limits };
        for (hierarchy, controllers) in groups {
            match place(hierarchy, &controllers, &leaf, limits) {
                Ok(placement) => cgroup.placements.push(placement),
                Err(err) => {
                    cgroup.remove();
                    return Err(err);
                }
            }
        }
        Ok(cgroup)
    }
}

/// `<vm>-<unique>`: two run directories may hold VMs of the same name.
fn leaf_name(vm_name: &str) -> String {
    let safe: String = vm_name
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{:x}{:08x}", safe.trim_start_matches('.'), std::process::id(), nanos)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error("write", path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

/// Makes `<parent>/qemu-bridge/<leaf>` in `hierarchy` under the first parent that accepts it.
fn place(
    hierarchy: &Hierarchy,
    controllers: &[Controller],
    leaf: &str,
    limits: &Limits,
) -> Result<Placement, CgroupError> {
    let mut last_error = None;
    for (parent_path, parent_dir) in hierarchy.parents() {
        let intermediate = parent_dir.join(PARENT_NAME);
        let dir = intermediate.join(leaf);
        let attempt = (|| {
            if hierarchy.version == Version::V2 {
                let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
                write(&parent_dir.join("cgroup.subtree_control"), &enable.join(" "))?;
                fs::create_dir_all(&intermediate).map_err(io_error("create", &intermediate))?;
                write(&intermediate.join("cgroup.subtree_control"), &enable.join(" "))?;
            } else {
                fs::create_dir_all(&intermediate).map_err(io_error("create", &intermediate))?;
            }
            fs::create_dir(&dir).map_err(io_error("create", &dir))?;
            let placement = Placement {
                version: hierarchy.version,
                dir: dir.clone(),
                cgroup_path: format!("{}/{PARENT_NAME}/{leaf}", parent_path.trim_end_matches('/')),
                controllers: controllers.to_vec(),
            };
            if let Err(err) = placement.write_limits(limits) {
                let _ = fs::remove_dir(&dir);
                return Err(err);
            }
            Ok(placement)
        })();
        match attempt {
            Ok(placement) => return Ok(placement),
            Err(err) => {
                log::debug!("cgroup below {}: {err}", parent_dir.display());
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or(CgroupError::NoController(controllers[0])))
}

/// One cgroup directory of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its hierarchy's version.
    pub version: Version,
    /// The directory.
    pub dir: PathBuf,
    /// Its path as `/proc/<pid>/cgroup` shows it.
    pub cgroup_path: String,
    /// The controllers limited there.
    pub controllers: Vec<Controller>,
}

impl Placement {
    fn write_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        for &controller in &self.controllers {
            let value = match (controller, self.version) {
                (Controller::Memory, _) => limits.max_memory.unwrap_or(u64::MAX).to_string(),
                (Controller::Cpu, Version::V2) => format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits)),
                (Controller::Cpu, Version::V1) => {
                    write(&self.dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    cpu_quota_us(limits).to_string()
                }
            };
            write(&self.dir.join(controller.limit_file(self.version)), &value)?;
        }
        Ok(())
    }

    fn controller_names(&self) -> Vec<String> {
        self.controllers.iter().map(|c| c.name().to_string()).collect()
    }
}

fn cpu_quota_us(limits: &Limits) -> u64 {
    u64::from(limits.cpu_quota_percent.unwrap_or(100)) * CPU_PERIOD_US / 100
}

/// A VM's cgroups: one directory per hierarchy its limits use.
#[derive(Debug, Clone)]
pub struct VmCgroup {
    /// Where it is.
    pub placements: Vec<Placement>,
    /// What was asked for.
    pub limits: Limits,
}

impl VmCgroup {
    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.placements.iter().map(|p| p.dir.join("cgroup.procs")).collect()
    }

    /// The directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.placements.iter().map(|p| p.dir.clone()).collect()
    }

    /// Whether process `pid` is in every one of the VM's cgroups (per `/proc/<pid>/cgroup`).
    pub fn holds(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        let memberships = Membership::parse_all(&text);
        self.placements.iter().all(|placement| {
            let controllers = placement.controller_names();
            memberships
                .iter()
                .any(|m| m.is_in(placement.version, &controllers) && m.path == placement.cgroup_path)
        })
    }

    /// How many times the kernel's out-of-memory killer struck in the VM's memory cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.placements
            .iter()
            .filter(|p| p.controllers.contains(&Controller::Memory))
            .filter_map(|p| {
                let file = if p.version == Version::V2 { "memory.events" } else { "memory.oom_control" };
                let text = fs::read_to_string(p.dir.join(file)).ok()?;
                text.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// One line per limit, as the kernel reports it back, e.g.
    /// `memory 256 MiB (cgroup v1 /sys/fs/cgroup/memory/qemu-bridge/vm-1a2b)`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for placement in &self.placements {
            let at = format!("({} {})", placement.version, placement.dir.display());
            for &controller in &placement.controllers {
                let text = read(&placement.dir.join(controller.limit_file(placement.version))).ok();
                let value = text.map(|t| t.trim().to_string()).unwrap_or_default();
                lines.push(match controller {
                    Controller::Memory => match value.parse::<u64>() {
                        Ok(bytes) => format!("memory {} MiB {at}", bytes >> 20),
                        Err(_) => format!("memory {value} {at}"),
                    },
                    Controller::Cpu => {
                        let quota = value.split_whitespace().next().unwrap_or("").parse::<u64>().ok();
                        match quota {
                            Some(us) => format!("cpu {}% of one CPU {at}", us * 100 / CPU_PERIOD_US),
                            None => format!("cpu {value} {at}"),
                        }
                    }
                });
            }
        }
        lines
    }

    /// Removes the directories (waiting up to 2 s for exiting processes to leave them).
    pub fn remove(&self) {
        remove_dirs(&self.dirs());
    }
}

/// Removes cgroup directories, waiting up to 2 s each for exiting processes to leave them.
/// Failures are logged: a left-over empty cgroup costs nothing.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        // EBUSY while exiting processes still leave it: look again.
        let outcome =
            crate::poll::until(Duration::from_secs(2), crate::poll::INTERVAL, || match fs::remove_dir(dir) {
                Ok(()) => Some(Ok(())),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Some(Ok(())),
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => None,
                Err(err) => Some(Err(err)),
            });
        match outcome {
            Some(Ok(())) => {}
            Some(Err(err)) => log::warn!("cannot remove cgroup {}: {err}", dir.display()),
            None => log::warn!("cannot remove cgroup {}: still busy after 2 s", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's shape: memory and cpu in v1, a v2 mount with only hugetlb, the process
    /// in a memory cgroup below the root.
    const MIXED_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const MIXED_SELF: &str = "9:name=systemd:/\n4:memory:/sandbox/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn mixed_host_takes_each_controller_from_v1() {
        let host = Host::parse(MIXED_MOUNTINFO, MIXED_SELF, |_| Some("hugetlb\n".into()));
        let memory = host.with_controller(Controller::Memory).unwrap();
        assert_eq!(memory.version, Version::V1);
        assert_eq!(memory.mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            memory.parents(),
            vec![("/sandbox/abc".to_string(), PathBuf::from("/sys/fs/cgroup/memory/sandbox/abc"))]
        );
        assert_eq!(host.with_controller(Controller::Cpu).unwrap().mount, Path::new("/sys/fs/cgroup/cpu"));
        // the named systemd hierarchy offers no controller
        assert!(host
            .hierarchies
            .iter()
            .filter(|h| h.mount.ends_with("systemd"))
            .all(|h| h.controllers.is_empty()));
    }

    #[test]
    fn pure_v2_host_prefers_own_cgroup_then_root() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let host = Host::parse(mountinfo, "0::/user.slice/session-1.scope\n", |path| {
            assert_eq!(path, Path::new("/sys/fs/cgroup"));
            Some("cpuset cpu io memory pids\n".into())
        });
        let hierarchy = host.with_controller(Controller::Memory).unwrap();
        assert_eq!(hierarchy.version, Version::V2);
        assert_eq!(
            hierarchy.parents(),
            vec![
                (
                    "/user.slice/session-1.scope".to_string(),
                    PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope")
                ),
                ("/".to_string(), PathBuf::from("/sys/fs/cgroup")),
            ]
        );
    }

    #[test]
    fn mount_showing_a_subtree_maps_paths_below_it() {
        // a container that sees only /lxc/c1 of the host's hierarchy, mounted with a space
        let mountinfo = "50 40 0:30 /lxc/c1 /cg\\040mem rw - cgroup cgroup rw,memory\n";
        let host = Host::parse(mountinfo, "4:memory:/lxc/c1/inner\n", |_| None);
        let hierarchy = host.with_controller(Controller::Memory).unwrap();
        assert_eq!(hierarchy.mount, Path::new("/cg mem"));
        assert_eq!(hierarchy.parents(), vec![("/lxc/c1/inner".to_string(), PathBuf::from("/cg mem/inner"))]);
        // a path the mount does not show is not mapped onto it
        assert_eq!(hierarchy.dir_of("/lxc/c10"), None);
        assert_eq!(hierarchy.dir_of("/other"), None);
    }

    /// A v2 tree in a temporary directory: the files the kernel would take are written with the
    /// values it expects, controllers are enabled on the way down.
    #[test]
    fn v2_limits_are_written_where_the_kernel_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let mount = root.path().to_path_buf();
        let mountinfo = format!("30 23 0:26 / {} rw - cgroup2 cgroup2 rw\n", mount.display());
        fs::create_dir_all(mount.join("own")).unwrap();
        let host = Host::parse(&mountinfo, "0::/own\n", |_| Some("cpu memory".into()));
        let limits = Limits { max_memory: Some(256 << 20), cpu_quota_percent: Some(50) };
        let cgroup = host.create("vm 1", &limits).unwrap();
        assert_eq!(cgroup.placements.len(), 1, "both controllers live in the one v2 hierarchy");
        let placement = &cgroup.placements[0];
        assert!(placement.dir.starts_with(mount.join("own").join(PARENT_NAME)));
        let leaf = placement.dir.file_name().unwrap().to_string_lossy().to_string();
        assert!(leaf.starts_with("vm_1-"), "{leaf}");
        assert_eq!(placement.cgroup_path, format!("/own/{PARENT_NAME}/{leaf}"));
        assert_eq!(fs::read_to_string(mount.join("own/cgroup.subtree_control")).unwrap(), "+memory +cpu");
        assert_eq!(
            fs::read_to_string(mount.join("own").join(PARENT_NAME).join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu"
        );
        assert_eq!(fs::read_to_string(placement.dir.join("memory.max")).unwrap(), "268435456");
        assert_eq!(fs::read_to_string(placement.dir.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(cgroup.procs_files(), vec![placement.dir.join("cgroup.procs")]);
        let described = cgroup.describe();
        assert!(described[0].starts_with("memory 256 MiB (cgroup v2 "), "{described:?}");
        assert!(described[1].starts_with("cpu 50% of one CPU (cgroup v2 "), "{described:?}");
        fs::write(placement.dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cgroup.oom_kills(), 1);
    }

    #[test]
    fn a_missing_controller_is_named() {
        let limits = Limits { max_memory: None, cpu_quota_percent: Some(10) };
        assert_eq!(limits.controllers(), vec![Controller::Cpu]);
        let empty = Host::parse("", "", |_| None);
        let err = empty.create("vm", &limits).unwrap_err();
        assert_eq!(err.to_string(), "no mounted cgroup hierarchy has the cpu controller");
    }

    #[test]
    fn cpu_quota_parsing() {
        assert_eq!(parse_cpu_quota("1%"), Ok(1));
        assert_eq!(parse_cpu_quota(" 250% "), Ok(250));
        for bad in ["", "%", "0", "-5%", "1.5", "50 %x", "100001"] {
            assert!(parse_cpu_quota(bad).is_err(), "{bad:?}");
        }
    }
}
