//! The buffer protocol, both ways: [`RamView`] exports live guest RAM to Python read-only and
//! zero-copy; [`with_writable`] fills a caller's writable buffer. The binding's only `unsafe`.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use qemu_bridge::SharedMemoryBridge;

use crate::errors::{bridge_error, Error};

/// `size` bytes of live guest RAM at one guest-physical address, exported read-only (what a
/// `memoryview` of it shows). It holds the mapping, so a view outlives the `Vm` it came from.
/// It cannot be hashed: its bytes change.
#[pyclass(frozen, module = "qemu_bridge")]
pub struct RamView {
    ram: Arc<SharedMemoryBridge>,
    /// Where the bytes start in the mapping (checked against it when made).
    start: *const u8,
    size: usize,
    gpa: u64,
}

// SAFETY: `start` points into the mapping `ram` owns and keeps alive; the bytes are only ever
// read (by Python, through the read-only buffer), so sharing the pointer between threads is as
// safe as sharing the `SharedMemoryBridge` itself, which is `Send + Sync`.
unsafe impl Send for RamView {}
// SAFETY: as for `Send`: nothing is written through `start`.
unsafe impl Sync for RamView {}

impl RamView {
    /// The view of `size` bytes at `gpa`, which must be mapped RAM in one region.
    pub fn new(ram: Arc<SharedMemoryBridge>, gpa: u64, size: usize) -> PyResult<Self> {
        if size > isize::MAX as usize {
            return Err(Error::Address.message(format!("{size} bytes: too large a view")));
        }
        let start = ram.read_physical(gpa, size).map_err(bridge_error)?.as_ptr();
        Ok(Self { ram, start, size, gpa })
    }
}

#[pymethods]
impl RamView {
    /// Live memory has no stable hash (a memoryview asks its exporter).
    #[classattr]
    const __hash__: Option<Py<PyAny>> = None;

    /// # Safety
    ///
    /// Called by CPython with a `Py_buffer` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("guest RAM is exported read-only"));
        }
        let this = slf.get();
        let (start, size) = (this.start, this.size);
        // SAFETY: `view` is a valid, writable Py_buffer (CPython's contract for bf_getbuffer,
        // checked non-null above). `obj` takes a strong reference to this exporter, which owns
        // the mapping through `ram`: the pointer stays valid until CPython releases the buffer.
        // `shape` and `strides` point into the Py_buffer itself, as CPython's own exporters do.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = start.cast_mut().cast::<c_void>();
            (*view).len = size as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &raw mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &raw mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    ///
    /// Called by CPython when a buffer from `__getbuffer__` is released: nothing to free.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    /// Its first guest-physical address.
    #[getter]
    fn gpa(&self) -> u64 {
        self.gpa
    }

    fn __len__(&self) -> usize {
        self.size
    }

    fn __repr__(&self) -> String {
        format!("<qemu_bridge.RamView {} bytes at {:#x} of VM {}>", self.size, self.gpa, self.ram.vm_id())
    }
}

/// Runs `fill` on the bytes of `buffer`, a writable C-contiguous buffer of bytes.
pub fn with_writable<T>(
    buffer: &Bound<'_, PyAny>,
    fill: impl FnOnce(&mut [u8]) -> PyResult<T>,
) -> PyResult<T> {
    let buffer = PyBuffer::<u8>::get(buffer)?;
    if buffer.readonly() {
        return Err(PyBufferError::new_err("read_into needs a writable buffer (a bytearray, not bytes)"));
    }
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("read_into needs a contiguous buffer"));
    }
    // SAFETY: the buffer is writable, C-contiguous and of item type u8 (PyBuffer::<u8>::get
    // checked the format and item size), so `buf_ptr()..+len_bytes()` is valid for writes while
    // `buffer` holds it; we hold the GIL here and the slice does not outlive this call. Another
    // thread of Python may write the same buffer meanwhile (as with any readinto): bytes, no UB
    // beyond that race, which is the caller's.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) };
    fill(bytes)
}
