//! Where credentials come from: `CASCADE_REGISTRY_AUTH`, else docker's `config.json`.
//!
//! The environment is read only by [`credentials_for`] and [`docker_config_dir`];
//! [`credentials_from`] takes the values as arguments, so tests (which share one
//! process environment) can call it side by side.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::RegistryError;

/// What the client answers a `401` with.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
}

impl Credentials {
    pub fn is_none(&self) -> bool {
        matches!(self, Credentials::None)
    }

    /// The value of an `Authorization: Basic …` header.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
        }
    }

    /// The strings that must never appear in a message: the password, and the forms it
    /// is sent in.
    pub(crate) fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::None => Vec::new(),
            Credentials::Basic { username, password } => {
                let pair = format!("{username}:{password}");
                let b64 = base64::engine::general_purpose::STANDARD.encode(&pair);
                vec![b64, pair, password.clone()]
            }
        }
    }
}

/// Hand-written so the password can never be printed, whatever a caller formats.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("Credentials::None"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Credentials::Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// The credentials for `registry` (`host[:port]`), from the process environment:
/// `CASCADE_REGISTRY_AUTH=user:password` if set and not empty, else the `auths` entry of
/// `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`), else none.
pub fn credentials_for(registry: &str) -> Result<Credentials, RegistryError> {
    let env = std::env::var("CASCADE_REGISTRY_AUTH").ok();
    credentials_from(env.as_deref(), docker_config_dir().as_deref(), registry)
}

/// Docker's config directory: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".docker")),
    }
}

/// [`credentials_for`] with its inputs given: `env_value` is `CASCADE_REGISTRY_AUTH`'s
/// value, `config_dir` the directory holding docker's `config.json`.
///
/// A missing `config.json` means no credentials; an unreadable or malformed one is an
/// error naming the file (and never quoting its contents, which hold secrets).
/// Credential helpers (`credsStore`, `credHelpers`) are not run.
pub fn credentials_from(
    env_value: Option<&str>,
    config_dir: Option<&Path>,
    registry: &str,
) -> Result<Credentials, RegistryError> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        return match v.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials::Basic {
                username: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(RegistryError::InvalidAuthEnv),
        };
    }
    let Some(dir) = config_dir else {
        return Ok(Credentials::None);
    };
    const CONFIG_LIMIT: u64 = 4 << 20;
    let path = dir.join("config.json");
    // Bounded: a credentials file is a few KiB; a device or a huge file is refused.
    let read = std::fs::File::open(&path).and_then(|f| {
        let mut b = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, CONFIG_LIMIT + 1), &mut b).map(|_| b)
    });
    let bytes = match read {
        Ok(b) if b.len() as u64 > CONFIG_LIMIT => {
            return Err(RegistryError::CredentialsFile {
                path,
                reason: format!("larger than {} MiB", CONFIG_LIMIT >> 20),
            })
        }
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::None),
        Err(e) => {
            return Err(RegistryError::CredentialsFile {
                path,
                reason: e.kind().to_string(),
            })
        }
    };
    from_docker_config(&bytes, registry)
        .map_err(|reason| RegistryError::CredentialsFile { path, reason })
}

/// The `auths` entry for `registry` in a docker `config.json`. Error strings are ours
/// alone: serde_json's type errors quote values, and these values are secrets.
fn from_docker_config(bytes: &[u8], registry: &str) -> Result<Credentials, String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        // Syntax errors carry a position, never the text around it.
        format!("not valid JSON (line {}, column {})", e.line(), e.column())
    })?;
    let Some(obj) = doc.as_object() else {
        return Err("the top level is not a JSON object".into());
    };
    let auths = match obj.get("auths") {
        None | Some(serde_json::Value::Null) => return Ok(Credentials::None),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err("`auths` is not a JSON object".into()),
    };
    let wanted = normalize_host(registry);
    // An exact key wins over one that only matches once normalized.
    let entry = auths.get(registry).map(|e| (registry, e)).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| normalize_host(k) == wanted)
            .map(|(k, e)| (k.as_str(), e))
    });
    let Some((key, entry)) = entry else {
        return Ok(Credentials::None);
    };
    let Some(entry) = entry.as_object() else {
        return Err(format!("`auths.{key}` is not a JSON object"));
    };
    let field = |name: &str| -> Result<Option<&str>, String> {
        match entry.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("`auths.{key}.{name}` is not a string")),
        }
    };
    if let Some(auth) = field("auth")? {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("`auths.{key}.auth` is not base64 of `user:password`"))?;
        return match decoded.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::Basic {
                username: u.to_string(),
                password: p.to_string(),
            }),
            _ => Err(format!(
                "`auths.{key}.auth` is not base64 of `user:password`"
            )),
        };
    }
    match (field("username")?, field("password")?) {
        (Some(u), Some(p)) => Ok(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => Ok(Credentials::None),
    }
}

