//! Stage 2: token-prefix sanitizer.
//!
//! GitLab tokens carry well-known prefixes (`glpat-`, `glrt-`, …). Wherever a prefix appears,
//! the prefix is kept and the run of token characters (`[A-Za-z0-9._=-]`) right after it is
//! replaced by one [`MASK`]: `glpat-abc123` becomes `glpat-[MASKED]`. A prefix with nothing
//! after it is left alone.
//!
//! Prefixes are found leftmost-longest (one search for all of them, with the same hold-back
//! rule as the literal masker, see [`crate::masker`]). Once a prefix is found its run is
//! handled by a small state machine, so no byte of the run is ever held: the mask is emitted
//! on the first run byte and the following run bytes are swallowed, in this write or in the
//! next ones, until a byte outside the alphabet arrives.

use std::io;

use crate::masker::{PatternSet, MASK};

/// gitlab-runner applies at most this many prefixes (the shortest ones).
pub(crate) const MAX_TOKEN_PREFIXES: usize = 15;

/// `RUN[b]`: `b` belongs to a token body.
const RUN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-');
        i += 1;
    }
    t
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Looking for prefixes.
    Outside,
    /// A prefix was just emitted; its run has not started yet.
    AfterPrefix,
    /// Inside a run: the mask was emitted, run bytes are swallowed.
    Masking,
}

/// Stage 2: see the module doc.
pub(crate) struct TokenSanitizer {
    set: Option<PatternSet>,
    state: Run,
    /// Held-back tail (only while `state == Outside`): a proper prefix of some token prefix.
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl TokenSanitizer {
    /// `prefixes` is the final list (already deduplicated and cut to the first 15).
    pub(crate) fn new<I, P>(prefixes: I) -> io::Result<Self>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        Ok(TokenSanitizer {
            set: PatternSet::new(prefixes)?,
            state: Run::Outside,
            pending: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub(crate) fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(set) = &self.set else {
            out.extend_from_slice(input);
            return;
        };
        if self.pending.is_empty() {
            sanitize_into(set, input, false, &mut self.state, out, &mut self.pending);
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.pending);
            self.scratch.extend_from_slice(input);
            sanitize_into(
                set,
                &self.scratch,
                false,
                &mut self.state,
                out,
                &mut self.pending,
            );
        }
    }

    /// End of stream: emit the held-back partial prefix as is and forget any open run.
    pub(crate) fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(set) = &self.set {
            if !self.pending.is_empty() {
                let held = std::mem::take(&mut self.pending);
                sanitize_into(set, &held, true, &mut self.state, out, &mut self.pending);
            }
        }
        self.state = Run::Outside;
    }
}

fn sanitize_into(
    set: &PatternSet,
    hay: &[u8],
    eof: bool,
    state: &mut Run,
    out: &mut Vec<u8>,
    pending: &mut Vec<u8>,
) {
    let end = hay.len();
    let mut s = 0;
    pending.clear();
    loop {
        if *state != Run::Outside {
            let k = hay[s..]
                .iter()
                .position(|&b| !RUN[b as usize])
                .map_or(end, |n| s + n);
            if k > s && *state == Run::AfterPrefix {
                out.extend_from_slice(MASK);
                *state = Run::Masking;
            }
            s = k;
            if s == end {
                return; // the run (or the wait for it) goes on in the next write
            }
            *state = Run::Outside;
        }
        let h = if eof { end } else { set.hold_start(hay, s) };
        match set.find(hay, s) {
            Some((i, j)) if i < h => {
                out.extend_from_slice(&hay[s..j]);
                s = j;
                *state = Run::AfterPrefix;
            }
            _ => {
                out.extend_from_slice(&hay[s..h]);
                pending.extend_from_slice(&hay[h..]);
                return;
            }
        }
    }
}

