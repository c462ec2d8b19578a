//! Stage 4: output limit, storage and checksum.
//!
//! Bytes are appended to an anonymous temporary file (so memory stays flat whatever the size
//! of the log) and folded into a running CRC32, so `len` and `checksum` are always those of
//! exactly the stored bytes. When an append would take the log past the output limit, only
//! the part up to the limit is stored (cut back to a character boundary), followed once by
//! gitlab-runner's notice; everything after is dropped.

use std::fs::File;
use std::io;

/// gitlab-runner's notice, appended once when the limit is reached.
pub(crate) fn limit_notice(limit: u64) -> String {
    format!(
        "\n\x1b[33;1mJob's log exceeded limit of {limit} bytes.\x1b[0;m\n\
         \x1b[33;1mJob execution will continue but no more output will be collected.\x1b[0;m\n"
    )
}

pub(crate) struct Store {
    file: File,
    len: u64,
    crc: crc32fast::Hasher,
    limit: u64,
    truncated: bool,
    write_errors: u64,
}

impl Store {
    pub(crate) fn new(limit: u64) -> io::Result<Store> {
        Ok(Store {
            file: tempfile::tempfile()?,
            len: 0,
            crc: crc32fast::Hasher::new(),
            limit,
            truncated: false,
            write_errors: 0,
        })
    }

    /// Append valid UTF-8 that starts on a character boundary, applying the output limit.
    pub(crate) fn append(&mut self, data: &[u8]) {
        if self.truncated || data.is_empty() {
            return;
        }
        let room = self.limit.saturating_sub(self.len);
        if data.len() as u64 <= room {
            self.persist(data);
            return;
        }
        // `room < data.len()`, so it fits in usize.
        let mut cut = room as usize;
        while cut > 0 && is_continuation(data[cut]) {
            cut -= 1;
        }
        self.persist(&data[..cut]);
        self.persist(limit_notice(self.limit).as_bytes());
        self.truncated = true;
    }

    fn persist(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match write_all_at(&self.file, data, self.len) {
            Ok(()) => {
                self.len += data.len() as u64;
                self.crc.update(data);
            }
            Err(err) => {
                // The bytes are dropped (never buffered in memory); `len` and the checksum
                // stay those of what is really stored. Log the first failure and then only
                // at powers of two so a full disk does not flood the runner's log.
                self.write_errors += 1;
                if self.write_errors.is_power_of_two() {
                    tracing::warn!(
                        error = %err,
                        failures = self.write_errors,
                        dropped = data.len(),
                        "could not store job trace output; bytes dropped"
                    );
                }
            }
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    pub(crate) fn checksum(&self) -> String {
        format!("crc32:{:08x}", self.crc.clone().finalize())
    }

    /// Up to `max` stored bytes from `offset` (empty at or past the end).
    pub(crate) fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let n = (self.len - offset).min(max as u64) as usize;
        let mut buf = vec![0u8; n];
        read_exact_at(&self.file, &mut buf, offset)?;
        Ok(buf)
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

#[cfg(unix)]
fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

// Elsewhere: seek then read/write. Callers hold the trace lock, so the position is ours.
#[cfg(not(unix))]
fn write_all_at(mut file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &Store) -> Vec<u8> {
        s.read_at(0, usize::MAX).unwrap()
    }

    #[test]
    fn stores_appends_and_reads_ranges() {
        let mut s = Store::new(u64::MAX).unwrap();
        assert_eq!(s.len(), 0);
        assert_eq!(s.checksum(), "crc32:00000000");
        s.append(b"hello ");
        s.append(b"");
        s.append(b"world");
        assert_eq!(s.len(), 11);
        assert_eq!(all(&s), b"hello world");
        assert_eq!(s.read_at(0, 5).unwrap(), b"hello");
        assert_eq!(s.read_at(6, 100).unwrap(), b"world");
        assert_eq!(s.read_at(10, 1).unwrap(), b"d");
        assert_eq!(s.read_at(11, 10).unwrap(), b"");
        assert_eq!(s.read_at(500, 10).unwrap(), b"");
        assert_eq!(s.read_at(3, 0).unwrap(), b"");
    }

    #[test]
    fn checksum_is_crc32_of_stored_bytes() {
        let mut s = Store::new(u64::MAX).unwrap();
        s.append(b"123456789");
        // The CRC-32/IEEE check value.
        assert_eq!(s.checksum(), "crc32:cbf43926");
        s.append("€ and more".as_bytes());
        let expected = format!("crc32:{:08x}", crc32fast::hash(&all(&s)));
        assert_eq!(s.checksum(), expected);
    }

    #[test]
    fn limit_exactly_reached_adds_no_notice_until_more_comes() {
        let mut s = Store::new(10).unwrap();
        s.append(b"12345");
        s.append(b"67890");
        assert_eq!(all(&s), b"1234567890");
        assert!(!s.truncated());
        s.append(b"x");
        assert!(s.truncated());
        let expected = [&b"1234567890"[..], limit_notice(10).as_bytes()].concat();
        assert_eq!(all(&s), expected);
    }

    #[test]
    fn limit_inside_an_append() {
        let mut s = Store::new(8).unwrap();
        s.append(b"12345");
        s.append(b"6789abc");
        let expected = [&b"12345678"[..], limit_notice(8).as_bytes()].concat();
        assert_eq!(all(&s), expected);
        assert_eq!(s.len(), expected.len() as u64);
    }

    #[test]
    fn limit_inside_a_multibyte_char_cuts_before_it() {
        // "€" is 3 bytes at offsets 2..5; a limit of 3 or 4 falls inside it.
        for limit in [3, 4] {
            let mut s = Store::new(limit).unwrap();
            s.append("ab€cd".as_bytes());
            let expected = [&b"ab"[..], limit_notice(limit).as_bytes()].concat();
            assert_eq!(all(&s), expected, "limit {limit}");
        }
        let mut s = Store::new(5).unwrap();
        s.append("ab€cd".as_bytes());
        assert_eq!(
            all(&s),
            ["ab€".as_bytes(), limit_notice(5).as_bytes()].concat()
        );
        // Cut at the very start of an append.
        let mut s = Store::new(2).unwrap();
        s.append(b"ab");
        s.append("€".as_bytes());
        assert_eq!(all(&s), [&b"ab"[..], limit_notice(2).as_bytes()].concat());
    }

    #[test]
    fn notice_appears_once_and_later_output_is_dropped() {
        let mut s = Store::new(4).unwrap();
        for _ in 0..10 {
            s.append(b"abcdef");
        }
        let stored = all(&s);
        let notice = limit_notice(4);
        assert_eq!(stored, [&b"abcd"[..], notice.as_bytes()].concat());
        let text = String::from_utf8(stored).unwrap();
        assert_eq!(
            text.matches("Job's log exceeded limit of 4 bytes.").count(),
            1
        );
        assert_eq!(
            s.checksum(),
            format!("crc32:{:08x}", crc32fast::hash(text.as_bytes()))
        );
    }

    #[test]
    fn zero_limit_stores_only_the_notice() {
        let mut s = Store::new(0).unwrap();
        s.append(b"x");
        assert_eq!(all(&s), limit_notice(0).as_bytes());
    }

    #[test]
    fn notice_text_matches_gitlab_runner() {
        assert_eq!(
            limit_notice(4194304),
            "\n\u{1b}[33;1mJob's log exceeded limit of 4194304 bytes.\u{1b}[0;m\n\
             \u{1b}[33;1mJob execution will continue but no more output will be collected.\u{1b}[0;m\n"
        );
    }
}
