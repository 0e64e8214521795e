//! Processes the tests start: free loopback ports, servers waited for until
//! they listen, helpers killed when the test lets go of them.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a server process logging to `log` and waits (up to `within`) until
/// it listens on `port`; panics, naming the log, if it exits first or never does.
pub fn spawn_listening(mut cmd: Command, port: u16, log: &Path, within: Duration) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd.stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("{cmd:?} did not listen on {port} within {within:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A helper process that goes when the test's handle does.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
