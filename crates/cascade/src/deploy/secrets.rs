//! Deploy secrets: each component's `secrets:` read at deploy time (a variable of
//! cascade's environment, or a file), passed to its containers as variables, and never
//! written anywhere else. What is recorded (the `cascade.secrets` label, so that a
//! changed secret alone replaces the containers and `status` can say so) is one keyed
//! digest per component: blake3 in key-derivation mode over the names and values, never
//! a value. A digest of a guessable secret can still be guessed; keep secrets random.

use std::collections::BTreeMap;
use std::path::Path;

use cascade_manifest::{DeployComponent, SecretSource};

use crate::Error;

/// The most a secret file may hold: secrets are keys and passwords, not data.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A component's secrets, resolved. `Debug` shows the names only.
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    values: Vec<(String, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.values.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Secrets({names:?})")
    }
}

impl Secrets {
    /// `NAME=value` for the container's environment.
    pub(crate) fn env(&self) -> impl Iterator<Item = String> + '_ {
        self.values.iter().map(|(n, v)| format!("{n}={v}"))
    }

    /// The digest the `cascade.secrets` label holds (empty when there are none).
    pub(crate) fn digest(&self) -> String {
        if self.values.is_empty() {
            return String::new();
        }
        let mut h = blake3::Hasher::new_derive_key("cascade deploy secrets v1");
        for (n, v) in &self.values {
            for part in [n, v] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        format!("blake3:{}", h.finalize().to_hex())
    }

    /// Whether any value occurs in `text` (for the tests' leak checks and as a last
    /// guard on what is written).
    #[cfg(test)]
    pub(crate) fn any_in(&self, text: &str) -> bool {
        self.values.iter().any(|(_, v)| text.contains(v.as_str()))
    }
}

/// Reads every secret of every component (files relative to `base`). A missing variable
/// or file is an error naming the component and the secret, never the value.
pub(crate) fn resolve(
    components: &[DeployComponent],
    base: &Path,
) -> Result<BTreeMap<String, Secrets>, Error> {
    let mut out = BTreeMap::new();
    for c in components {
        let mut values = Vec::new();
        for (name, source) in &c.secrets {
            let fail = |why: String| Error::Secret {
                component: c.component.clone(),
                name: name.clone(),
                why,
            };
            let value = match source {
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| fail(format!("the variable `{var}` is not set")))?,
                SecretSource::File(rel) => {
                    let path = base.join(rel);
                    let meta = std::fs::metadata(&path)
                        .map_err(|e| fail(format!("`{}`: {e}", path.display())))?;
                    if meta.len() > MAX_SECRET_BYTES {
                        return Err(fail(format!(
                            "`{}` holds {} bytes, more than a secret ({MAX_SECRET_BYTES})",
                            path.display(),
                            meta.len()
                        )));
                    }
                    // Bounded again while reading: the metadata of a device or a
                    // FIFO says nothing of its size.
                    let bytes =
                        crate::bounded::read(&path, MAX_SECRET_BYTES, false).map_err(|e| {
                            let why = match e {
                                crate::bounded::ReadError::Io(e) => e.to_string(),
                                _ => format!("more than a secret ({MAX_SECRET_BYTES} bytes)"),
                            };
                            fail(format!("`{}`: {why}", path.display()))
                        })?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| fail(format!("`{}` is not UTF-8 text", path.display())))?;
                    // A file's one trailing newline is the editor's, not the secret's.
                    text.strip_suffix('\n').unwrap_or(&text).to_string()
                }
            };
            if value.contains('\0') {
                return Err(fail("it holds a NUL byte".into()));
            }
            values.push((name.clone(), value));
        }
        out.insert(c.component.clone(), Secrets { values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_a_value_and_never_holds_it() {
        let a = Secrets {
            values: vec![("DB_PASSWORD".into(), "hunter2-hunter2".into())],
        };
        let b = Secrets {
            values: vec![("DB_PASSWORD".into(), "hunter3-hunter3".into())],
        };
        assert_ne!(a.digest(), b.digest());
        assert!(!a.any_in(&a.digest()));
        assert!(!format!("{a:?}").contains("hunter2"));
        assert_eq!(Secrets::default().digest(), "");
    }
}
