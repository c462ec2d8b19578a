//! The trace pipeline: masking, output limit, UTF-8 repair, checksum, offset-addressed storage.
//!
//! Everything a job prints, and the runner's own header and section lines, goes through one
//! [`Trace`]. The uploader reads it back by offset ([`Trace::read_at`]) to send `PATCH
//! /jobs/:id/trace` increments (protocol sheet §3.1–3.2) and reports [`Trace::len`] and
//! [`Trace::checksum`] with the final job update. Whatever is stored is exactly what GitLab
//! will show, so every protection has to happen before the bytes are stored.
//!
//! # Stages, and why in this order
//!
//! Each [`Trace::write`] runs through four streaming stages. Each stage gives the same output
//! however its input is split into writes (chunk boundaries can fall inside a secret, inside a
//! token prefix, inside a token or inside a UTF-8 sequence); it holds back only the few bytes
//! whose meaning depends on what comes next, and [`Trace::flush`] releases them.
//!
//! 1. **Literal masker** (`masker.rs`). Masked CI/CD variables must never reach GitLab: every
//!    value is replaced by `[MASKED]`, leftmost-longest. It runs first, on the raw bytes,
//!    because values are matched byte for byte as the job printed them: nothing may cut,
//!    replace or drop a byte of a secret before it has been recognised.
//! 2. **Token-prefix sanitizer** (`tokens.rs`). Tokens that are not variables (printed by a
//!    tool, read from a file) are recognised by GitLab's prefixes (`glpat-`, …; the protocol
//!    sheet §5.4): the prefix is kept and the token body becomes `[MASKED]`. After the
//!    literal masker, so that a masked value that contains a prefix is replaced whole.
//! 3. **UTF-8 repair** (`utf8.rs`). GitLab stores the trace as text; invalid sequences become
//!    U+FFFD as gitlab-runner does. After masking, so the maskers see the bytes the job really
//!    printed; before the limit, so the limit always cuts valid text at a character boundary
//!    and the stored bytes, hence the checksum, are final.
//! 4. **Output limit and storage** (`store.rs`). Past `output_limit` bytes only gitlab-runner's
//!    notice is added (once) and the rest is dropped. Masking comes before the limit, so a
//!    secret straddling the limit is masked, never partially stored. The bytes go to an
//!    anonymous temporary file with a running CRC32, so memory stays flat whatever the size
//!    of the log.
//!
//! Large writes are processed in pieces of at most 64 KiB, so every buffer is bounded by a
//! small multiple of that plus the longest masked value.
//!
//! [`Trace::flush`] ends the stream for every stage: a secret or token prefix split across a
//! flush is not recognised, so call it only where output really ends (end of a step, end of
//! the job), never on a timer.
//!
//! Compared with gitlab-runner (which chains one writer per value and per prefix), matching
//! here is a single leftmost-longest pass per stage: the result does not depend on value
//! order, and of two prefixes starting at the same byte the longer one applies. gitlab-runner's
//! URL-parameter sanitizer (`?private_token=…`) and timestamps are not part of this crate.
//!
//! # Layout
//!
//! - `lib.rs`: [`TraceConfig`], [`Trace`] (the lock, the pipeline glue), the prefix list.
//! - `masker.rs`: stage 1, and `PatternSet`, the leftmost-longest search with the streaming
//!   hold-back rule shared with stage 2 (the correctness argument is in its module doc).
//! - `tokens.rs`: stage 2 (prefix search plus a run state machine).
//! - `utf8.rs`: stage 3.
//! - `store.rs`: stage 4 (limit, notice, temp file, CRC32, reads by offset).
//! - `benches/trace.rs`, `examples/throughput.rs`: throughput of [`Trace::write`].

mod masker;
mod store;
mod tokens;
mod utf8;

use std::io;
use std::sync::{Mutex, MutexGuard};

use masker::LiteralMasker;
use store::Store;
use tokens::{TokenSanitizer, MAX_TOKEN_PREFIXES};
use utf8::Utf8Repair;

/// gitlab-runner's default `output_limit` (4096 KiB).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// Writes are cut into pieces of at most this size before they go through the stages.
const PIECE: usize = 64 * 1024;

