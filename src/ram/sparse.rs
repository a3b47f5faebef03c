//! Writing sparse files: runs of zero pages become holes, so a snapshot of a mostly idle guest
//! takes the disk space of what the guest touched, not of its whole RAM.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Granularity of zero detection: a page.
use super::PAGE_SIZE as PAGE;

/// Writes at explicit positions, skipping over zeros; [`finish`](Self::finish) gives the file
/// its full length (a trailing hole included).
#[derive(Debug)]
pub struct SparseWriter<'a> {
    file: &'a File,
    position: u64,
}

impl<'a> SparseWriter<'a> {
    /// A writer that starts at byte `position` of `file`.
    pub fn at(file: &'a File, position: u64) -> Self {
        Self { file, position }
    }

    /// Where the next byte goes.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Leaves `len` bytes as a hole (or as they are).
    pub fn skip(&mut self, len: u64) {
        self.position += len;
    }

    /// Writes `data`, leaving its pages of zeros as holes.
    ///
    /// # Errors
    ///
    /// When writing fails.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut run_start = None;
        for (index, page) in data.chunks(PAGE).enumerate() {
            let zero = page.iter().all(|&byte| byte == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(index * PAGE),
                (true, Some(start)) => {
                    self.file.write_all_at(&data[start..index * PAGE], self.position + start as u64)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run_start {
            self.file.write_all_at(&data[start..], self.position + start as u64)?;
        }
        self.position += data.len() as u64;
        Ok(())
    }

    /// Extends the file to the position reached (a trailing hole is not written); returns it.
    ///
    /// # Errors
    ///
    /// When the file cannot be examined or extended.
    pub fn finish(self) -> io::Result<u64> {
        if self.file.metadata()?.len() < self.position {
            self.file.set_len(self.position)?;
        }
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_become_holes_and_the_length_is_exact() {
        let file = tempfile::tempfile().unwrap();
        let mut data = vec![0u8; 64 * PAGE];
        data[5 * PAGE + 7] = 1;
        data[40 * PAGE] = 2;
        let mut writer = SparseWriter::at(&file, 0);
        writer.write(&data).unwrap();
        writer.skip(3 * PAGE as u64);
        assert_eq!(writer.finish().unwrap(), 67 * PAGE as u64);
        let metadata = file.metadata().unwrap();
        assert_eq!(metadata.len(), 67 * PAGE as u64);
        assert!(metadata.blocks() * 512 <= 8 * PAGE as u64, "{} bytes allocated", metadata.blocks() * 512);
        let mut back = vec![0xffu8; 67 * PAGE];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back[..64 * PAGE], data[..]);
        assert!(back[64 * PAGE..].iter().all(|&b| b == 0));
    }
}
