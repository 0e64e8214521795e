//! The Kafka-protocol brokers the tests run against, and what a test does to
//! them: create topics, produce records, cut the network.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::process::{free_port, spawn_listening};
use super::tls::Certs;

/// How long a broker (or the TLS terminator in front of it) may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// Tansu listening on a port of its own and advertising another (`front`),
/// where something in front of it (a proxy, a TLS terminator) takes clients.
/// Always Tansu, even when RESEVENT_TEST_BOOTSTRAP is set: an external broker
/// cannot be put behind that front. Returns (process, port, front).
fn tansu_behind_a_front(prefix: &str) -> (Child, u16, u16) {
    let tansu = std::env::var("RESEVENT_TANSU").unwrap_or_else(|_| panic!("this test needs RESEVENT_TANSU, a tansu binary (scripts/test installs it)"));
    let (port, front) = (free_port(), free_port());
    let mut cmd = Command::new(&tansu);
    cmd.args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}"), "--advertised-listener-url", &format!("tcp://127.0.0.1:{front}"), "--storage-engine", "memory://tansu/"]);
    (spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log")), LISTEN_WITHIN), port, front)
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
        let child = spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log")), LISTEN_WITHIN);
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
        let child = spawn_listening(cmd, port, &std::env::temp_dir().join(format!("tansu-{prefix}.log")), LISTEN_WITHIN);
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
        let child = spawn_listening(cmd, port, &dir.join("noida.log"), LISTEN_WITHIN);
        Broker { bootstrap: format!("127.0.0.1:{port}"), process: Some(child), own_group: true, prefix, client_settings: Vec::new(), helpers: Vec::new() }
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// A client configuration for this broker, with the settings the test's own clients need.
    pub(super) fn client(&self) -> ClientConfig {
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
        let stunnel_child = spawn_listening(cmd, front, &std::env::temp_dir().join(format!("stunnel-{prefix}.log")), LISTEN_WITHIN);
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
