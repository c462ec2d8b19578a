//! Stage 1: literal masking of masked CI/CD variable values.
//!
//! Every occurrence of a value is replaced by [`MASK`], with leftmost-longest semantics: the
//! match that starts first wins, and among those starting at the same byte the longest wins.
//! The result is the same however the input is split into writes.
//!
//! # Streaming: what is held back, and why that is enough
//!
//! Let `buf` be the bytes not yet emitted (a short held-back tail plus the new write) and `P`
//! the set of positions `p` where `buf[p..]` is a *proper* prefix of some value, i.e. where a
//! match could still start if more data arrived. `h = min(P)` (or `buf.len()`) is the hold
//! point. A match `[i, j)` found inside `buf` with `i < h` is final: a longer match at `i`, or
//! any match at an earlier start, would have to run past the end of `buf`, which would put its
//! start in `P`, below `h`. When the next match starts at or after `h` (or there is none),
//! `buf[..h]` is final too: nothing can start in it any more. Only `buf[h..]` is kept, which
//! is the longest suffix that is a proper prefix of a value — never a blind `max_len - 1`
//! bytes, so a slow job's output is not delayed. After a match ends past `h`, `h` is
//! recomputed from the match end.
//!
//! [`PatternSet`] holds the search automaton and the proper-prefix test; the token sanitizer
//! (stage 2) reuses it for its prefixes.

use std::io;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};

/// What a secret (or a token body) is replaced with.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// Up to this many pattern bytes a DFA is forced (fastest search; at most ~one state per
/// pattern byte, so a few MiB in the worst case). Above it the DFA could get large: let the
/// crate pick its automaton.
const DFA_MAX_PATTERN_BYTES: usize = 16 * 1024;

/// A set of literal byte patterns searched leftmost-longest, plus the "could this tail still
/// grow into a match" test that streaming needs.
pub(crate) struct PatternSet {
    ac: AhoCorasick,
    /// Deduplicated patterns in lexicographic order (for the proper-prefix test).
    sorted: Vec<Box<[u8]>>,
    /// `starts[b]`: some pattern begins with byte `b` (cheap rejection before the sorted search).
    starts: [bool; 256],
    /// Bitset over `b0 << 8 | b1`: some pattern begins with the two bytes `b0 b1`.
    pairs: Box<[u64; 1024]>,
    max_len: usize,
}

impl PatternSet {
    /// Build the set; empty patterns are ignored and duplicates removed. `None` when nothing
    /// is left to search for.
    pub(crate) fn new<I, P>(patterns: I) -> io::Result<Option<Self>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut sorted: Vec<Box<[u8]>> = patterns
            .into_iter()
            .map(|p| Box::<[u8]>::from(p.as_ref()))
            .filter(|p| !p.is_empty())
            .collect();
        sorted.sort();
        sorted.dedup();
        if sorted.is_empty() {
            return Ok(None);
        }
        let total: usize = sorted.iter().map(|p| p.len()).sum();
        let max_len = sorted.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut starts = [false; 256];
        let mut pairs = Box::new([0u64; 1024]);
        for p in &sorted {
            starts[p[0] as usize] = true;
            if let [b0, b1, ..] = **p {
                let k = pair_key(b0, b1);
                pairs[k / 64] |= 1 << (k % 64);
            }
        }

        let mut builder = AhoCorasick::builder();
        builder.match_kind(MatchKind::LeftmostLongest);
        let dfa = if total <= DFA_MAX_PATTERN_BYTES {
            builder.kind(Some(AhoCorasickKind::DFA)).build(&sorted).ok()
        } else {
            None
        };
        let ac = match dfa {
            Some(ac) => ac,
            None => builder
                .kind(None)
                .build(&sorted)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        Ok(Some(PatternSet {
            ac,
            sorted,
            starts,
            pairs,
            max_len,
        }))
    }

