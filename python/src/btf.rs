//! The index of a BTF blob for the Python drgn glue (`qemu_bridge._btf`): the library's parser
//! finds where each type's record is and indexes names and enumerators, so that Python decodes
//! only the records drgn asks for.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use qemu_bridge::guest::linux::Btf;

/// A BTF blob parsed by the library: where each type's record is, and its names.
#[pyclass(frozen, module = "qemu_bridge._native")]
pub struct BtfIndex {
    btf: Btf,
}

#[pymethods]
impl BtfIndex {
    /// Parses `blob`; `ValueError` saying what is wrong with it.
    #[new]
    fn new(py: Python<'_>, blob: &[u8]) -> PyResult<Self> {
        let btf =
            py.detach(|| Btf::parse(blob)).map_err(|err| PyValueError::new_err(format!("BTF: {err}")))?;
        Ok(Self { btf })
    }

    /// Per type id (0, `void`, included): the record's offset in the type section (u32,
    /// little-endian), its kind (one byte) and its name's offset in the string section (u32,
    /// little-endian), as three byte strings for `array('I')` and `bytes` indexing.
    fn records<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>) {
        let count = self.btf.len() + 1;
        let (mut offsets, mut kinds, mut names) =
            (Vec::with_capacity(4 * count), Vec::with_capacity(count), Vec::with_capacity(4 * count));
        for id in 0..count as u32 {
            let (offset, kind, name) = self.btf.record(id).unwrap_or((0, 0, 0));
            offsets.extend_from_slice(&offset.to_le_bytes());
            kinds.push(kind);
            names.extend_from_slice(&name.to_le_bytes());
        }
        (PyBytes::new(py, &offsets), PyBytes::new(py, &kinds), PyBytes::new(py, &names))
    }

    /// The ids of the types named `name` (any kind), in id order.
    fn named(&self, name: &str) -> Vec<u32> {
        self.btf.ids_named(name).collect()
    }

    /// `(enum id, index)` of the enumerator `name`, the lowest enum id's; `None` if there is none.
    fn enumerator(&self, name: &str) -> Option<(u32, usize)> {
        self.btf.enumerator_named(name)
    }
}
