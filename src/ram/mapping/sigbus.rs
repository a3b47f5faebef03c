//! The SIGBUS guard. Touching a page of a shared file mapping past the file's end raises SIGBUS,
//! which would kill the process: a RAM file can be truncated under us at any time (a new QEMU
//! reusing the path does it). The size check before each copy leaves a window; this closes it.
//!
//! Every mapping registers its address range and page size. The handler, for a fault inside a
//! registered range, maps a private zero page (of the mapping's page size: a 4 KiB page cannot
//! replace part of a huge page) over the faulting page, so the access completes reading zeros,
//! marks that mapping poisoned and returns. Callers re-check after each copy and report
//! [`BridgeError::FileShrunk`](crate::ram::BridgeError::FileShrunk) instead of returning the zeros.
//!
//! The handler is process-wide: the first [`Mapping::open`](super::Mapping::open) installs it,
//! remembering the handler that was there before (std's stack-overflow reporter, or an
//! application's own). A fault outside every registered range is passed on to that handler;
//! where there was none, the default action ends the process, as it would have without us.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

const SLOTS: usize = 1024;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const CLEAN: AtomicBool = AtomicBool::new(false);
/// Start and end of each registered range; start 0 = free slot.
static STARTS: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
static PAGE_SIZES: [AtomicUsize; SLOTS] = [EMPTY; SLOTS];
static POISONED: [AtomicBool; SLOTS] = [CLEAN; SLOTS];
static INSTALL: Once = Once::new();
/// The SIGBUS disposition before ours, for faults that are not ours.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// A `sigaction` as read back from the kernel: plain data, never changed once stored.
struct Previous(libc::sigaction);

// SAFETY: `Previous` is written once before the handler is installed and only read after;
// a `sigaction` is plain data (a handler address, a mask, flags).
unsafe impl Sync for Previous {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Previous {}

/// Registers `start..start + len`, mapped in pages of `page_size` bytes; `None` when the
/// table is full or the range is empty.
pub(super) fn register(start: usize, len: usize, page_size: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    INSTALL.call_once(install);
    for slot in 0..SLOTS {
        // claim the slot by its end first, so that the handler never sees a start without
        // its end
        if ENDS[slot].compare_exchange(0, start + len, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            POISONED[slot].store(false, Ordering::Release);
            PAGE_SIZES[slot].store(page_size.max(super::PAGE_SIZE), Ordering::Release);
            STARTS[slot].store(start, Ordering::Release);
            return Some(slot);
        }
    }
    None
}

pub(super) fn unregister(slot: usize) {
    STARTS[slot].store(0, Ordering::Release);
    ENDS[slot].store(0, Ordering::Release);
}

#[inline]
pub(super) fn poisoned(slot: usize) -> bool {
    POISONED[slot].load(Ordering::Acquire)
}

fn install() {
    // SAFETY: a zeroed `sigaction` is a valid value (empty mask, no flags, SIG_DFL) that
    // the kernel overwrites with the current disposition (a null new action only reads).
    let previous = unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous);
        previous
    };
    let _ = PREVIOUS.set(Previous(previous));
    // SAFETY: as above for the zeroed value, which we then fill in; `handler` has the
    // signature SA_SIGINFO requires and only does async-signal-safe work (atomics, mmap,
    // sigaction, calling the previous handler).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            log::error!("cannot install the SIGBUS guard: {}", std::io::Error::last_os_error());
        }
    }
}

extern "C" fn handler(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGBUS
    // `si_addr` is the faulting address.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in 0..SLOTS {
        let start = STARTS[slot].load(Ordering::Acquire);
        let end = ENDS[slot].load(Ordering::Acquire);
        if start != 0 && address >= start && address < end {
            POISONED[slot].store(true, Ordering::Release);
            let page_size = PAGE_SIZES[slot].load(Ordering::Acquire);
            let page = address & !(page_size - 1);
            // SAFETY: `page` lies inside a live mapping of ours (registered until the
            // mapping is dropped), aligned to that mapping's page size (mappings start on
            // such a boundary), so MAP_FIXED replaces exactly the faulting page with a
            // private read-only zero page and the faulting load can complete. No Rust
            // reference depends on the page's contents.
            let mapped = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    page_size,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                return;
            }
            break;
        }
    }
    pass_on(signal, info, context);
}

/// A fault that is not ours (or whose page could not be replaced): what would have happened
/// without us.
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.get().map(|previous| &previous.0);
    match previous {
        Some(previous)
            if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
        {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO the kernel took `sa_sigaction` as a three-argument
                // handler when it was installed; we call it as the kernel would have.
                let chained: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                chained(signal, info, context);
            } else {
                // SAFETY: without SA_SIGINFO `sa_sigaction` is a one-argument handler.
                let chained: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                chained(signal);
            }
        }
        _ => {
            // SAFETY: restoring SIG_DFL is async-signal-safe; returning re-executes the
            // faulting access, which then ends the process with SIGBUS.
            unsafe {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::mapped;

    /// Set by the handler the chain test installs before ours.
    static EARLIER_HANDLER_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn earlier_handler(_signal: libc::c_int) {
        EARLIER_HANDLER_RAN.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run in a child process by the test below (handlers are process-wide): an application's
    /// SIGBUS handler installed before the first mapping still gets the SIGBUS signals that are
    /// not ours. Before the guard chained, such a signal killed the process.
    #[test]
    #[ignore = "run in a child process by foreign_sigbus_goes_to_the_handler_installed_before"]
    fn sigbus_chain_child() {
        if std::env::var_os("QEMU_BRIDGE_SIGBUS_CHILD").is_none() {
            return;
        }
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); `earlier_handler` is a
        // one-argument handler that only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = earlier_handler as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()), 0);
        }
        let (_file, _mapping, _) = mapped(4096);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGBUS).unwrap();
        assert!(EARLIER_HANDLER_RAN.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn foreign_sigbus_goes_to_the_handler_installed_before() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ram::mapping::sigbus::tests::sigbus_chain_child",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env("QEMU_BRIDGE_SIGBUS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{:?}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}