    /// The leftmost-longest match inside `hay[from..]`, as absolute `(start, end)`.
    #[inline]
    pub(crate) fn find(&self, hay: &[u8], from: usize) -> Option<(usize, usize)> {
        self.ac
            .find(Input::new(hay).range(from..))
            .map(|m| (m.start(), m.end()))
    }

    /// The smallest `p >= from` such that `hay[p..]` is a proper prefix of some pattern, or
    /// `hay.len()` if there is none. Only the last `max_len - 1` positions can qualify.
    pub(crate) fn hold_start(&self, hay: &[u8], from: usize) -> usize {
        let end = hay.len();
        let lo = from.max(end.saturating_sub(self.max_len - 1));
        (lo..end)
            .find(|&p| self.may_start(&hay[p..]) && self.is_proper_prefix(&hay[p..]))
            .unwrap_or(end)
    }

    /// Cheap filter for [`Self::is_proper_prefix`] on a non-empty `x`: its first one or two
    /// bytes begin some pattern.
    #[inline]
    fn may_start(&self, x: &[u8]) -> bool {
        match *x {
            [b0, b1, ..] => {
                let k = pair_key(b0, b1);
                self.pairs[k / 64] & (1 << (k % 64)) != 0
            }
            [b0] => self.starts[b0 as usize],
            [] => false,
        }
    }

    /// Some pattern is strictly longer than `x` and starts with it.
    fn is_proper_prefix(&self, x: &[u8]) -> bool {
        // In lexicographic order every pattern starting with `x` comes right after the first
        // pattern `>= x`, and `x` itself (if it is a pattern) comes first among them.
        let k = self.sorted.partition_point(|v| &**v < x);
        self.sorted[k..]
            .iter()
            .take(2)
            .any(|v| v.len() > x.len() && v.starts_with(x))
    }
}

fn pair_key(b0: u8, b1: u8) -> usize {
    (b0 as usize) << 8 | b1 as usize
}

/// Stage 1: replaces masked values by [`MASK`], streaming.
pub(crate) struct LiteralMasker {
    set: Option<PatternSet>,
    /// Held-back tail: a proper prefix of some value (shorter than the longest value).
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl LiteralMasker {
    pub(crate) fn new<I, P>(values: I) -> io::Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        Ok(LiteralMasker {
            set: PatternSet::new(values)?,
            pending: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Mask `input` (continuing the stream), appending what is final to `out`.
    pub(crate) fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(set) = &self.set else {
            out.extend_from_slice(input);
            return;
        };
        if self.pending.is_empty() {
            mask_into(set, input, false, out, &mut self.pending);
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.pending);
            self.scratch.extend_from_slice(input);
            mask_into(set, &self.scratch, false, out, &mut self.pending);
        }
    }

    /// End of stream: emit the held-back tail (still masking any value complete inside it).
    pub(crate) fn flush(&mut self, out: &mut Vec<u8>) {
        let Some(set) = &self.set else { return };
        if self.pending.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.pending);
        mask_into(set, &held, true, out, &mut self.pending);
        debug_assert!(self.pending.is_empty());
    }

    /// Bytes currently held back.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.pending.len()
    }
}

