//! Guest state: what the guest's own structures say, read out of its memory and its vCPUs.
//!
//! Everything here reads guest-physical memory through one small trait, [`GuestMemory`],
//! implemented by a live VM's RAM and by a frozen copy with its layout, so that the same code walks
//! a live guest and a snapshot. vCPU registers come from QEMU ([`VcpuRegisters`]), taken apart by what
//! each architecture is (`arch`). The bytes and registers are the guest's: code here treats them
//! as hostile input (bounded walks, capped counts, errors instead of panics).

// the architectures, page tables and the vmcoreinfo parser are the crate's own (public to the
// fuzz targets only); what a user needs of them is re-exported below
pub(crate) mod arch;
pub mod linux;
crate::internal_mod!(memory);
crate::internal_mod!(paging);
pub(crate) mod registers;
pub(crate) mod virtual_space;
crate::internal_mod!(vmcoreinfo);

pub use arch::Arch;
pub use memory::{FrozenMemory, Gpa, GuestMemory, GuestMemoryError, Gva};
pub use paging::{Level, Limit, Limits, PageRun, PageRuns, Paging, PagingError, PagingMode, Translation};
pub use registers::{parse_info_registers, Segment, VcpuRegisters};
pub use virtual_space::{mappings_text, registers_json, vcpu_paging, VcpuPagingError, VirtualSpace};
pub use vmcoreinfo::{find as find_vmcoreinfo, VmcoreInfo};
