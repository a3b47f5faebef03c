//! The kernel's loaded modules (the `modules` list of `struct module`), as `/proc/modules`
//! lists them: name, size, use count, users, state, address and taint flags, every member at
//! the offset the kernel's BTF gives. Linux 6.1's `core_layout` and 6.4's `mem[]` sizes both
//! read.

use std::fmt::Write as _;

use super::btf::Btf;
use super::reader::KernelReader;
use super::walk::list;
use super::LinuxError;
use crate::guest::memory::{GuestMemory, Gva};

/// Modules listed at most (a kernel has a few hundred).
pub const MAX_MODULES: usize = 1 << 16;
/// Users of one module listed at most.
pub const MAX_USERS: usize = 1 << 12;

/// A module's state (`enum module_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// `MODULE_STATE_LIVE`
    Live,
    /// `MODULE_STATE_COMING`: being loaded
    Loading,
    /// `MODULE_STATE_GOING`: being unloaded
    Unloading,
    /// `MODULE_STATE_UNFORMED` (not listed by the kernel), or a value no kernel writes
    Unformed(u32),
}

impl ModuleState {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => ModuleState::Live,
            1 => ModuleState::Loading,
            2 => ModuleState::Unloading,
            other => ModuleState::Unformed(other),
        }
    }

    /// The word `/proc/modules` prints.
    pub fn word(self) -> &'static str {
        match self {
            ModuleState::Live => "Live",
            ModuleState::Loading => "Loading",
            ModuleState::Unloading => "Unloading",
            ModuleState::Unformed(_) => "Unformed",
        }
    }
}

/// One loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its `struct module`'s address.
    pub address: Gva,
    /// `name`.
    pub name: String,
    /// Bytes of its code and data (every layout's size, as the kernel adds them).
    pub size: u64,
    /// Its use count (`refcnt` less the kernel's base of 1).
    pub refcount: i64,
    /// The modules that use it (`source_list`).
    pub users: Vec<String>,
    /// It has an `init` but no `exit`: it cannot be unloaded.
    pub permanent: bool,
    /// `state`.
    pub state: ModuleState,
    /// Where its code is (`core_layout.base`, or `mem[MOD_TEXT].base`).
    pub base: Gva,
    /// `taints`: the kernel's taint bits it set.
    pub taints: u64,
}

/// Where each member is, from BTF.
#[derive(Debug, Clone)]
pub(crate) struct Offsets {
    state: u64,
    list: u64,
    name: u64,
    name_len: usize,
    refcnt: u64,
    source_list: u64,
    init: u64,
    exit: u64,
    taints: u64,
    /// `(base, size)` offsets of each layout whose sizes add up (`core_layout` and
    /// `init_layout`, or every `mem[i]`); the first one's base is the module's address.
    layouts: Vec<(u64, u64)>,
    use_source_list: u64,
    use_source: u64,
}

impl Offsets {
    /// The offsets of this kernel's `module` and `module_use`.
    ///
    /// # Errors
    ///
    /// A structure or member the BTF lacks (a kernel without modules).
    pub(crate) fn from_btf(btf: &Btf) -> Result<Self, LinuxError> {
        let module = btf.struct_id("module")?;
        let of = |path| btf.offset_of(module, path).map_err(LinuxError::from);
        let layouts = if btf.has(module, "core_layout") {
            // Linux < 6.4: struct module_layout core_layout, init_layout
            vec![
                (of("core_layout.base")?, of("core_layout.size")?),
                (of("init_layout.base")?, of("init_layout.size")?),
            ]
        } else {
            // Linux >= 6.4: struct module_memory mem[MOD_MEM_NUM_TYPES], MOD_TEXT first
            let (mem, array) = btf.field(module, "mem")?;
            let count = btf.array_len(array)?.unwrap_or(0).min(64);
            let memory = btf.struct_id("module_memory")?;
            let stride = btf.size_of(memory)?;
            let (base, size) = (btf.offset_of(memory, "base")?, btf.offset_of(memory, "size")?);
            (0..u64::from(count)).map(|index| mem + index * stride).map(|at| (at + base, at + size)).collect()
        };
        let (name, name_type) = btf.field(module, "name")?;
        let module_use = btf.struct_id("module_use")?;
        Ok(Offsets {
            state: of("state")?,
            list: of("list")?,
            name,
            name_len: btf.array_len(name_type)?.unwrap_or(56).min(256) as usize,
            refcnt: of("refcnt")?,
            source_list: of("source_list")?,
            init: of("init")?,
            exit: of("exit")?,
            taints: of("taints")?,
            layouts,
            use_source_list: btf.offset_of(module_use, "source_list")?,
            use_source: btf.offset_of(module_use, "source")?,
        })
    }
}