/// `https://host:port/v1/` → `host:port`; Docker Hub's historical names → one.
fn normalize_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn env_value_wins_and_splits_at_the_first_colon() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("a:b")),
        )
        .unwrap();
        assert_eq!(
            credentials_from(Some("me:pa:ss"), Some(dir.path()), "r.io").unwrap(),
            basic("me", "pa:ss")
        );
        // Empty means unset.
        assert_eq!(
            credentials_from(Some(""), Some(dir.path()), "r.io").unwrap(),
            basic("a", "b")
        );
        for bad in ["nocolon-s3cr3t", ":s3cr3t"] {
            let err = credentials_from(Some(bad), None, "r.io").unwrap_err();
            assert!(matches!(err, RegistryError::InvalidAuthEnv));
            assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn docker_config_auth_and_username_password_forms() {
        let cfg = format!(
            r#"{{"auths":{{
                "127.0.0.1:5001":{{"auth":"{}"}},
                "https://reg.example.com/v1/":{{"username":"u2","password":"p2"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "token.only":{{"identitytoken":"xyz"}}
            }},"credsStore":"desktop"}}"#,
            b64("cascade:s3cret:x"),
            b64("hub:hubpw")
        );
        let c = |r: &str| from_docker_config(cfg.as_bytes(), r).unwrap();
        assert_eq!(c("127.0.0.1:5001"), basic("cascade", "s3cret:x"));
        assert_eq!(c("reg.example.com"), basic("u2", "p2"));
        assert_eq!(c("docker.io"), basic("hub", "hubpw"));
        assert_eq!(c("token.only"), Credentials::None);
        assert_eq!(c("127.0.0.1:5000"), Credentials::None);
        assert_eq!(from_docker_config(b"{}", "x").unwrap(), Credentials::None);
    }

    #[test]
    fn missing_file_is_no_credentials_and_bad_files_name_the_path_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            credentials_from(None, Some(dir.path()), "r.io").unwrap(),
            Credentials::None
        );
        assert_eq!(
            credentials_from(None, None, "r.io").unwrap(),
            Credentials::None
        );

        let secret = "hunter2-secret";
        for body in [
            format!(r#"{{"auths":{{"r.io":{{"auth":"{secret}"}}}}"#), // truncated JSON
            format!(r#"{{"auths":{{"r.io":{{"auth":"{secret}!!"}}}}}}"#), // not base64
            format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64(secret)), // no colon
            format!(r#"{{"auths":["{secret}"]}}"#),
            format!(r#"{{"auths":{{"r.io":"{secret}"}}}}"#),
            format!(r#"{{"auths":{{"r.io":{{"password":7,"username":"{secret}"}}}}}}"#),
        ] {
            std::fs::write(dir.path().join("config.json"), &body).unwrap();
            let err = credentials_from(None, Some(dir.path()), "r.io").unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains("config.json"), "{text}");
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains(&b64(secret)), "{text}");
        }
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = basic("user", "correct-horse-battery");
        let text = format!("{c:?} {c:#?}");
        assert!(!text.contains("correct-horse-battery"), "{text}");
        assert!(text.contains("user") && text.contains("redacted"), "{text}");
    }
}
