//! The walks of the guest kernel's linked structures over arbitrary kernel memory: the list
//! walk (tasks, modules), the maple tree of a process's areas (Linux 6.1's layout), the pid
//! tree (a lookup by pid) and C strings. The input is mapped at the kernel's 0xffffffff81000000 by page tables of the
//! target's own; its first 16 bytes say where the list head and the tree's root are. Never a
//! panic, never a hang, never more entries than the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_bridge::guest::linux::{maple, pid, walk, KernelReader, LinuxKernel};
use qemu_bridge::guest::memory::{Gpa, GuestMemory, GuestMemoryError, Gva};
use qemu_bridge::guest::vmcoreinfo::VmcoreInfo;

const KERNEL: u64 = 0xffff_ffff_8100_0000;
const DATA: usize = 0x20_0000;

struct Ram(Vec<u8>);

impl GuestMemory for Ram {
    fn read_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let start = usize::try_from(gpa.0).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or(GuestMemoryError::NotRam { gpa, len: buf.len() })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
    // tables: PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> one 2 MiB page at DATA
    let mut ram = vec![0u8; DATA + data.len()];
    let mut put = |at: usize, value: u64| ram[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(0x1000 + 511 * 8, 0x2003);
    put(0x2000 + 510 * 8, 0x3003);
    put(0x3000 + 8 * 8, DATA as u64 | 0x83);
    ram[DATA..].copy_from_slice(data);
    let info =
        VmcoreInfo { offset: 0, text: "SYMBOL(init_top_pgt)=ffffffff80001000\nNUMBER(phys_base)=0\n".into() };
    let kernel = LinuxKernel::new(info).unwrap();
    let memory = Ram(ram);
    let in_data = |value: u64| Gva(KERNEL + value % data.len() as u64);
    let reader = KernelReader::new(&kernel, &memory);
    if let Ok(nodes) = walk::list(&reader, in_data(word(0)), 1000, "list") {
        assert!(nodes.len() <= 1000);
    }
    if let Ok(entries) = maple::entries(&reader, &maple::Layout::LINUX_6_1, word(8)) {
        // each node is visited once, and holds at most 16 entries
        assert!(entries.len() <= 16 * maple::MAX_NODES);
    }
    if let Ok(text) = reader.c_string(in_data(word(8)), 300, "string") {
        assert!(text.len() <= 300);
    }
    // the pid namespace where the list head is, the pid from the second word; a task is what
    // its first two words say
    let ids = |task: Gva| {
        Ok(((reader.u32(task, "task")? as i32, reader.u32(task.wrapping_add(4), "task")? as i32), task))
    };
    if let Ok(Some(task)) =
        pid::find_leader(&reader, &pid::Offsets::LINUX_6_1, in_data(word(0)), word(8) as i32, ids)
    {
        assert!(word(8) as i32 > 0, "{task:#x}");
    }
});
