//! QEMU's command line for a launch: the machine and its shared RAM file, the control files
//! in the run directory, what to boot, and the state disk.

use std::fs;
use std::io;
use std::path::Path;

use super::{LaunchOptions, Plan};
use crate::run_dir::VmPaths;

/// A value inside a QEMU option list (`-object`, `-drive`, `-name`...): commas are doubled.
fn option_value(value: &str) -> String {
    value.replace(',', ",,")
}

fn option_path(path: &Path) -> String {
    option_value(&path.display().to_string())
}

/// The image format of a disk, from its first bytes: qcow2 by its magic, raw otherwise.
fn disk_format(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let is_qcow2 =
        fs::File::open(path).and_then(|mut file| io::Read::read_exact(&mut file, &mut magic)).is_ok()
            && &magic == b"QFI\xfb";
    if is_qcow2 {
        "qcow2"
    } else {
        "raw"
    }
}

/// The QEMU command line for `options` as they are (without the binary): the user as given,
/// the state disk if asked for. [`launch`](super::launch) first resolves the user and checks
/// that the state disk can be had.
pub fn qemu_args(options: &LaunchOptions, version: (u32, u32)) -> Vec<String> {
    command_line(options, &Plan::as_asked(options), version)
}

/// The QEMU command line for `options` as `plan` decided them.
pub(super) fn command_line(options: &LaunchOptions, plan: &Plan, version: (u32, u32)) -> Vec<String> {
    let mut args = machine_args(options, &plan.paths.ram);
    args.extend(control_args(&plan.paths));
    args.extend(boot_args(options));
    if let Some(state_disk) = &plan.state_disk {
        args.extend(state_disk_args(state_disk));
    }
    if let Some(user) = plan.user.as_ref().filter(|user| *user != "root") {
        // -runas was deprecated in 9.1 in favour of -run-with user=
        if version >= (9, 1) {
            args.extend(["-run-with".into(), format!("user={user}")]);
        } else {
            args.extend(["-runas".into(), user.clone()]);
        }
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// The machine and its RAM, in the shared file `ram`.
fn machine_args(options: &LaunchOptions, ram: &Path) -> Vec<String> {
    vec![
        "-name".into(),
        option_value(options.name.as_str()),
        "-machine".into(),
        format!("{},accel={},memory-backend=ram0", options.machine.qemu_name(), options.accel.qemu_name()),
        "-m".into(),
        format!("{}M", options.memory >> 20),
        "-object".into(),
        format!("memory-backend-file,id=ram0,mem-path={},size={},share=on", option_path(ram), options.memory),
    ]
}

/// QMP socket, daemon, pidfile, no display, serial to a file.
fn control_args(paths: &VmPaths) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", option_path(&paths.socket)),
        "-daemonize".into(),
        "-pidfile".into(),
        paths.pidfile.display().to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-serial".into(),
        format!("file:{}", option_path(&paths.serial)),
    ]
}

/// Kernel, initrd, command line and disk.
fn boot_args(options: &LaunchOptions) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(kernel) = &options.kernel {
        args.extend(["-kernel".into(), kernel.display().to_string()]);
    }
    if let Some(initrd) = &options.initrd {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    if let Some(append) = &options.append {
        args.extend(["-append".into(), append.clone()]);
    }
    if let Some(drive) = &options.drive {
        args.extend(["-drive".into(), format!("file={},format={}", option_path(drive), disk_format(drive))]);
    }
    args
}

/// A block node with no device over `path`: the guest does not see it; QEMU keeps saved
/// states in it.
fn state_disk_args(path: &Path) -> Vec<String> {
    let file_node = format!("{}-file", crate::saved_state::STATE_NODE);
    vec![
        "-blockdev".into(),
        format!("driver=file,filename={},node-name={file_node}", option_path(path)),
        "-blockdev".into(),
        format!("driver=qcow2,file={file_node},node-name={}", crate::saved_state::STATE_NODE),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::launch::tests::options;

    #[test]
    fn commas_in_names_and_paths_are_doubled_for_qemu() {
        let mut options = options("a,b", "/run/x,y");
        options.drive = Some(PathBuf::from("/img,1.raw"));
        let args = qemu_args(&options, (7, 2));
        assert_eq!(args[0..2], ["-name", "a,,b"]);
        assert!(args.contains(&"unix:/run/x,,y/a,,b.qmp,server=on,wait=off".to_string()), "{args:?}");
        assert!(args.iter().any(|arg| arg.starts_with("file=/img,,1.raw,format=")), "{args:?}");
        assert!(args.iter().any(|arg| arg.contains("mem-path=/dev/shm/qemu_ram_a,,b,")), "{args:?}");
    }

    #[test]
    fn the_state_disk_is_given_to_qemu_only_when_the_launch_could_have_it() {
        let options = options("s", "/run/q");
        let blockdevs = |args: Vec<String>| args.iter().filter(|arg| *arg == "-blockdev").count();
        assert_eq!(blockdevs(qemu_args(&options, (7, 2))), 2);
        // no qemu-img, say: the launch goes on without the disk the options ask for
        let plan = Plan { state_disk: None, ..Plan::as_asked(&options) };
        assert_eq!(blockdevs(command_line(&options, &plan, (7, 2))), 0);
    }

    #[test]
    fn user_option_follows_the_qemu_version() {
        let mut options = options("u", "/run/q");
        options.user = Some("nobody".into());
        assert!(qemu_args(&options, (7, 2)).windows(2).any(|w| w == ["-runas", "nobody"]));
        assert!(qemu_args(&options, (9, 1)).windows(2).any(|w| w == ["-run-with", "user=nobody"]));
        // root is no user switch at all
        options.user = Some("root".into());
        assert!(!qemu_args(&options, (7, 2)).iter().any(|arg| arg == "-runas"));
    }
}
