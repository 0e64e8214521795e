//! Secrets never printed: setting values whose names say they are secret are
//! remembered when the configuration loads, and every line resevent writes
//! (logs, the final error, librdkafka's own error text inside them) has them
//! replaced by `*****` first. The configuration itself is shown masked by
//! name (`RunConfig::masked`); this catches the copies that other code —
//! librdkafka's "invalid value" errors, above all — puts into messages.

use std::io::Write;
use std::sync::RwLock;

/// Parts of a setting's name that mark its value secret.
const SECRET_NAMES: [&str; 8] = ["password", "secret", "jaas", "sasl.oauthbearer.config", "key.pem", "ssl.key", "token", "credentials"];

static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Whether a setting of this name holds a secret.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| n.contains(s))
}

/// Remembers a secret value, so that it is masked wherever it appears.
/// Values shorter than 4 characters are not remembered: masking them would
/// garble ordinary text, and they protect nothing.
pub fn remember(value: &str) {
    if value.len() >= 4 {
        let mut known = KNOWN.write().expect("secrets lock");
        if !known.iter().any(|k| k == value) {
            known.push(value.to_owned());
            // Longest first, so that a secret containing another is masked whole.
            known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }
}

/// `text` with every remembered secret replaced by `*****`.
pub fn scrub(text: &str) -> String {
    let known = KNOWN.read().expect("secrets lock");
    let mut out = text.to_owned();
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), "*****");
        }
    }
    out
}

/// Standard error, scrubbed: what the logs and the final error go through.
pub struct ScrubbedStderr;

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_secrets_are_masked_anywhere_in_a_line() {
        assert!(is_secret("ssl.key.password") && is_secret("sasl.oauthbearer.config") && is_secret("SASL.PASSWORD"));
        assert!(!is_secret("bootstrap.servers"));
        remember("s3cret-pw");
        remember("ab");
        let line = "Configuration property \"ssl.key.password\" value s3cret-pw is invalid; ab stays";
        assert_eq!(scrub(line), "Configuration property \"ssl.key.password\" value ***** is invalid; ab stays");
    }
}