/// Every module on the kernel's `modules` list (at `modules_head`), newest first as the kernel
/// keeps them, unformed ones left out as `/proc/modules` leaves them out.
///
/// # Errors
///
/// Types the BTF lacks (a kernel without modules), memory that cannot be read, a list that
/// loops or runs past [`MAX_MODULES`].
pub(crate) fn read<M: GuestMemory + ?Sized>(
    reader: &KernelReader<'_, M>,
    offsets: &Offsets,
    modules_head: Gva,
) -> Result<Vec<Module>, LinuxError> {
    let mut modules = Vec::new();
    for node in list(reader, modules_head, MAX_MODULES, "module list")? {
        let module = node.wrapping_sub(offsets.list);
        let at = |offset: u64| module.wrapping_add(offset);
        let state = ModuleState::from_raw(reader.u32(at(offsets.state), "module")?);
        if let ModuleState::Unformed(_) = state {
            continue;
        }
        let name = reader.c_string(at(offsets.name), offsets.name_len, "module name")?;
        let mut users = Vec::new();
        for user in list(reader, at(offsets.source_list), MAX_USERS, "module users")? {
            let source = reader.pointer(
                user.wrapping_sub(offsets.use_source_list).wrapping_add(offsets.use_source),
                "module user",
            )?;
            let user_name =
                reader.c_string(source.wrapping_add(offsets.name), offsets.name_len, "module name")?;
            users.push(printable(&user_name));
        }
        let mut size = 0u64;
        for (_, size_offset) in &offsets.layouts {
            size = size.saturating_add(u64::from(reader.u32(at(*size_offset), "module")?));
        }
        let base = match offsets.layouts.first() {
            Some((base_offset, _)) => reader.pointer(at(*base_offset), "module")?,
            None => Gva(0),
        };
        modules.push(Module {
            address: module,
            name: printable(&name),
            size,
            refcount: i64::from(reader.u32(at(offsets.refcnt), "module")? as i32) - 1,
            users,
            permanent: reader.u64(at(offsets.init), "module")? != 0
                && reader.u64(at(offsets.exit), "module")? == 0,
            state,
            base,
            taints: reader.u64(at(offsets.taints), "module")?,
        });
    }
    Ok(modules)
}

/// A guest's name as text that cannot forge lines: anything but printable ASCII becomes `?`.
fn printable(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// The taint letters a module can carry, by bit (`taint_flags` of `kernel/panic.c`).
const MODULE_TAINTS: [(u32, char); 9] =
    [(0, 'P'), (1, 'F'), (10, 'C'), (12, 'O'), (13, 'E'), (15, 'K'), (16, 'X'), (17, 'T'), (18, 'N')];

/// The modules as `/proc/modules` lists them (`m_show` of `kernel/module/procfs.c`), with their
/// real addresses (as root sees them).
pub fn text(modules: &[Module]) -> String {
    let mut text = String::new();
    for module in modules {
        let _ = write!(text, "{} {} {} ", module.name, module.size, module.refcount);
        for user in &module.users {
            let _ = write!(text, "{user},");
        }
        if module.permanent {
            text.push_str("[permanent],");
        }
        if module.users.is_empty() && !module.permanent {
            text.push('-');
        }
        let _ = write!(text, " {} 0x{:016x}", module.state.word(), module.base);
        if module.taints != 0 {
            text.push_str(" (");
            for (bit, letter) in MODULE_TAINTS {
                if module.taints & (1 << bit) != 0 {
                    text.push(letter);
                }
            }
            match module.state {
                ModuleState::Unloading => text.push('-'),
                ModuleState::Loading => text.push('+'),
                _ => {}
            }
            text.push(')');
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str) -> Module {
        Module {
            address: Gva(0),
            name: name.into(),
            size: 16384,
            refcount: 0,
            users: vec![],
            permanent: false,
            state: ModuleState::Live,
            base: Gva(0xffff_ffff_c024_d000),
            taints: 0,
        }
    }

    #[test]
    fn lines_are_those_of_proc_modules() {
        let mut users = module("libcrc32c");
        users.users = vec!["btrfs".into(), "nf_tables".into()];
        users.refcount = 2;
        let mut permanent = module("x_tables");
        permanent.permanent = true;
        let mut tainted = module("vboxdrv");
        tainted.taints = (1 << 12) | (1 << 13);
        tainted.state = ModuleState::Loading;
        assert_eq!(
            text(&[module("dummy"), users, permanent, tainted]),
            "dummy 16384 0 - Live 0xffffffffc024d000\n\
             libcrc32c 16384 2 btrfs,nf_tables, Live 0xffffffffc024d000\n\
             x_tables 16384 0 [permanent], Live 0xffffffffc024d000\n\
             vboxdrv 16384 0 - Loading 0xffffffffc024d000 (OE+)\n"
        );
    }
}
