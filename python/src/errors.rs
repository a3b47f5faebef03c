//! The library's errors as Python exceptions: each a subclass of the built-in a Python caller
//! would catch (`FileNotFoundError` for a VM that is not there, `PermissionError` for the trust
//! check, `TimeoutError` for a QEMU that does not answer, `ValueError` for an address that is no
//! memory...), its message the library's whole chain of causes.

use pyo3::exceptions::{PyBufferError, PyConnectionError, PyFileNotFoundError, PyOSError, PyPermissionError};
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;

use qemu_bridge::error::chain;
use qemu_bridge::guest::VcpuPagingError;
use qemu_bridge::{BridgeError, PagingError, VmError, VmInfo};

pyo3::create_exception!(
    qemu_bridge,
    NoSuchVmError,
    PyFileNotFoundError,
    "No VM of that name in the run directory."
);
pyo3::create_exception!(
    qemu_bridge,
    RefusedError,
    PyPermissionError,
    "The VM's QMP peer or RAM file failed the trust check (another user's QEMU, a file it does not hold)."
);
pyo3::create_exception!(qemu_bridge, QmpTimeoutError, PyTimeoutError, "QEMU did not answer in time.");
pyo3::create_exception!(
    qemu_bridge,
    QmpError,
    PyConnectionError,
    "QEMU could not be reached, or refused or failed a QMP command."
);
pyo3::create_exception!(
    qemu_bridge,
    AddressError,
    PyValueError,
    "An address that is no guest memory: a hole, past the end, or a virtual address the page tables do not map."
);
pyo3::create_exception!(
    qemu_bridge,
    GuestError,
    PyRuntimeError,
    "The guest's own structures could not be read: missing, unreadable or corrupt (guest memory is untrusted)."
);

/// Which exception an error becomes.
#[derive(Debug, Clone, Copy)]
pub enum Error {
    NoSuchVm,
    Refused,
    QmpTimeout,
    Qmp,
    Address,
    Guest,
    Os,
    Buffer,
}

impl Error {
    /// This exception, saying `err` and its causes.
    pub fn of(self, err: &dyn std::error::Error) -> PyErr {
        self.message(chain(err))
    }

    /// This exception, saying `text`.
    pub fn message(self, text: String) -> PyErr {
        match self {
            Error::NoSuchVm => NoSuchVmError::new_err(text),
            Error::Refused => RefusedError::new_err(text),
            Error::QmpTimeout => QmpTimeoutError::new_err(text),
            Error::Qmp => QmpError::new_err(text),
            Error::Address => AddressError::new_err(text),
            Error::Guest => GuestError::new_err(text),
            Error::Os => PyOSError::new_err(text),
            Error::Buffer => PyBufferError::new_err(text),
        }
    }
}

fn qmp_kind(err: &qemu_bridge::QmpError) -> Error {
    match err {
        qemu_bridge::QmpError::Timeout => Error::QmpTimeout,
        _ => Error::Qmp,
    }
}

fn bridge_kind(err: &BridgeError) -> Error {
    match err {
        BridgeError::InvalidAddress { .. } | BridgeError::BufferLength { .. } => Error::Address,
        BridgeError::NotMapped => Error::Buffer,
        BridgeError::PermissionDenied => Error::Refused,
        _ => Error::Os,
    }
}

/// A [`VmError`] as its exception.
pub fn vm_error(err: VmError) -> PyErr {
    let kind = match &err {
        VmError::NotFound { .. } => Error::NoSuchVm,
        VmError::InvalidName(_) => Error::Address,
        VmError::Qmp { source, .. } => qmp_kind(source),
        VmError::UntrustedPeer { .. } | VmError::Untrusted { .. } => Error::Refused,
        VmError::Ram { source, .. } => bridge_kind(source),
    };
    kind.of(&err)
}

/// A [`BridgeError`] as its exception.
pub fn bridge_error(err: BridgeError) -> PyErr {
    bridge_kind(&err).of(&err)
}

/// A [`PagingError`]: an address the tables do not map, or tables that cannot be read.
pub fn paging_error(err: PagingError) -> PyErr {
    Error::Address.of(&err)
}

/// Why a vCPU's paging could not be had.
pub fn vcpu_paging_error(info: &VmInfo, err: VcpuPagingError) -> PyErr {
    let detail = match &err {
        VcpuPagingError::Paging { source, .. } => format!(": {source}"),
        _ => String::new(),
    };
    Error::Address.message(format!("VM {}: {err}{detail}", info.name))
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("NoSuchVmError", py.get_type::<NoSuchVmError>())?;
    module.add("RefusedError", py.get_type::<RefusedError>())?;
    module.add("QmpTimeoutError", py.get_type::<QmpTimeoutError>())?;
    module.add("QmpError", py.get_type::<QmpError>())?;
    module.add("AddressError", py.get_type::<AddressError>())?;
    module.add("GuestError", py.get_type::<GuestError>())?;
    Ok(())
}