/// Mask `hay`, append the final part to `out` and store the rest in `pending`. With `eof`
/// nothing is held.
fn mask_into(set: &PatternSet, hay: &[u8], eof: bool, out: &mut Vec<u8>, pending: &mut Vec<u8>) {
    let end = hay.len();
    let hold = |from: usize| if eof { end } else { set.hold_start(hay, from) };
    let mut s = 0;
    let mut h = hold(0);
    while let Some((i, j)) = set.find(hay, s).filter(|&(i, _)| i < h) {
        out.extend_from_slice(&hay[s..i]);
        out.extend_from_slice(MASK);
        s = j;
        if h < s {
            h = hold(s);
        }
    }
    out.extend_from_slice(&hay[s..h]);
    pending.clear();
    pending.extend_from_slice(&hay[h..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{naive_mask, Rng};

    fn masker(values: &[&str]) -> LiteralMasker {
        LiteralMasker::new(values).unwrap()
    }

    /// Feed `parts` as separate writes, then flush.
    fn run(values: &[&str], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = masker(values);
        let mut out = Vec::new();
        for p in parts {
            m.write(p, &mut out);
        }
        m.flush(&mut out);
        out
    }

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!(
            run(&["hunter2"], &[b"pw=hunter2 again hunter2!"]),
            b"pw=[MASKED] again [MASKED]!"
        );
    }

    #[test]
    fn no_values_is_passthrough_and_empty_values_are_ignored() {
        assert_eq!(run(&[], &[b"abc"]), b"abc");
        assert_eq!(run(&["", ""], &[b"a", b"bc"]), b"abc");
        assert!(LiteralMasker::new([""]).unwrap().set.is_none());
    }

    #[test]
    fn overlapping_values_leftmost_wins() {
        // "abc" starts before "bcd": the leftmost match is taken and "bcd" is gone with it.
        assert_eq!(run(&["bcd", "abc"], &[b"xabcd"]), b"x[MASKED]d");
        // Overlapping occurrences of one value: non-overlapping, left to right.
        assert_eq!(run(&["aba"], &[b"ababa"]), b"[MASKED]ba");
    }

    #[test]
    fn value_that_is_prefix_of_another_longest_wins() {
        let v = ["abc", "abcdef"];
        assert_eq!(run(&v, &[b"abcdef"]), b"[MASKED]");
        assert_eq!(run(&v, &[b"abcdex"]), b"[MASKED]dex");
        // Split inside the longer value, after the shorter one is complete.
        assert_eq!(run(&v, &[b"..abcd", b"ef.."]), b"..[MASKED]..");
        assert_eq!(run(&v, &[b"..abcd", b"ex.."]), b"..[MASKED]dex..");
        assert_eq!(run(&v, &[b"..abc", b"", b"d", b"ef"]), b"..[MASKED]");
    }

    #[test]
    fn secret_split_across_two_and_three_chunks() {
        let v = ["s3cr3t-value"];
        assert_eq!(run(&v, &[b"a s3cr", b"3t-value b"]), b"a [MASKED] b");
        assert_eq!(run(&v, &[b"a s3", b"cr3t-v", b"alue b"]), b"a [MASKED] b");
        assert_eq!(run(&v, &[b"s", b"3cr3t-valu", b"e"]), b"[MASKED]");
    }

    #[test]
    fn holds_back_only_a_possible_match_prefix() {
        let mut m = masker(&["secretvalue", "xyz"]);
        let mut out = Vec::new();
        m.write(b"hello world", &mut out);
        assert_eq!(out, b"hello world", "nothing can grow into a match");
        assert_eq!(m.held(), 0);
        out.clear();
        m.write(b" and secr", &mut out);
        assert_eq!(out, b" and ");
        assert_eq!(m.held(), 4);
        out.clear();
        m.write(b"ecy", &mut out);
        assert_eq!(out, b"secrecy", "a dead prefix is released at once");
        assert_eq!(m.held(), 0);
        out.clear();
        m.write(b" x", &mut out);
        assert_eq!(out, b" ");
        assert_eq!(m.held(), 1, "'x' may start 'xyz'");
    }

    #[test]
    fn match_is_not_committed_while_an_earlier_candidate_is_open() {
        // "cd" is complete, but "abcdef" starting earlier could still complete.
        let v = ["abcdef", "cd"];
        let mut m = masker(&v);
        let mut out = Vec::new();
        m.write(b"abcd", &mut out);
        assert_eq!(out, b"");
        m.write(b"ef", &mut out);
        assert_eq!(out, b"[MASKED]");
        // When it does not complete, the inner match still applies.
        assert_eq!(run(&v, &[b"abcd", b"x"]), b"ab[MASKED]x");
        // And at flush too.
        assert_eq!(run(&v, &[b"abcd"]), b"ab[MASKED]");
    }

    #[test]
    fn flush_releases_incomplete_partial_matches() {
        let mut m = masker(&["password123"]);
        let mut out = Vec::new();
        m.write(b"xx passw", &mut out);
        assert_eq!(out, b"xx ");
        m.flush(&mut out);
        assert_eq!(out, b"xx passw");
        // After a flush the stream starts afresh.
        m.write(b"ord123", &mut out);
        assert_eq!(out, b"xx password123");
    }

    #[test]
    fn every_split_matches_one_shot_and_the_naive_reference() {
        let values = [
            "abcabd", "abc", "bcabdx", "abcdef", "cde", "zzzz", "zz-9", "q",
        ];
        let mut rng = Rng::new(7);
        let alphabet = b"abcdefzq-9 ";
        for _ in 0..300 {
            let len = rng.below(40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let expected = naive_mask(&values, &input);
            assert_eq!(run(&values, &[&input]), expected, "one shot {input:?}");
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(run(&values, &[a, b]), expected, "split {k} of {input:?}");
            }
            let mut parts = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = (rng.below(4) as usize + 1).min(rest.len());
                parts.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(run(&values, &parts), expected, "parts {parts:?}");
        }
    }

    #[test]
    fn later_candidate_after_a_match_is_still_held() {
        // "abc" is committed although "bcdxyQ" (starting inside it) is still open; after it,
        // "xy" is complete but "xyW" could still follow, so "xy" must wait.
        let v = ["abc", "bcdxyQ", "xy", "xyW"];
        let mut m = masker(&v);
        let mut out = Vec::new();
        m.write(b"abcdxy", &mut out);
        assert_eq!(out, b"[MASKED]d");
        assert_eq!(m.held(), 2);
        m.write(b"W", &mut out);
        assert_eq!(out, b"[MASKED]d[MASKED]");
        assert_eq!(run(&v, &[b"abcdxy", b"W"]), naive_mask(&v, b"abcdxyW"));
    }

    #[test]
    fn random_value_sets_over_a_tiny_alphabet() {
        // Few letters make values overlap, nest and share prefixes in every possible way.
        let mut rng = Rng::new(1234);
        for _ in 0..400 {
            let owned: Vec<String> = (0..1 + rng.below(5))
                .map(|_| {
                    let len = 1 + rng.below(5) as usize;
                    (0..len)
                        .map(|_| b"abc"[rng.below(3) as usize] as char)
                        .collect()
                })
                .collect();
            let values: Vec<&str> = owned.iter().map(String::as_str).collect();
            let len = rng.below(16) as usize;
            let input: Vec<u8> = (0..len).map(|_| b"abcx"[rng.below(4) as usize]).collect();
            let expected = naive_mask(&values, &input);
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(
                    run(&values, &[a, b]),
                    expected,
                    "{values:?} split {k} of {input:?}"
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                run(&values, &bytes),
                expected,
                "{values:?} bytewise {input:?}"
            );
        }
    }

    #[test]
    fn proper_prefix_test() {
        let set = PatternSet::new(["abc", "abcdef", "b"]).unwrap().unwrap();
        assert!(set.is_proper_prefix(b"a"));
        assert!(
            set.is_proper_prefix(b"abc"),
            "abc is a value and a prefix of abcdef"
        );
        assert!(set.is_proper_prefix(b"abcde"));
        assert!(!set.is_proper_prefix(b"abcdef"));
        assert!(!set.is_proper_prefix(b"b"));
        assert!(!set.is_proper_prefix(b"abd"));
        assert_eq!(set.hold_start(b"xxabcd", 0), 2);
        assert_eq!(set.hold_start(b"xxabcd", 3), 6);
        assert_eq!(set.hold_start(b"xxb", 0), 3);
    }
}
