//! `system_id`: the runner manager's identity, stable per machine.
//!
//! Same derivation as gitlab-runner so that GitLab shows one manager per machine whatever
//! runner binary runs there: `s_` + the first 12 hex chars of
//! HMAC-SHA256(key = machine id, message = "gitlab-runner"); without a machine id,
//! `r_` + 12 random alphanumerics, persisted next to the caller's state when possible.

use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::Sha256;
use std::path::Path;

/// Derive from a machine id.
pub fn from_machine_id(machine_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(machine_id.trim().as_bytes()).expect("hmac accepts any key");
    mac.update(b"gitlab-runner");
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("s_{}", &hex[..12])
}

/// A random `r_` id.
pub fn random() -> String {
    let s: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    format!("r_{s}")
}

/// Is `s` a well-formed system id?
pub fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && (b[0] == b's' || b[0] == b'r')
        && b[1] == b'_'
        && b[2..].iter().all(|c| c.is_ascii_alphanumeric())
}

/// This machine's id: from `/etc/machine-id` (or the dbus copy); else a random one kept in
/// `state_file` when given, so it stays stable across runs.
pub fn for_this_machine(state_file: Option<&Path>) -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(p) {
            if !id.trim().is_empty() {
                return from_machine_id(&id);
            }
        }
    }
    if let Some(f) = state_file {
        if let Ok(s) = std::fs::read_to_string(f) {
            if is_valid(s.trim()) {
                return s.trim().to_string();
            }
        }
        let id = random();
        let _ = std::fs::write(f, &id);
        return id;
    }
    random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_well_formed() {
        let a = from_machine_id("0123456789abcdef0123456789abcdef\n");
        assert_eq!(a, from_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(is_valid(&a), "{a}");
        assert!(a.starts_with("s_"));
        assert_ne!(a, from_machine_id("another"));
        let r = random();
        assert!(is_valid(&r) && r.starts_with("r_"), "{r}");
        assert!(!is_valid("s_short"));
    }

    #[test]
    fn random_id_is_persisted() {
        let dir = std::env::temp_dir().join(format!("gsr-sysid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(".runner_system_id");
        let _ = std::fs::remove_file(&f);
        // On machines with /etc/machine-id the file is not used; both paths must be stable.
        let a = for_this_machine(Some(&f));
        let b = for_this_machine(Some(&f));
        assert_eq!(a, b);
        assert!(is_valid(&a));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
