//! TLS for the tests: certificates made with the openssl command, and a TLS
//! front (stunnel) for a plaintext server.

use std::process::Command;
use std::time::Duration;

use super::process::{KillOnDrop, free_port, spawn_listening};

/// Certificates for the TLS tests, made with the openssl command: a CA, a
/// broker certificate for 127.0.0.1 and a client certificate it signed, and
/// another CA that signed neither.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("the openssl command (Debian's openssl)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        for ca in ["ca", "other-ca"] {
            run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem"), "-days", "2", "-subj", &format!("/CN=resevent test {ca}")]);
        }
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        for who in ["broker", "client"] {
            run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{who}.key"), "-out", &format!("{who}.csr"), "-subj", "/CN=127.0.0.1"]);
            run(&["x509", "-req", "-in", &format!("{who}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &format!("{who}.pem"), "-days", "2", "-extfile", "san.ext"]);
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A TLS front (stunnel, with `certs`' broker certificate) for a plaintext
/// server on `backend`: returns the process (killed on drop) and its port.
pub fn tls_front(certs: &Certs, backend: u16, name: &str) -> (KillOnDrop, u16) {
    let front = free_port();
    let conf = certs.dir.path().join(format!("stunnel-{name}-{front}.conf"));
    std::fs::write(&conf, format!("foreground = yes\npid =\n[{name}]\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{backend}\ncert = {}\nkey = {}\n", certs.path("broker.pem"), certs.path("broker.key"))).unwrap();
    let stunnel = std::env::var("RESEVENT_STUNNEL").unwrap_or_else(|_| "stunnel4".into());
    let mut cmd = Command::new(&stunnel);
    cmd.arg(&conf);
    (KillOnDrop(spawn_listening(cmd, front, &std::env::temp_dir().join(format!("stunnel-{name}-{front}.log")), Duration::from_secs(30))), front)
}
