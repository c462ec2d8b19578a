//! Small pure helpers shared by the handlers: random tokens, timestamps, slugs.
//!
//! They live apart so that the modules that model GitLab behaviour read as behaviour, and
//! so that the few formats GitLab is picky about (RFC 3339 times, `CI_*_SLUG` values, the
//! Ruby array text of `CI_RUNNER_TAGS`, the `system_id` shape) are written exactly once.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::{distributions::Alphanumeric, Rng};

/// `n` random ASCII letters and digits (the alphabet of GitLab's token bodies).
pub(crate) fn random_alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// `bytes` random bytes as lowercase hex (Rails' `SecureRandom.hex`).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// A `system_id` as gitlab-runner persists it: `s_` or `r_` plus 12 alphanumerics.
pub(crate) fn is_valid_system_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && (b[0] == b's' || b[0] == b'r')
        && b[1] == b'_'
        && b[2..].iter().all(u8::is_ascii_alphanumeric)
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// GitLab's slug: lowercase, every run of characters outside `[a-z0-9]` becomes one `-`,
/// at most 63 characters, no leading or trailing `-`.
pub(crate) fn slugify(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Ruby's `Array#to_s` for strings, as GitLab prints `CI_RUNNER_TAGS`: `["a", "b"]`.
pub(crate) fn ruby_array(items: &[String]) -> String {
    let inner: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", inner.join(", "))
}

/// Percent-encodes everything outside RFC 3986's unreserved set (for URL userinfo).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_768_046_403);
        assert_eq!(rfc3339(t), "2026-01-10T12:00:03Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn slugs_follow_gitlab_rules() {
        assert_eq!(slugify("gitlab-org/gitlab-test"), "gitlab-org-gitlab-test");
        assert_eq!(slugify("Feature/Foo_Bar"), "feature-foo-bar");
        assert_eq!(slugify("--x--"), "x");
        assert_eq!(slugify(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn system_id_shape() {
        assert!(is_valid_system_id("s_0123456789ab"));
        assert!(is_valid_system_id("r_ABCdef123456"));
        assert!(!is_valid_system_id("x_0123456789ab"));
        assert!(!is_valid_system_id("s_0123456789a"));
        assert!(!is_valid_system_id("s_0123456789a-"));
    }

    #[test]
    fn ruby_array_text() {
        let tags = vec!["docker".to_string(), "linux".to_string()];
        assert_eq!(ruby_array(&tags), r#"["docker", "linux"]"#);
        assert_eq!(ruby_array(&[]), "[]");
    }

    #[test]
    fn percent_encoding_of_userinfo() {
        assert_eq!(percent_encode("a b:c@d"), "a%20b%3Ac%40d");
        assert_eq!(percent_encode("sim-admin-token"), "sim-admin-token");
    }
}
