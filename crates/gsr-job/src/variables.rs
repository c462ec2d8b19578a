//! Job variables: the list GitLab sends plus what the runner adds, and `$VAR` expansion.
//!
//! GitLab pre-expands most values; the runner expands the whole list once more so that
//! references to runner-added variables (`$CI_PROJECT_DIR`, `$CI_BUILDS_DIR`) resolve.
//! `raw: true` values are never expanded. Expansion is purely textual (`$NAME`, `${NAME}`),
//! like Go's `os.Expand` that gitlab-runner uses: no command substitution, no globbing, so
//! a value can never run code. Values reach the job process through its environment, never
//! through shell source text.

use std::fmt;

/// One job variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    /// Name.
    pub key: String,
    /// Value (a path to a temp file is substituted by the worker for `file` variables).
    pub value: String,
    /// Visible in the UI (informational).
    pub public: bool,
    /// Masked in the trace.
    pub masked: bool,
    /// A `file` variable: the value is written to a file and the variable holds its path.
    pub file: bool,
    /// Not expanded.
    pub raw: bool,
}

impl Variable {
    /// A plain public variable.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Variable {
            key: key.into(),
            value: value.into(),
            public: true,
            masked: false,
            file: false,
            raw: false,
        }
    }

    /// A plain variable that is not expanded (runner-built values such as paths).
    pub fn raw(key: impl Into<String>, value: impl Into<String>) -> Self {
        Variable {
            raw: true,
            ..Variable::new(key, value)
        }
    }
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if self.masked || !self.public {
            &"[REDACTED]"
        } else {
            &self.value
        };
        f.debug_struct("Variable")
            .field("key", &self.key)
            .field("value", value)
            .field("masked", &self.masked)
            .field("file", &self.file)
            .field("raw", &self.raw)
            .finish()
    }
}

/// An ordered variable list; later entries with the same key win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables(pub Vec<Variable>);

impl Variables {
    /// The effective value of `key` (the last one wins), if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    /// The effective variable for `key`.
    pub fn get_var(&self, key: &str) -> Option<&Variable> {
        self.0.iter().rev().find(|v| v.key == key)
    }

    /// Append a variable (it overrides earlier ones with the same key).
    pub fn push(&mut self, v: Variable) {
        self.0.push(v);
    }

    /// Is `key` set to a true-ish value (`1`, `true`, `yes`, case-insensitive)?
    pub fn is_true(&self, key: &str) -> bool {
        matches!(
            self.get(key)
                .map(|s| s.trim().to_ascii_lowercase())
                .as_deref(),
            Some("1" | "true" | "yes")
        )
    }

    /// The values to mask in the trace: masked variables, trimmed, non-empty, deduplicated.
    pub fn masked_values(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in &self.0 {
            if !v.masked {
                continue;
            }
            let t = v.value.trim();
            if !t.is_empty() && !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
        out
    }

    /// Expand `$NAME` / `${NAME}` in every non-raw value against the list itself, once.
    ///
    /// Lookups use the unexpanded effective value of the referenced variable, like
    /// gitlab-runner; unknown names expand to the empty string.
    pub fn expanded(&self) -> Variables {
        let out = self
            .0
            .iter()
            .map(|v| {
                if v.raw || v.file {
                    v.clone()
                } else {
                    Variable {
                        value: expand(&v.value, |name| self.get(name)),
                        ..v.clone()
                    }
                }
            })
            .collect();
        Variables(out)
    }

    /// The effective list: one entry per key, last one wins, in first-seen order.
    pub fn effective(&self) -> Vec<&Variable> {
        let mut out: Vec<&Variable> = Vec::new();
        for v in &self.0 {
            if let Some(slot) = out.iter_mut().find(|o| o.key == v.key) {
                *slot = v;
            } else {
                out.push(v);
            }
        }
        out
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Expand `$NAME` and `${NAME}` in `value` with `lookup`. A `$` not followed by a name
/// stays as it is. Unknown names become empty.
pub fn expand<'a>(value: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        // `$` found at i. Like gitlab-runner (Go's os.Expand with its lookup): `$$` is a
        // literal `$`, and shell specials (`$1`, `$?`, `$@`, …) are kept as written.
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push_str(&value[literal_start..i]);
                out.push('$');
                i += 2;
                literal_start = i;
                continue;
            }
            Some(c) if c.is_ascii_digit() || b"*#@!?-".contains(c) => {
                i += 2;
                continue;
            }
            _ => {}
        }
        let (name, consumed) = if bytes.get(i + 1) == Some(&b'{') {
            match value[i + 2..].find('}') {
                Some(end) if value[i + 2..i + 2 + end].bytes().all(is_name_byte) && end > 0 => {
                    (&value[i + 2..i + 2 + end], end + 3)
                }
                _ => ("", 0),
            }
        } else {
            let len = bytes[i + 1..]
                .iter()
                .take_while(|b| is_name_byte(**b))
                .count();
            (&value[i + 1..i + 1 + len], len + 1)
        };
        if consumed == 0 || name.is_empty() {
            i += 1;
            continue;
        }
        out.push_str(&value[literal_start..i]);
        out.push_str(lookup(name).unwrap_or(""));
        i += consumed;
        literal_start = i;
    }
    out.push_str(&value[literal_start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Variables {
        Variables(list.iter().map(|(k, v)| Variable::new(*k, *v)).collect())
    }

    #[test]
    fn expands_known_and_braced_names() {
        let v = vars(&[
            ("A", "x"),
            ("B", "$A-${A}/$MISSING!"),
            ("C", "cost: $ 5 $"),
            ("D", "$$A $1 $? $@"),
        ]);
        let e = v.expanded();
        assert_eq!(e.get("B"), Some("x-x/!"));
        assert_eq!(e.get("C"), Some("cost: $ 5 $"));
        assert_eq!(e.get("D"), Some("$A $1 $? $@"));
    }

    #[test]
    fn raw_and_file_values_are_not_expanded() {
        let mut v = vars(&[("A", "x")]);
        v.push(Variable {
            raw: true,
            ..Variable::new("R", "$A")
        });
        v.push(Variable {
            file: true,
            ..Variable::new("F", "$A")
        });
        let e = v.expanded();
        assert_eq!(e.get("R"), Some("$A"));
        assert_eq!(e.get("F"), Some("$A"));
    }

    #[test]
    fn no_shell_semantics_in_expansion() {
        let v = vars(&[("A", "$(rm -rf /) `id` ${A:-x} \"'")]);
        assert_eq!(v.expanded().get("A"), Some("$(rm -rf /) `id` ${A:-x} \"'"));
    }

    #[test]
    fn last_wins_and_masked_values() {
        let mut v = vars(&[("A", "1"), ("A", "2")]);
        v.push(Variable {
            masked: true,
            ..Variable::new("S", "  secret-value ")
        });
        v.push(Variable {
            masked: true,
            ..Variable::new("T", "secret-value")
        });
        assert_eq!(v.get("A"), Some("2"));
        assert_eq!(v.effective().len(), 3);
        assert_eq!(v.masked_values(), vec!["secret-value".to_string()]);
        assert!(!format!("{v:?}").contains("secret-value"));
    }
}
