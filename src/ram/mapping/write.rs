//! Writing a range of the mapping to a file, sparse, straight from the mapping.

use super::{BridgeError, Mapping, ReadMethod};

impl Mapping {
    /// One part's [`GuestRam::write_to`](crate::ram::GuestRam::write_to). Data goes straight from
    /// the mapping (the kernel copies; no buffer of ours, no Rust reference to live memory); on
    /// hugetlbfs through a `pread` buffer, for private RAM through a `process_vm_readv` one.
    pub(crate) fn write_to(
        &self,
        file: &std::fs::File,
        offset: usize,
        len: usize,
    ) -> Result<(), BridgeError> {
        use std::io::Seek;
        self.check_range(offset, len)?;
        self.check_file_len(offset, len)?;
        let start = (&mut &*file).stream_position().map_err(BridgeError::Write)?;
        let mut output = crate::ram::sparse::SparseWriter::at(file, start);
        for segment in self.segments(offset, len)? {
            let part = segment.end - segment.start;
            match (segment.data, self.method) {
                (false, _) => output.skip(part as u64),
                (true, ReadMethod::MappingWithHoles) => {
                    self.write_mapped(file, segment.start, part, output.position())?;
                    output.skip(part as u64);
                }
                (true, ReadMethod::Pread | ReadMethod::ProcessMemory) => {
                    let mut buffer = vec![0u8; part.min(1 << 20)];
                    let mut done = 0;
                    while done < part {
                        let chunk = (part - done).min(buffer.len());
                        self.read_copy(segment.start + done, &mut buffer[..chunk])?;
                        output.write(&buffer[..chunk]).map_err(BridgeError::Write)?;
                        done += chunk;
                    }
                }
            }
        }
        let end = output.finish().map_err(BridgeError::Write)?;
        (&mut &*file).seek(std::io::SeekFrom::Start(end)).map_err(BridgeError::Write)?;
        self.check_intact()
    }

    /// `pwrite`s `len` bytes of the mapping at `offset` to `file` at `position`.
    fn write_mapped(
        &self,
        file: &std::fs::File,
        offset: usize,
        len: usize,
        position: u64,
    ) -> Result<(), BridgeError> {
        use std::os::fd::AsRawFd;
        let mut done = 0;
        while done < len {
            let chunk = (len - done).min(1 << 30);
            // SAFETY: `offset + done + chunk <= offset + len <= self.len` (callers checked
            // the range), so the kernel reads only inside the live mapping; it reads, never
            // writes, it.
            let written = unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    self.map().as_ptr().add(offset + done).cast(),
                    chunk,
                    (position + done as u64) as libc::off_t,
                )
            };
            if written < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(BridgeError::Write(err));
            }
            if written == 0 {
                return Err(BridgeError::Write(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            done += written as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::mapped;

    #[test]
    fn write_to_puts_exactly_the_range_in_the_file() {
        let (_file, mapping, bytes) = mapped(10_000);
        let out = tempfile::tempfile().unwrap();
        mapping.write_to(&out, 123, 9000).unwrap();
        let mut written = Vec::new();
        std::io::Seek::rewind(&mut &out).unwrap();
        std::io::Read::read_to_end(&mut &out, &mut written).unwrap();
        assert_eq!(written, bytes[123..9123]);
    }
}
