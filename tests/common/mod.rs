//! Test harness for the Kafka tests: a real Kafka-protocol broker and real
//! `resevent run` processes.
//!
//! The broker is Tansu (started here on a free loopback port, one per test),
//! or any broker given in `RESEVENT_TEST_BOOTSTRAP` (for example a real Apache
//! Kafka). `scripts/test` installs Tansu and sets `RESEVENT_TANSU`; without
//! either variable the tests fail loudly rather than skip.

#![allow(dead_code)]

pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a server process logging to `log` and waits until it listens on `port`.
fn spawn_listening(mut cmd: Command, port: u16, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd.stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("{cmd:?} did not listen on {port} within 30s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Tansu listening on a port of its own and advertising another (`front`),
/// where something in front of it (a proxy, a TLS terminator) takes clients.
/// Always Tansu, even when RESEVENT_TEST_BOOTSTRAP is set: an external broker
/// cannot be put behind that front. Returns (process, port, front).
fn tansu_behind_a_front(prefix: &str) -> (Child, u16, u16) {
    let tansu = std::env::var("RESEVENT_TANSU").unwrap_or_else(|_| panic!("this test needs RESEVENT_TANSU, a tansu binary (scripts/test installs it)"));
    let (port, front) = (free_port(), free_port());
    let mut cmd = Command::new(&tansu);
    cmd.args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}"), "--advertised-listener-url", &format!("tcp://127.0.0.1:{front}"), "--storage-engine", "memory://tansu/"]);
    (spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log"))), port, front)
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
    (KillOnDrop(spawn_listening(cmd, front, &std::env::temp_dir().join(format!("stunnel-{name}-{front}.log")))), front)
}

/// A helper process that goes when the test's handle does.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A record's key and value as bytes, each possibly absent.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

pub struct Broker {
    pub bootstrap: String,
    process: Option<Child>,
    /// Whether `process` leads a process group of its own (killed as a whole).
    own_group: bool,
    /// Unique prefix for topic and group names, so tests can share an external broker.
    pub prefix: String,
    /// librdkafka settings the test's own clients need (TLS).
    pub client_settings: Vec<(String, String)>,
    /// Helper processes that live as long as the broker (the TLS terminator).
    pub helpers: Vec<Child>,
}

impl Broker {
    pub fn start(test: &str) -> Broker {
        let prefix = format!("{test}-{}", std::process::id());
        if let Ok(b) = std::env::var("RESEVENT_TEST_BOOTSTRAP") {
            return Broker { bootstrap: b, process: None, own_group: false, prefix, client_settings: Vec::new(), helpers: Vec::new() };
        }
        let tansu = std::env::var("RESEVENT_TANSU").unwrap_or_else(|_| {
            panic!("no broker: set RESEVENT_TEST_BOOTSTRAP to a Kafka broker, or RESEVENT_TANSU to a tansu binary (scripts/test installs it)")
        });
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&tansu);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]);
        let child = spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log")));
        Broker { bootstrap: format!("127.0.0.1:{port}"), process: Some(child), own_group: false, prefix, client_settings: Vec::new(), helpers: Vec::new() }
    }

    /// Tansu requiring SASL (`--authentication`; SCRAM). Always Tansu. It
    /// holds no user: Tansu 0.6.0 creates users only over an authenticated
    /// connection, and its memory storage does not outlive a restart, so no
    /// login can succeed; a test sees the SCRAM exchange refused.
    pub fn start_requiring_sasl(test: &str) -> Broker {
        let prefix = format!("{test}-{}", std::process::id());
        let tansu = std::env::var("RESEVENT_TANSU").unwrap_or_else(|_| panic!("this test needs RESEVENT_TANSU, a tansu binary (scripts/test installs it)"));
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&tansu);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/", "--authentication"]);
        let child = spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log")));
        Broker { bootstrap: format!("127.0.0.1:{port}"), process: Some(child), own_group: false, prefix, client_settings: Vec::new(), helpers: Vec::new() }
    }

    /// Tansu behind a [`Proxy`] that clients reach it through (Tansu advertises
    /// the proxy's address): cutting the proxy is the broker going away for
    /// every client while the broker keeps its in-memory data. Always Tansu,
    /// even when RESEVENT_TEST_BOOTSTRAP is set: an external broker cannot be
    /// put behind the proxy.
    pub fn start_behind_proxy(test: &str) -> (Broker, Proxy) {
        let prefix = format!("{test}-{}", std::process::id());
        let (child, port, front) = tansu_behind_a_front(&prefix);
        let proxy = Proxy::start(front, port);
        (Broker { bootstrap: format!("127.0.0.1:{front}"), process: Some(child), own_group: false, prefix, client_settings: Vec::new(), helpers: Vec::new() }, proxy)
    }

    /// A broker that honours transaction aborts, for the exactly-once test:
    /// noida-db (`RESEVENT_NOIDA`, installed by scripts/test), or the broker in
    /// `RESEVENT_TEST_TRANSACTIONAL_BOOTSTRAP`.
    pub fn start_transactional(test: &str) -> Broker {
        let prefix = format!("{test}-{}", std::process::id());
        if let Ok(b) = std::env::var("RESEVENT_TEST_TRANSACTIONAL_BOOTSTRAP") {
            return Broker { bootstrap: b, process: None, own_group: false, prefix, client_settings: Vec::new(), helpers: Vec::new() };
        }
        let noida = std::env::var("RESEVENT_NOIDA")
            .unwrap_or_else(|_| panic!("no transactional broker: set RESEVENT_TEST_TRANSACTIONAL_BOOTSTRAP, or RESEVENT_NOIDA to a noida-db binary (scripts/test installs it)"));
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("noida-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(&noida);
        cmd.args(["start", "--only", "kafka", "--kafka-port", &port.to_string()]).current_dir(&dir);
        // Its launcher starts the server as a child: a group of their own lets Drop stop both.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = spawn_listening(cmd, port, &dir.join("noida.log"));
        Broker { bootstrap: format!("127.0.0.1:{port}"), process: Some(child), own_group: true, prefix, client_settings: Vec::new(), helpers: Vec::new() }
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.client_settings {
            c.set(k, v);
        }
        c
    }

    /// Tansu reached only through TLS: stunnel (Debian's stunnel4, which
    /// scripts/test installs) accepts TLS with `certs`' broker certificate
    /// and forwards to Tansu's plaintext port, and Tansu advertises the TLS
    /// port. With `client_auth`, stunnel also requires a client certificate
    /// signed by the test CA (mTLS).
    pub fn start_behind_tls(test: &str, certs: &Certs, client_auth: bool) -> Broker {
        let prefix = format!("{test}-{}", std::process::id());
        let (tansu_child, port, front) = tansu_behind_a_front(&prefix);
        let conf = certs.dir.path().join(format!("stunnel-{front}.conf"));
        let verify = if client_auth { format!("verifyChain = yes\nCAfile = {}\n", certs.path("ca.pem")) } else { String::new() };
        std::fs::write(&conf, format!("foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{port}\ncert = {}\nkey = {}\n{verify}", certs.path("broker.pem"), certs.path("broker.key"))).unwrap();
        let stunnel = std::env::var("RESEVENT_STUNNEL").unwrap_or_else(|_| "stunnel4".into());
        let mut cmd = Command::new(&stunnel);
        cmd.arg(&conf);
        let stunnel_child = spawn_listening(cmd, front, &std::env::temp_dir().join(format!("stunnel-{prefix}.log")));
        let mut client_settings = vec![("security.protocol".to_string(), "SSL".to_string()), ("ssl.ca.location".to_string(), certs.path("ca.pem"))];
        if client_auth {
            client_settings.push(("ssl.certificate.location".into(), certs.path("client.pem")));
            client_settings.push(("ssl.key.location".into(), certs.path("client.key")));
        }
        Broker { bootstrap: format!("127.0.0.1:{front}"), process: Some(tansu_child), own_group: false, prefix, client_settings, helpers: vec![stunnel_child] }
    }

    pub fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        // Tansu returns no defaults for these; set them explicitly.
        let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1").set("retention.bytes", "-1");
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let res = rt.block_on(admin.create_topics(&[t], &AdminOptions::new())).unwrap();
        for r in res {
            r.unwrap_or_else(|(n, e)| panic!("create topic {n}: {e}"));
        }
    }

    /// Produces (key, value) records, keyed like the connectors do.
    pub fn produce(&self, topic: &str, records: &[(String, String)]) {
        let raw: Vec<RawRecord> = records.iter().map(|(k, v)| (Some(k.clone().into_bytes()), Some(v.clone().into_bytes()))).collect();
        self.produce_raw(topic, &raw);
    }

    /// Produces records as bytes, key and value each possibly absent (a null
    /// value is a tombstone), in order, and waits for all of them.
    pub fn produce_raw(&self, topic: &str, records: &[RawRecord]) {
        self.produce_to(topic, None, records);
    }

    /// As `produce_raw`, to one partition when `partition` is given.
    pub fn produce_to(&self, topic: &str, partition: Option<i32>, records: &[RawRecord]) {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client()
            .set("enable.idempotence", "true")
            .set("linger.ms", "10")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.max.bytes", "67108864")
            .create()
            .unwrap();
        for (k, v) in records {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            if let Some(k) = k {
                rec = rec.key(&k[..]);
            }
            if let Some(v) = v {
                rec = rec.payload(&v[..]);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    /// One record with headers, as another producer (or a retried one) would write it.
    pub fn produce_with_headers(&self, topic: &str, key: &[u8], value: &[u8], headers: &[(String, String)]) {
        let producer: ThreadedProducer<DefaultProducerContext> = self.client().create().unwrap();
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header { key: k, value: Some(v.as_bytes()) });
        }
        producer.send(BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(value).headers(h)).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Every record of a topic, per partition in order: (partition, key, value, headers).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer: BaseConsumer = self.client().set("group.id", self.name("reader")).set("enable.partition.eof", "true").set("enable.auto.commit", "false").create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else { return Vec::new() };
        let parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut eof = std::collections::HashSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while eof.len() < parts.len() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    eof.remove(&m.partition());
                    let headers = m.headers().map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect()).unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        out
    }

    pub fn topic_exists(&self, topic: &str) -> bool {
        let consumer: BaseConsumer = self.client().create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for mut h in self.helpers.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
        if let Some(mut p) = self.process.take() {
            if self.own_group {
                // The launcher and the server it started, as one process group.
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", p.id())]).stderr(Stdio::null()).status();
            }
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A TCP proxy in front of the broker, to cut the network: while cut, every
/// open connection is closed and new ones are closed on arrival.
pub struct Proxy {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(front: u16, back: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind(("127.0.0.1", front)).unwrap();
        let proxy = Proxy { up: Default::default(), open: Default::default() };
        proxy.up.store(true, Ordering::SeqCst);
        let (up, open) = (proxy.up.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", back)) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// The broker is gone for every client until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    /// The record's timestamp (ms): when the producer created it.
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("JSON value")
    }
}

/// A `resevent run` process.
pub struct Instance {
    child: Child,
    pub log: PathBuf,
}

impl Instance {
    pub fn start(broker: &Broker, input: &str, app: &str, state_dir: &Path, tag: &str) -> Instance {
        Instance::start_with(broker, input, app, state_dir, tag, &[], &[])
    }

    pub fn start_with(broker: &Broker, input: &str, app: &str, state_dir: &Path, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Instance {
        let log = std::env::temp_dir().join(format!("{}-{tag}.log", broker.name(app)));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_resevent"))
            .args(["run", "--bootstrap-servers", &broker.bootstrap, "--input-topic", input, "--application-id", app, "--output-topic", &format!("{app}-events")])
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("RESEVENT_CONSUMER__SESSION_TIMEOUT_MS", "6000")
            .env("RESEVENT_CONSUMER__HEARTBEAT_INTERVAL_MS", "1000")
            .env("RESEVENT_LOG", "info")
            // Several instances per machine: each serves HTTP on a port of its own.
            .env("RESEVENT_HTTP_ADDR", "127.0.0.1:0")
            // The test's own settings win over the defaults above.
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Instance { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address its HTTP endpoint listens on, from its start-up log line.
    pub fn http_addr(&self) -> String {
        self.wait_log("HTTP: ", 1, Duration::from_secs(60));
        let log = std::fs::read_to_string(&self.log).unwrap();
        let line = log.lines().find(|l| l.contains("HTTP: ")).unwrap();
        line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    }

    /// Whether the process is still running (it never exited or restarted).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or commit.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "resevent did not stop within 60s of SIGTERM; log {}", self.log.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How often the log holds `pattern` so far.
    pub fn log_count(&self, pattern: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches(pattern).count()
    }

    /// Waits until the log holds `pattern` at least `count` times.
    pub fn wait_log(&self, pattern: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.matches(pattern).count() >= count {
                return;
            }
            assert!(Instant::now() < deadline, "{pattern:?} not seen {count} times within {within:?} in {}", self.log.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_exit(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s.code(), std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("resevent did not exit within {within:?}; log {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `events` change events of the built-in workload (~1 KB MongoDB source
/// connector events) for `reservations` reservations in flight: (key, value).
pub fn workload(reservations: u64, events: usize, seed: u64) -> Vec<(String, String)> {
    let mut w = resevent::workload::Workload::new(reservations, seed);
    (0..events).map(|_| w.next_event()).collect()
}

/// Waits until `topic` holds at least `n` records, and returns them.
pub fn wait_records(broker: &Broker, topic: &str, n: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    loop {
        let records = broker.read_all(topic);
        if records.len() >= n {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic} holds {} records, not {n}, after {within:?}", records.len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The events `resevent replay` emits for the same record values, in order.
pub fn replay_events(values: &[(String, String)]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, values.iter().map(|(_, v)| format!("{v}\n")).collect::<String>()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").arg(&input).env("RESEVENT_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every reservation's state after `resevent replay` of the same record values.
pub fn replay_state(values: &[(String, String)]) -> BTreeMap<String, resevent::machine::ReservationState> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, values.iter().map(|(_, v)| format!("{v}\n")).collect::<String>()).unwrap();
    let st = dir.path().join("state");
    let status = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").arg("--state-dir").arg(&st).arg(&input).env("RESEVENT_LOG", "warn").stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let store = resevent::state::store::StateStore::open(&st).unwrap();
    store.reservations(resevent::replay::REPLAY_PARTITION).unwrap().into_iter().collect()
}

/// Events grouped by reservation, in order.
pub fn per_reservation(events: &[serde_json::Value]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for e in events {
        m.entry(e["reservationId"].as_str().unwrap().to_string()).or_default().push(e.clone());
    }
    m
}

/// Drops repeats by eventId as a consumer does, asserting that every repeat
/// has the same content as the first.
pub fn dedup(events: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let id = e["eventId"].as_str().unwrap().to_string();
        match seen.get(&id) {
            Some(first) => assert_eq!(first, e, "a repeat of {id} differs in content"),
            None => {
                seen.insert(id, e.clone());
                out.push(e.clone());
            }
        }
    }
    out
}

/// Waits until `done` holds for the output topic's events, or panics.
pub fn wait_for(broker: &Broker, topic: &str, within: Duration, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let events: Vec<serde_json::Value> = broker.read_all(topic).iter().map(Record::json).collect();
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} with {} events ({} distinct ids) on {topic}", events.len(), events.iter().map(|e| e["eventId"].to_string()).collect::<std::collections::HashSet<_>>().len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Asserts two event lists hold the same events in the same order for every
/// reservation; on failure names the first reservation that differs, briefly.
pub fn assert_same_per_reservation(got: &[serde_json::Value], expected: &[serde_json::Value]) {
    let (g, e) = (per_reservation(got), per_reservation(expected));
    let brief = |v: &[serde_json::Value]| v.iter().map(|x| format!("{}@{}", x["eventType"].as_str().unwrap_or("?"), x["sourcePosition"].as_str().unwrap_or("?"))).collect::<Vec<_>>().join(" ");
    let mut bad = Vec::new();
    for id in g.keys().chain(e.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = (g.get(id).map(Vec::as_slice).unwrap_or_default(), e.get(id).map(Vec::as_slice).unwrap_or_default());
        if a != b {
            bad.push(format!("reservation {id}:\n    got      {}\n    expected {}", brief(a), brief(b)));
        }
    }
    assert!(bad.is_empty(), "{} of {} reservations differ ({} events got, {} expected); first ones:\n  {}", bad.len(), e.len(), got.len(), expected.len(), bad.iter().take(3).cloned().collect::<Vec<_>>().join("\n  "));
}

/// A plain HTTP/1.1 GET over loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_string() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

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