/// GitLab's token prefixes masked by default (gitlab-runner with `FF_MASK_ALL_DEFAULT_TOKENS`,
/// which defaults to true).
pub fn default_token_prefixes() -> Vec<&'static str> {
    vec![
        "glpat-",
        "gloas-",
        "gldt-",
        "glrt-",
        "glcbt-",
        "glrtr-",
        "glptt-",
        "glft-",
        "glimt-",
        "glagent-",
        "glsoat-",
        "glffct-",
        "_gitlab_session=",
        "gltok-",
    ]
}

/// What a [`Trace`] masks and how much it keeps.
#[derive(Clone)]
pub struct TraceConfig {
    /// Literal values replaced by `[MASKED]` (masked variables). Empty values are ignored.
    pub masked_values: Vec<String>,
    /// Extra token prefixes from the job (`features.token_mask_prefixes`), added to
    /// [`default_token_prefixes`].
    pub token_prefixes: Vec<String>,
    /// Maximum stored log size in bytes, before the limit notice.
    pub output_limit: u64,
}

impl TraceConfig {
    /// The given masked values, no extra prefixes, the default output limit.
    pub fn new(masked_values: Vec<String>) -> Self {
        TraceConfig {
            masked_values,
            token_prefixes: Vec::new(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }
}

impl std::fmt::Debug for TraceConfig {
    // Masked values are secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceConfig")
            .field("masked_values", &self.masked_values.len())
            .field("token_prefixes", &self.token_prefixes)
            .field("output_limit", &self.output_limit)
            .finish()
    }
}

/// The prefixes actually applied: defaults plus the job's, empty ones dropped, deduplicated,
/// shortest first, only the first 15 (as gitlab-runner does).
fn effective_token_prefixes(job: &[String]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = default_token_prefixes()
        .into_iter()
        .map(|p| p.as_bytes().to_vec())
        .chain(job.iter().map(|p| p.as_bytes().to_vec()))
        .filter(|p| !p.is_empty())
        .collect();
    all.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    all.dedup();
    all.truncate(MAX_TOKEN_PREFIXES);
    all
}

/// One job's log: masking, UTF-8 repair, output limit, storage. See the crate doc.
///
/// `Send + Sync`: all state is behind one lock, so writers (the executor's output reader, the
/// worker's own lines) and the uploader's reads can come from any thread.
pub struct Trace {
    inner: Mutex<Inner>,
}

struct Inner {
    masker: LiteralMasker,
    tokens: TokenSanitizer,
    utf8: Utf8Repair,
    store: Store,
    // Reused stage outputs (bounded: one piece's worth each).
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
}

impl Trace {
    /// A new, empty trace stored in an anonymous temporary file.
    pub fn new(cfg: TraceConfig) -> io::Result<Trace> {
        let values = cfg.masked_values.iter().filter(|v| !v.is_empty());
        Ok(Trace {
            inner: Mutex::new(Inner {
                masker: LiteralMasker::new(values)?,
                tokens: TokenSanitizer::new(effective_token_prefixes(&cfg.token_prefixes))?,
                utf8: Utf8Repair::default(),
                store: Store::new(cfg.output_limit)?,
                a: Vec::new(),
                b: Vec::new(),
                c: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the stages in an unsafe state for the
        // next caller that matters more than losing the log: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append output. Never fails from the caller's view: storage errors are logged and the
    /// affected bytes dropped.
    pub fn write(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        for piece in bytes.chunks(PIECE) {
            if inner.store.truncated() {
                return; // nothing more will be stored: skip the work
            }
            inner.process(piece);
        }
    }

    /// Release the bytes held back by the stages (end of a step, end of the job): partial
    /// matches that did not complete are stored as they are, an unfinished UTF-8 sequence
    /// becomes U+FFFD. The next write starts a fresh stream.
    pub fn flush(&self) {
        let mut inner = self.lock();
        if !inner.store.truncated() {
            inner.flush();
        }
    }

    /// Bytes stored so far (after masking, including the limit notice).
    pub fn len(&self) -> u64 {
        self.lock().store.len()
    }

    /// Nothing stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` stored bytes from `offset`; empty at or past the end.
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        self.lock().store.read_at(offset, max)
    }

    /// `crc32:%08x` (CRC32 IEEE) of exactly the stored bytes.
    pub fn checksum(&self) -> String {
        self.lock().store.checksum()
    }

    /// The output limit was hit (the notice is stored and later output dropped).
    pub fn truncated(&self) -> bool {
        self.lock().store.truncated()
    }
}

impl Inner {
    fn process(&mut self, piece: &[u8]) {
        self.a.clear();
        self.masker.write(piece, &mut self.a);
        self.b.clear();
        self.tokens.write(&self.a, &mut self.b);
        self.c.clear();
        self.utf8.write(&self.b, &mut self.c);
        self.store.append(&self.c);
    }

    fn flush(&mut self) {
        self.a.clear();
        self.masker.flush(&mut self.a);
        self.b.clear();
        self.tokens.write(&self.a, &mut self.b);
        self.tokens.flush(&mut self.b);
        self.c.clear();
        self.utf8.write(&self.b, &mut self.c);
        self.utf8.flush(&mut self.c);
        self.store.append(&self.c);
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Trace")
            .field("len", &inner.store.len())
            .field("truncated", &inner.store.truncated())
            .finish_non_exhaustive()
    }
}

impl gsr_exec::LogSink for Trace {
    fn write(&self, bytes: &[u8]) {
        Trace::write(self, bytes)
    }
}

/// Shared test helpers: a deterministic PRNG and naive (obviously correct, one-shot)
/// reference implementations of the stages.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::masker::MASK;

    /// SplitMix64.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// At each position, the longest value starting there is replaced; else one byte is kept.
    pub(crate) fn naive_mask(values: &[&str], input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let best = values
                .iter()
                .filter(|v| !v.is_empty() && input[i..].starts_with(v.as_bytes()))
                .map(|v| v.len())
                .max();
            match best {
                Some(n) => {
                    out.extend_from_slice(MASK);
                    i += n;
                }
                None => {
                    out.push(input[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// At each position, the longest prefix starting there is kept and the run after it
    /// masked; else one byte is kept.
    pub(crate) fn naive_tokens(prefixes: &[&str], input: &[u8]) -> Vec<u8> {
        let is_run = |b: u8| b.is_ascii_alphanumeric() || b"._=-".contains(&b);
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let best = prefixes
                .iter()
                .filter(|p| !p.is_empty() && input[i..].starts_with(p.as_bytes()))
                .map(|p| p.len())
                .max();
            match best {
                Some(n) => {
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let k = input[i..].iter().take_while(|&&b| is_run(b)).count();
                    if k > 0 {
                        out.extend_from_slice(MASK);
                        i += k;
                    }
                }
                None => {
                    out.push(input[i]);
                    i += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::limit_notice;
    use crate::testutil::{naive_mask, naive_tokens, Rng};
    use std::sync::Arc;

    fn cfg(values: &[&str]) -> TraceConfig {
        TraceConfig::new(values.iter().map(|v| v.to_string()).collect())
    }

    fn contents(t: &Trace) -> Vec<u8> {
        t.read_at(0, usize::MAX).unwrap()
    }

    fn run(config: &TraceConfig, parts: &[&[u8]]) -> Vec<u8> {
        let t = Trace::new(config.clone()).unwrap();
        for p in parts {
            t.write(p);
        }
        t.flush();
        let out = contents(&t);
        assert_eq!(t.len(), out.len() as u64);
        assert_eq!(t.checksum(), format!("crc32:{:08x}", crc32fast::hash(&out)));
        out
    }

    /// The whole pipeline, one shot, from the naive references.
    fn reference(config: &TraceConfig, input: &[u8]) -> Vec<u8> {
        let values: Vec<&str> = config.masked_values.iter().map(String::as_str).collect();
        let prefixes: Vec<String> = effective_token_prefixes(&config.token_prefixes)
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let masked = naive_tokens(&prefixes, &naive_mask(&values, input));
        let text = String::from_utf8_lossy(&masked).into_owned().into_bytes();
        if text.len() as u64 <= config.output_limit {
            return text;
        }
        let mut cut = config.output_limit as usize;
        while cut > 0 && text[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        [&text[..cut], limit_notice(config.output_limit).as_bytes()].concat()
    }

    const SECRETS: &[&str] = &[
        "abcabd",
        "abc",
        "bcabdx",
        "abcdef",
        "cde",
        "s3cr3t-p4ss",
        "zzzz",
        "glpat-known",
        "x\u{e9}y",
    ];

    /// Random input built from fragments that exercise every stage and its edges.
    fn random_input(rng: &mut Rng) -> Vec<u8> {
        let words: &[&[u8]] = &[
            b"abc",
            b"ab",
            b"d",
            b"ef",
            b"cd",
            b"s3cr",
            b"3t-p4ss",
            b"s3cr3t-p4ss",
            b"zz",
            b"glpat-",
            b"glp",
            b"at-",
            b"glrt",
            b"r-",
            b"_gitlab_session=",
            b"tok9.",
            b"XyZ",
            b"-",
            b"=",
            b" ",
            b"\n",
            b"/",
            b"x",
            b"\xc3\xa9",
            b"y",
            b"\xe2\x82\xac",
            b"\xe2\x82",
            b"\xff",
            b"\x80",
            b"\xf0\x9f\x98\x80",
            b"\xf0\x9f",
        ];
        let n = rng.below(16) as usize;
        (0..n)
            .flat_map(|_| {
                words[rng.below(words.len() as u64) as usize]
                    .iter()
                    .copied()
            })
            .collect()
    }

    fn random_parts<'a>(rng: &mut Rng, mut rest: &'a [u8]) -> Vec<&'a [u8]> {
        let mut parts = Vec::new();
        while !rest.is_empty() {
            let n = (rng.below(6) as usize).min(rest.len()); // empty writes included
            parts.push(&rest[..n]);
            rest = &rest[n..];
        }
        parts
    }

    fn assert_safe(out: &[u8], ctx: &str) {
        for s in SECRETS {
            assert!(
                !out.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret {s:?} leaked in {:?} ({ctx})",
                String::from_utf8_lossy(out)
            );
        }
        for p in default_token_prefixes() {
            for (i, _) in out
                .windows(p.len())
                .enumerate()
                .filter(|(_, w)| *w == p.as_bytes())
            {
                let next = out.get(i + p.len()).copied();
                assert!(
                    !next.is_some_and(|b| b.is_ascii_alphanumeric() || b"._=-".contains(&b)),
                    "token tail after {p:?} in {:?} ({ctx})",
                    String::from_utf8_lossy(out)
                );
            }
        }
        assert!(std::str::from_utf8(out).is_ok(), "valid UTF-8 ({ctx})");
    }

    #[test]
    fn property_every_split_equals_one_shot_and_leaks_nothing() {
        let config = cfg(SECRETS);
        let mut rng = Rng::new(42);
        for _ in 0..400 {
            let input = random_input(&mut rng);
            let expected = reference(&config, &input);
            let one_shot = run(&config, &[&input]);
            assert_eq!(one_shot, expected, "one shot of {input:x?}");
            assert_safe(&one_shot, "one shot");
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                let out = run(&config, &[a, b]);
                assert_eq!(out, expected, "split at {k} of {input:x?}");
            }
            for _ in 0..5 {
                let parts = random_parts(&mut rng, &input);
                let out = run(&config, &parts);
                assert_eq!(out, expected, "parts {parts:x?}");
                assert_safe(&out, "multi-split");
            }
        }
    }

    #[test]
    fn property_limits_cut_the_masked_output() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            let mut config = cfg(SECRETS);
            config.output_limit = rng.below(40);
            let input = random_input(&mut rng);
            let expected = reference(&config, &input);
            assert_eq!(
                run(&config, &[&input]),
                expected,
                "limit {}",
                config.output_limit
            );
            let parts = random_parts(&mut rng, &input);
            let out = run(&config, &parts);
            assert_eq!(
                out, expected,
                "limit {} parts {parts:x?}",
                config.output_limit
            );
            // Before the notice, no secret or token tail survived the cut.
            let notice = limit_notice(config.output_limit);
            let body = out.strip_suffix(notice.as_bytes()).unwrap_or(&out);
            assert_safe(body, "limited");
        }
    }

    #[test]
    fn secret_straddling_the_limit_is_never_partially_stored() {
        let mut config = cfg(&["supersecretvalue"]);
        config.output_limit = 10;
        let t = Trace::new(config).unwrap();
        t.write(b"12345super");
        t.write(b"secretvalue and more");
        t.flush();
        let out = contents(&t);
        // "12345[MASKED]" is past 10 bytes: the mask is cut, never the secret itself.
        assert_eq!(
            out,
            [&b"12345[MASK"[..], limit_notice(10).as_bytes()].concat()
        );
        assert!(t.truncated());
    }

    #[test]
    fn secret_split_across_three_writes_through_the_pipeline() {
        let config = cfg(&["my-s3cret-value"]);
        assert_eq!(
            run(&config, &[b"echo my-s", b"3cret-v", b"alue\n"]),
            b"echo [MASKED]\n"
        );
    }

    #[test]
    fn token_prefixes_apply_and_only_the_15_shortest_are_used() {
        let mut config = cfg(&[]);
        config.token_prefixes = vec![
            "aa-".into(),
            "a_prefix_that_is_very_long-".into(),
            "glpat-".into(), // duplicate of a default
            String::new(),   // ignored
        ];
        let prefixes = effective_token_prefixes(&config.token_prefixes);
        assert_eq!(prefixes.len(), 15);
        assert_eq!(prefixes[0], b"aa-");
        assert!(prefixes.contains(&b"_gitlab_session=".to_vec()));
        assert!(!prefixes.contains(&b"a_prefix_that_is_very_long-".to_vec()));
        assert_eq!(
            run(
                &config,
                &[b"aa-x1 glpat-y2 a_prefix_that_is_very_long-z3 glagent-q"]
            ),
            b"aa-[MASKED] glpat-[MASKED] a_prefix_that_is_very_long-z3 glagent-[MASKED]"
        );
        // With several short job prefixes the longest default falls off the list.
        config.token_prefixes = vec!["p1-".into(), "p2-".into()];
        assert!(!effective_token_prefixes(&config.token_prefixes)
            .contains(&b"_gitlab_session=".to_vec()));
        assert_eq!(
            run(&config, &[b"_gitlab_session=abc"]),
            b"_gitlab_session=abc"
        );
    }

    #[test]
    fn every_default_prefix_is_masked() {
        for p in default_token_prefixes() {
            let input = format!("[{p}Abc.1_2=3-4]");
            assert_eq!(
                run(&cfg(&[]), &[input.as_bytes()]),
                format!("[{p}[MASKED]]").as_bytes(),
                "{p}"
            );
        }
    }

    #[test]
    fn masked_value_containing_a_prefix_is_replaced_whole() {
        assert_eq!(
            run(&cfg(&["glpat-known"]), &[b"a glpat-known b glpat-other"]),
            b"a [MASKED] b glpat-[MASKED]"
        );
    }

    #[test]
    fn invalid_utf8_split_across_writes() {
        let config = cfg(&[]);
        assert_eq!(run(&config, &[b"a\xe2\x82", b"\xacb"]), "a€b".as_bytes());
        assert_eq!(
            run(&config, &[b"a\xe2", b"\x82", b"b"]),
            "a\u{FFFD}b".as_bytes()
        );
        assert_eq!(run(&config, &[b"a\xe2\x82"]), "a\u{FFFD}".as_bytes());
    }

    #[test]
    fn output_is_not_delayed_beyond_a_possible_match() {
        let t = Trace::new(cfg(&["secretvalue"])).unwrap();
        t.write(b"hello world\n");
        assert_eq!(contents(&t), b"hello world\n");
        t.write(b"a secr");
        assert_eq!(contents(&t), b"hello world\na ");
        t.write(b"et");
        assert_eq!(t.len(), 14);
        t.write(b"ive!");
        assert_eq!(contents(&t), b"hello world\na secretive!");
        // A partial token prefix or UTF-8 sequence is the only other thing held.
        t.write(b" gl");
        assert_eq!(contents(&t), b"hello world\na secretive! ");
        t.write(b"\xe2\x82");
        assert_eq!(contents(&t), b"hello world\na secretive! gl");
        t.flush();
        assert_eq!(
            contents(&t),
            "hello world\na secretive! gl\u{FFFD}".as_bytes()
        );
    }

    #[test]
    fn len_checksum_and_read_at_ranges() {
        let t = Trace::new(cfg(&["pw123"])).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.checksum(), "crc32:00000000");
        t.write(b"line one pw123\n");
        t.write("line two €\n".as_bytes());
        t.flush();
        let all = contents(&t);
        assert_eq!(all, "line one [MASKED]\nline two €\n".as_bytes());
        assert!(!t.is_empty());
        assert_eq!(t.len(), all.len() as u64);
        assert_eq!(t.checksum(), format!("crc32:{:08x}", crc32fast::hash(&all)));
        // Increments as the uploader reads them.
        let mut offset = 0u64;
        let mut rebuilt = Vec::new();
        loop {
            let part = t.read_at(offset, 7).unwrap();
            if part.is_empty() {
                break;
            }
            assert!(part.len() <= 7);
            offset += part.len() as u64;
            rebuilt.extend_from_slice(&part);
        }
        assert_eq!(rebuilt, all);
        assert_eq!(t.read_at(9, 8).unwrap(), b"[MASKED]");
        assert_eq!(t.read_at(t.len(), 10).unwrap(), b"");
        assert_eq!(t.read_at(t.len() + 100, 10).unwrap(), b"");
    }

    #[test]
    fn limit_through_the_pipeline_notice_once() {
        let mut config = cfg(&[]);
        config.output_limit = 100;
        let t = Trace::new(config).unwrap();
        for _ in 0..50 {
            t.write(b"0123456789");
            t.flush();
        }
        let all = contents(&t);
        let notice = limit_notice(100);
        assert_eq!(all.len(), 100 + notice.len());
        assert!(all.ends_with(notice.as_bytes()));
        let text = String::from_utf8(all.clone()).unwrap();
        assert_eq!(text.matches("exceeded limit").count(), 1);
        assert!(t.truncated());
        assert_eq!(t.checksum(), format!("crc32:{:08x}", crc32fast::hash(&all)));
    }

    #[test]
    fn limit_inside_a_multibyte_char_through_the_pipeline() {
        let mut config = cfg(&[]);
        config.output_limit = 4;
        let out = run(&config, &["ab€".as_bytes()]);
        assert_eq!(out, [&b"ab"[..], limit_notice(4).as_bytes()].concat());
    }

    #[test]
    fn big_writes_keep_buffers_bounded() {
        let config = TraceConfig {
            masked_values: vec!["x".into()],
            token_prefixes: Vec::new(),
            output_limit: u64::MAX,
        };
        let t = Trace::new(config).unwrap();
        // 1 MiB of a 1-byte secret in one write: 8x expansion, the worst case for the stage
        // buffers, which must still only ever hold one piece's worth.
        let big = vec![b'x'; 1024 * 1024];
        t.write(&big);
        assert_eq!(t.len(), 8 * big.len() as u64);
        let inner = t.lock();
        for buf in [&inner.a, &inner.b, &inner.c] {
            assert!(buf.capacity() <= 16 * PIECE, "capacity {}", buf.capacity());
        }
    }

    #[test]
    fn trace_is_a_shared_log_sink() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Trace>();
        let trace = Arc::new(Trace::new(cfg(&["topsecret"])).unwrap());
        let sink: Arc<dyn gsr_exec::LogSink> = trace.clone();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        sink.write(format!("thread {i} topsecret\n").as_bytes());
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        trace.flush();
        let text = String::from_utf8(contents(&trace)).unwrap();
        assert_eq!(text.lines().count(), 400);
        assert!(text.lines().all(|l| l.ends_with(" [MASKED]")));
    }

    #[test]
    fn config_debug_hides_values() {
        let c = cfg(&["hunter2"]);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.output_limit, DEFAULT_OUTPUT_LIMIT);
        assert_eq!(DEFAULT_OUTPUT_LIMIT, 4096 * 1024);
    }
}
