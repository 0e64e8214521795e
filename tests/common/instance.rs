//! `resevent` processes under test: `resevent run` instances
//! ([`Instance::start`]), and any other long-running command, such as
//! `resevent capture` ([`Instance::spawn`]). Each logs to a file of its own,
//! which the waits here read.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::broker::Broker;

/// A running `resevent` process, killed when dropped.
pub struct Instance {
    /// Behind a lock so that the waits (which look whether it exited) take `&self`.
    child: Mutex<Child>,
    pub log: PathBuf,
}

impl Instance {
    /// `resevent run` on `input` as application `app`, keeping state in `state_dir`.
    pub fn start(broker: &Broker, input: &str, app: &str, state_dir: &Path, tag: &str) -> Instance {
        Instance::start_with(broker, input, app, state_dir, tag, &[], &[])
    }

    /// As `start`, with more arguments, and environment variables that win
    /// over the test defaults (a short session timeout, an HTTP port of its own).
    pub fn start_with(broker: &Broker, input: &str, app: &str, state_dir: &Path, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Instance {
        let log = std::env::temp_dir().join(format!("{}-{tag}.log", broker.name(app)));
        let mut argv: Vec<OsString> = ["run", "--bootstrap-servers", &broker.bootstrap, "--input-topic", input, "--application-id", app, "--output-topic", &format!("{app}-events"), "--state-dir"].iter().map(OsString::from).collect();
        argv.push(state_dir.into());
        argv.extend(args.iter().map(OsString::from));
        let mut all_env = vec![("RESEVENT_CONSUMER__SESSION_TIMEOUT_MS", "6000"), ("RESEVENT_CONSUMER__HEARTBEAT_INTERVAL_MS", "1000")];
        all_env.extend_from_slice(env);
        Instance::spawn(&argv, &all_env, log)
    }

    /// `resevent ARGS`, run from the repository root, logging at info level
    /// to `log` (appended to), serving HTTP on a port of its own; `env` wins
    /// over those defaults.
    pub fn spawn(args: &[impl AsRef<OsStr>], env: &[(&str, &str)], log: PathBuf) -> Instance {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_resevent"))
            .args(args)
            .env("RESEVENT_LOG", "info")
            // Several processes per machine: each serves HTTP on a port of its own.
            .env("RESEVENT_HTTP_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Instance { child: Mutex::new(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// The address its HTTP endpoint listens on, from its start-up log line.
    pub fn http_addr(&self) -> String {
        let line = self.wait_log_line(&["HTTP: "], Duration::from_secs(60));
        line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    }

    /// Whether the process is still running (it never exited or restarted).
    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or commit.
    pub fn kill9(self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(self) -> Option<i32> {
        Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.lock().unwrap().try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "resevent did not stop within 60s of SIGTERM; log {}", self.log.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How often the log holds `pattern` so far.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.text().matches(pattern).count()
    }

    /// Waits until the log holds `pattern` at least `count` times. Panics
    /// when `within` has passed, or at once if the process exited first.
    pub fn wait_log(&self, pattern: &str, count: usize, within: Duration) {
        self.wait_until(within, &format!("{pattern:?} {count} times"), |log| log.matches(pattern).count() >= count);
    }

    /// Waits until one line of the log holds every one of `parts`, and
    /// returns that line. Panics as [`Instance::wait_log`] does.
    pub fn wait_log_line(&self, parts: &[&str], within: Duration) -> String {
        let find = |log: &str| log.lines().find(|l| parts.iter().all(|p| l.contains(p))).map(String::from);
        self.wait_until(within, &format!("a line with {parts:?}"), |log| find(log).is_some());
        find(&self.text()).unwrap()
    }

    /// Waits until `seen` holds for the whole log (`what` names it in the
    /// panic). Panics as [`Instance::wait_log`] does.
    pub fn wait_until(&self, within: Duration, what: &str, seen: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            // Whether it exited is read before the log, so a line written
            // just before the exit is still seen.
            let exited = self.child.lock().unwrap().try_wait().unwrap();
            let log = self.text();
            if seen(&log) {
                return;
            }
            let tail = || log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            if let Some(status) = exited {
                panic!("resevent exited ({status}) without logging {what}; log {}, last lines:\n{}", self.log.display(), tail());
            }
            assert!(Instant::now() < deadline, "{what} not logged within {within:?}; log {}, last lines:\n{}", self.log.display(), tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit by itself: (exit code, its log).
    pub fn wait_exit(self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.lock().unwrap().try_wait().unwrap() {
                return (s.code(), self.text());
            }
            if Instant::now() > deadline {
                let _ = self.child.lock().unwrap().kill();
                panic!("resevent did not exit within {within:?}; log {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