/// Is `b` a token-body byte (`[A-Za-z0-9._=-]`)?
#[cfg(test)]
pub(crate) fn is_run_byte(b: u8) -> bool {
    RUN[b as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{naive_tokens, Rng};

    const DEFAULTS: &[&str] = &["glpat-", "glrt-", "glrtr-", "_gitlab_session="];

    fn run(prefixes: &[&str], parts: &[&[u8]]) -> Vec<u8> {
        let mut t = TokenSanitizer::new(prefixes).unwrap();
        let mut out = Vec::new();
        for p in parts {
            t.write(p, &mut out);
        }
        t.flush(&mut out);
        out
    }

    #[test]
    fn alphabet() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"._=-".contains(&b);
            assert_eq!(is_run_byte(b), expected, "{b}");
        }
    }

    #[test]
    fn keeps_prefix_and_masks_run() {
        assert_eq!(
            run(DEFAULTS, &[b"token glpat-abc123 end"]),
            b"token glpat-[MASKED] end"
        );
        assert_eq!(
            run(DEFAULTS, &[b"x=glpat-a.b_c=d-e/f"]),
            b"x=glpat-[MASKED]/f"
        );
        assert_eq!(
            run(DEFAULTS, &[b"Cookie: _gitlab_session=0123abcd; x"]),
            b"Cookie: _gitlab_session=[MASKED]; x"
        );
        assert_eq!(run(DEFAULTS, &[b"glpat-x"]), b"glpat-[MASKED]");
        // Prefix inside a run is part of the run.
        assert_eq!(run(DEFAULTS, &[b"glpat-glpat-x y"]), b"glpat-[MASKED] y");
        // Two tokens.
        assert_eq!(
            run(DEFAULTS, &[b"glrt-a glrtr-b"]),
            b"glrt-[MASKED] glrtr-[MASKED]"
        );
    }

    #[test]
    fn prefix_without_run_stays() {
        assert_eq!(run(DEFAULTS, &[b"glpat- x"]), b"glpat- x");
        assert_eq!(run(DEFAULTS, &[b"see glpat-"]), b"see glpat-");
        assert_eq!(run(DEFAULTS, &[b"see glpat-", b""]), b"see glpat-");
        assert_eq!(run(DEFAULTS, &[b"glpat-\n"]), b"glpat-\n");
    }

    #[test]
    fn longest_prefix_at_same_position_wins() {
        assert_eq!(run(&["gl", "glpat-"], &[b"glpat-abc"]), b"glpat-[MASKED]");
        assert_eq!(run(&["gl", "glpat-"], &[b"glx"]), b"gl[MASKED]");
        // A prefix with a non-token character: the longer one masks the secret.
        assert_eq!(
            run(&["tok", "token: "], &[b"token: s3cret"]),
            b"token: [MASKED]"
        );
    }

    #[test]
    fn complete_prefix_waits_while_a_longer_one_can_still_match() {
        // "ab" is complete, but "abc=" may follow: committing "ab" now would mask "c=x".
        let p = ["ab", "abc="];
        assert_eq!(run(&p, &[b"ab", b"c=x9 y"]), b"abc=[MASKED] y");
        assert_eq!(run(&p, &[b"ab", b"c", b"=", b"x9 y"]), b"abc=[MASKED] y");
        assert_eq!(run(&p, &[b"ab", b"cd y"]), b"ab[MASKED] y");
        assert_eq!(run(&p, &[b"ab"]), b"ab");
    }

    #[test]
    fn split_inside_prefix() {
        assert_eq!(
            run(DEFAULTS, &[b"a gl", b"pat-abc b"]),
            b"a glpat-[MASKED] b"
        );
        assert_eq!(
            run(DEFAULTS, &[b"a g", b"l", b"pa", b"t", b"-abc b"]),
            b"a glpat-[MASKED] b"
        );
        // A partial prefix that does not complete is released unchanged.
        assert_eq!(run(DEFAULTS, &[b"a glpa", b"x-abc"]), b"a glpax-abc");
    }

    #[test]
    fn split_inside_run_does_not_leak_the_tail() {
        assert_eq!(
            run(DEFAULTS, &[b"glpat-ab", b"c123 rest"]),
            b"glpat-[MASKED] rest"
        );
        assert_eq!(
            run(DEFAULTS, &[b"glpat-ab", b"c1", b"23", b" rest"]),
            b"glpat-[MASKED] rest"
        );
        // Right after the prefix.
        assert_eq!(
            run(DEFAULTS, &[b"glpat-", b"abc rest"]),
            b"glpat-[MASKED] rest"
        );
        assert_eq!(run(DEFAULTS, &[b"glpat-", b" rest"]), b"glpat- rest");
        // The run is never held back: the mask is out as soon as the run starts.
        let mut t = TokenSanitizer::new(DEFAULTS).unwrap();
        let mut out = Vec::new();
        t.write(b"glpat-ab", &mut out);
        assert_eq!(out, b"glpat-[MASKED]");
        t.write(b"cdef", &mut out);
        assert_eq!(out, b"glpat-[MASKED]");
        t.write(b"gh\n", &mut out);
        assert_eq!(out, b"glpat-[MASKED]\n");
    }

    #[test]
    fn flush_ends_a_run() {
        let mut t = TokenSanitizer::new(DEFAULTS).unwrap();
        let mut out = Vec::new();
        t.write(b"glpat-ab", &mut out);
        t.flush(&mut out);
        t.write(b"next", &mut out);
        assert_eq!(out, b"glpat-[MASKED]next");
    }

    #[test]
    fn every_split_matches_naive_reference() {
        let prefixes = ["glpat-", "glrt-", "glrtr-", "ab", "abc="];
        let words: &[&[u8]] = &[
            b"glpat-", b"glrt", b"-", b"r", b"gl", b"g", b"x9", b"ab", b"c", b"=", b" ", b"\n",
            b"/",
        ];
        let mut rng = Rng::new(11);
        for _ in 0..300 {
            let n = rng.below(12) as usize;
            let input: Vec<u8> = (0..n)
                .flat_map(|_| {
                    words[rng.below(words.len() as u64) as usize]
                        .iter()
                        .copied()
                })
                .collect();
            let expected = naive_tokens(&prefixes, &input);
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(
                    run(&prefixes, &[a, b]),
                    expected,
                    "split {k} of {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&prefixes, &bytes), expected);
        }
    }

    #[test]
    fn random_prefix_sets_over_a_tiny_alphabet() {
        let mut rng = Rng::new(99);
        for _ in 0..400 {
            let owned: Vec<String> = (0..1 + rng.below(4))
                .map(|_| {
                    let len = 1 + rng.below(4) as usize;
                    (0..len)
                        .map(|_| b"ab-"[rng.below(3) as usize] as char)
                        .collect()
                })
                .collect();
            let prefixes: Vec<&str> = owned.iter().map(String::as_str).collect();
            let len = rng.below(16) as usize;
            let input: Vec<u8> = (0..len).map(|_| b"ab- "[rng.below(4) as usize]).collect();
            let expected = naive_tokens(&prefixes, &input);
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(
                    run(&prefixes, &[a, b]),
                    expected,
                    "{prefixes:?} split {k} of {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
