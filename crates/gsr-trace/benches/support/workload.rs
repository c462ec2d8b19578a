//! A deterministic, realistic job log and 50 masked values, shared by `benches/trace.rs` and
//! `examples/throughput.rs`.

/// Writes of this size, like an executor's pipe reader would make.
pub const CHUNK: usize = 64 * 1024;

/// Number of masked values.
pub const VALUES: usize = 50;

pub struct Workload {
    /// 50 masked values, 20–40 characters from GitLab's maskable alphabet.
    pub values: Vec<String>,
    /// The log, cut into `CHUNK`-sized writes.
    pub chunks: Vec<Vec<u8>>,
    /// Total bytes in `chunks`.
    pub total: usize,
    /// How many masked values occur in the log.
    pub occurrences: usize,
}

/// SplitMix64, so the workload is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn word(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

const MASKABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+=/@:.~-";
const HEX: &[u8] = b"0123456789abcdef";

/// About `size` bytes of log (whole lines).
pub fn workload(size: usize) -> Workload {
    let mut rng = Rng(0x5eed);
    let values: Vec<String> = (0..VALUES)
        .map(|_| {
            let len = 20 + rng.below(21);
            rng.word(MASKABLE, len)
        })
        .collect();

    let crates = [
        "serde", "tokio", "hyper", "rustls", "regex", "clap", "syn", "quote",
    ];
    let npm = ["inflight@1.0.6", "glob@7.2.3", "rimraf@3.0.2", "uuid@3.4.0"];
    let dirs = [
        "src/api",
        "src/db",
        "lib/core",
        "vendor/github.com/x/y",
        "web/app",
    ];
    let tests = [
        "parse_config",
        "retry_backoff",
        "upload_chunk",
        "render_page",
        "auth_flow",
    ];

    let mut log = String::with_capacity(size + 256);
    let mut occurrences = 0;
    let mut line = 0usize;
    while log.len() < size {
        line += 1;
        let l = match rng.below(100) {
            0 => {
                occurrences += 1;
                let v = &values[rng.below(VALUES)];
                format!("$ curl -sf -H \"PRIVATE-TOKEN: {v}\" https://gitlab.example.com/api/v4/projects\n")
            }
            1 => {
                occurrences += 1;
                let v = &values[rng.below(VALUES)];
                format!("Using password {v} for registry.example.com\n")
            }
            2 => format!("Authorization: glpat-{}\n", rng.word(MASKABLE, 20)),
            3..=24 => format!(
                "   Compiling {} v1.{}.{} (/builds/group/project/{})\n",
                rng.pick(&crates),
                rng.below(40),
                rng.below(300),
                rng.pick(&dirs)
            ),
            25..=34 => format!(
                "npm WARN deprecated {}: This module is not supported, and leaks memory.\n",
                rng.pick(&npm)
            ),
            35..=54 => format!(
                "test {}::{}_{} ... ok\n",
                rng.pick(&dirs).replace('/', "::"),
                rng.pick(&tests),
                rng.below(1000)
            ),
            55..=64 => format!(
                "Receiving objects: {:3}% ({}/{}), {}.{} MiB | {}.{} MiB/s\r",
                rng.below(100),
                rng.below(5000),
                5000,
                rng.below(90),
                rng.below(10),
                rng.below(20),
                rng.below(10)
            ),
            65..=74 => format!(
                "\x1b[0KDownloading https://cache.example.com/{}/{}.tar.zst ({} kB)\x1b[0;m\n",
                rng.word(HEX, 2),
                rng.word(HEX, 40),
                rng.below(100_000)
            ),
            75..=84 => format!(
                "[{:>6}ms] {} {}:{}: warning: unused variable `{}` — ✔ checked\n",
                rng.below(100_000),
                rng.pick(&["INFO", "WARN", "DEBUG"]),
                rng.pick(&dirs),
                rng.below(2000),
                rng.word(b"abcdefghijklmnopqrstuvwxyz_", 8)
            ),
            _ => format!(
                "{line:>6} | {} {} {}\n",
                rng.word(b"abcdefghijklmnopqrstuvwxyz ", 30),
                rng.word(HEX, 12),
                rng.word(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 6)
            ),
        };
        log.push_str(&l);
    }

    let bytes = log.into_bytes();
    let chunks: Vec<Vec<u8>> = bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
    Workload {
        values,
        total: bytes.len(),
        chunks,
        occurrences,
    }
}
