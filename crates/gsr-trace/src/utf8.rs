//! Stage 3: UTF-8 repair.
//!
//! Every invalid sequence becomes U+FFFD, exactly as [`String::from_utf8_lossy`] would do on
//! the whole stream (one replacement per maximal invalid subpart). A sequence that is still
//! incomplete at the end of a write is held (at most 3 bytes) until the next write completes
//! or breaks it, or until [`Utf8Repair::flush`] turns it into U+FFFD. The output of every
//! call is therefore valid UTF-8 that starts and ends on a character boundary, which the
//! output limit relies on.

/// U+FFFD REPLACEMENT CHARACTER.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Stage 3: see the module doc.
#[derive(Default)]
pub(crate) struct Utf8Repair {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Repair {
    pub(crate) fn write(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.pending_len > 0 {
            // Finish (or break) the held sequence with at most the bytes it can still take.
            let plen = self.pending_len;
            let take = input.len().min(4 - plen);
            let mut small = [0u8; 4];
            small[..plen].copy_from_slice(&self.pending[..plen]);
            small[plen..plen + take].copy_from_slice(&input[..take]);
            let small = &small[..plen + take];
            let unit = match std::str::from_utf8(small) {
                Ok(s) => first_char_len(s),
                Err(e) if e.valid_up_to() > 0 => {
                    first_char_len(std::str::from_utf8(&small[..e.valid_up_to()]).unwrap_or(""))
                }
                Err(e) => match e.error_len() {
                    Some(n) => n,
                    None => {
                        // Still incomplete: everything available was taken.
                        self.pending[..small.len()].copy_from_slice(small);
                        self.pending_len = small.len();
                        return;
                    }
                },
            };
            if std::str::from_utf8(&small[..unit]).is_ok() {
                out.extend_from_slice(&small[..unit]);
            } else {
                out.extend_from_slice(REPLACEMENT);
            }
            // The unit always covers the held bytes (they were a valid, unfinished prefix).
            input = &input[unit - plen..];
            self.pending_len = 0;
        }
        self.write_fresh(input, out);
    }

    /// `input` starts on a character boundary.
    fn write_fresh(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let valid = match std::str::from_utf8(input) {
            Ok(_) => {
                out.extend_from_slice(input);
                return;
            }
            Err(e) => e.valid_up_to(),
        };
        out.extend_from_slice(&input[..valid]);
        let rest = &input[valid..];
        let mut done = 0;
        for chunk in rest.utf8_chunks() {
            out.extend_from_slice(chunk.valid().as_bytes());
            done += chunk.valid().len();
            let bad = chunk.invalid();
            done += bad.len();
            if bad.is_empty() {
                continue;
            }
            let at_end = done == rest.len();
            let incomplete = matches!(std::str::from_utf8(bad), Err(e) if e.error_len().is_none());
            if at_end && incomplete {
                self.pending[..bad.len()].copy_from_slice(bad);
                self.pending_len = bad.len();
            } else {
                out.extend_from_slice(REPLACEMENT);
            }
        }
    }

    /// End of stream: an unfinished sequence becomes U+FFFD.
    pub(crate) fn flush(&mut self, out: &mut Vec<u8>) {
        if self.pending_len > 0 {
            out.extend_from_slice(REPLACEMENT);
            self.pending_len = 0;
        }
    }
}

fn first_char_len(s: &str) -> usize {
    s.chars().next().map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn run(parts: &[&[u8]]) -> Vec<u8> {
        let mut u = Utf8Repair::default();
        let mut out = Vec::new();
        for p in parts {
            u.write(p, &mut out);
            assert!(
                std::str::from_utf8(&out).is_ok(),
                "each write emits valid UTF-8"
            );
        }
        u.flush(&mut out);
        out
    }

    fn lossy(b: &[u8]) -> Vec<u8> {
        String::from_utf8_lossy(b).into_owned().into_bytes()
    }

    #[test]
    fn valid_text_passes_through() {
        let s = "héllo € 😀 ok".as_bytes();
        assert_eq!(run(&[s]), s);
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        assert_eq!(run(&[b"a\xffb"]), "a\u{FFFD}b".as_bytes());
        assert_eq!(run(&[b"a\xe2\x82b"]), "a\u{FFFD}b".as_bytes());
        assert_eq!(run(&[b"\x80\x80"]), "\u{FFFD}\u{FFFD}".as_bytes());
        assert_eq!(
            run(&[b"\xed\xa0\x80"]),
            lossy(b"\xed\xa0\x80"),
            "surrogates"
        );
    }

    #[test]
    fn multibyte_split_at_every_position() {
        let s = "a€b😀c".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(run(&[&s[..i], &s[i..j], &s[j..]]), s, "{i} {j}");
            }
        }
    }

    #[test]
    fn incomplete_sequence_is_held_then_completed_or_broken() {
        let mut u = Utf8Repair::default();
        let mut out = Vec::new();
        u.write(b"x\xe2\x82", &mut out);
        assert_eq!(out, b"x", "the two bytes of '\u{20ac}' are held");
        u.write(b"\xac", &mut out);
        assert_eq!(out, "x€".as_bytes());
        out.clear();
        u.write(b"\xf0\x9f", &mut out);
        u.write(b"A", &mut out);
        assert_eq!(out, "\u{FFFD}A".as_bytes(), "broken by an ASCII byte");
        out.clear();
        u.write(b"\xe2", &mut out);
        assert_eq!(out, b"");
        u.flush(&mut out);
        assert_eq!(out, "\u{FFFD}".as_bytes(), "unfinished at flush");
    }

    #[test]
    fn random_bytes_split_randomly_match_lossy() {
        let mut rng = Rng::new(3);
        let pool: &[&[u8]] = &[
            b"a",
            b" ",
            b"\xc3\xa9",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80",
            b"\xc3",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"\x80",
            b"\xff",
            b"\xed\xa0",
            b"\xf4\x90",
        ];
        for _ in 0..500 {
            let n = rng.below(10) as usize;
            let input: Vec<u8> = (0..n)
                .flat_map(|_| pool[rng.below(pool.len() as u64) as usize].iter().copied())
                .collect();
            let expected = lossy(&input);
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(run(&[a, b]), expected, "split {k} of {input:x?}");
            }
            let ones: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&ones), expected, "bytewise {input:x?}");
        }
    }
}
