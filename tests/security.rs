//! resevent against a broker it can reach only through TLS (Tansu behind
//! stunnel, with certificates made here by openssl), and secrets kept out of
//! everything it prints.

mod common;

use std::time::Duration;

use common::*;

fn tls_env(certs: &Certs, ca: &str, client_cert: bool) -> Vec<(String, String)> {
    let mut env = vec![("RESEVENT_KAFKA__SECURITY_PROTOCOL".to_string(), "SSL".to_string()), ("RESEVENT_KAFKA__SSL_CA_LOCATION".to_string(), certs.path(ca))];
    if client_cert {
        env.push(("RESEVENT_KAFKA__SSL_CERTIFICATE_LOCATION".into(), certs.path("client.pem")));
        env.push(("RESEVENT_KAFKA__SSL_KEY_LOCATION".into(), certs.path("client.key")));
    }
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs `resevent run` over TLS to completion of `records` and compares with replay.
fn drains_like_replay(broker: &Broker, env: &[(String, String)], seed: u64) {
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(100, 2000, seed);
    let expected = replay_events(&records);
    broker.produce(&input, &records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let i = Instance::start_with(broker, &input, &app, state.path(), "a", &[], &env_refs(env));
    let got = wait_for(broker, &out, Duration::from_secs(120), |e| dedup(e).len() >= expected.len());
    assert_eq!(i.terminate(), Some(0));
    assert_same_per_reservation(&dedup(&got), &expected);
}

/// Starts an instance that must fail to connect; returns its exit code and log.
fn refused(broker: &Broker, env: &[(String, String)], tag: &str) -> (Option<i32>, String) {
    let input = broker.name("raw");
    let state = tempfile::tempdir().unwrap();
    Instance::start_with(broker, &input, &broker.name(tag), state.path(), tag, &[], &env_refs(env)).wait_exit(Duration::from_secs(120))
}

#[test]
fn tls_end_to_end_a_wrong_ca_is_refused_by_name_and_mtls_needs_the_client_certificate() {
    let certs = Certs::make();

    let broker = Broker::start_behind_tls("tls", &certs, false);
    drains_like_replay(&broker, &tls_env(&certs, "ca.pem", false), 51);
    // A CA that did not sign the broker: a non-zero exit that says why.
    let (code, log) = refused(&broker, &tls_env(&certs, "other-ca.pem", false), "wrongca");
    assert_ne!(code, Some(0));
    assert!(log.contains("certificate verify failed"), "{log}");

    // mTLS: stunnel demands a client certificate signed by the CA.
    let mtls = Broker::start_behind_tls("mtls", &certs, true);
    drains_like_replay(&mtls, &tls_env(&certs, "ca.pem", true), 52);
    let (code, log) = refused(&mtls, &tls_env(&certs, "ca.pem", false), "nocert");
    assert_ne!(code, Some(0), "{log}");
}

#[test]
fn a_secret_quoted_in_librdkafkas_error_is_not_printed() {
    let broker = Broker::start("secret");
    let input = broker.name("raw");
    broker.create_topic(&input, 1, &[]);
    let state = tempfile::tempdir().unwrap();
    // The key password pasted into the wrong setting: librdkafka refuses it
    // and quotes the value it refused.
    let env = [("RESEVENT_KAFKA__SSL_KEY_PASSWORD", "hunter2-s3cret"), ("RESEVENT_KAFKA__SECURITY_PROTOCOL", "hunter2-s3cret")];
    let (code, log) = Instance::start_with(&broker, &input, &broker.name("app"), state.path(), "a", &[], &env).wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0));
    assert!(log.contains("security.protocol"), "the error names the setting: {log}");
    assert!(!log.contains("hunter2-s3cret"), "{log}");
    assert!(log.contains("*****"), "{log}");
}

#[test]
fn sasl_scram_is_spoken_to_a_broker_that_requires_it_and_a_refused_login_is_named_without_the_password() {
    // Tansu --authentication answers the SCRAM exchange (SASL_PLAINTEXT here;
    // SASL_SSL adds the TLS tested above). It has no user to log in as (see
    // Broker::start_requiring_sasl), so this shows the mechanism is built in
    // and negotiated with a real broker, and how a refusal is reported.
    let broker = Broker::start_requiring_sasl("sasl");
    let env: Vec<(String, String)> = [
        ("RESEVENT_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("RESEVENT_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
        ("RESEVENT_KAFKA__SASL_USERNAME", "resevent"),
        ("RESEVENT_KAFKA__SASL_PASSWORD", "scram-Pass-808"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, log) = refused(&broker, &env, "login");
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("SASL") && log.contains("SCRAM"), "names the failed SCRAM login: {log}");
    assert!(!log.contains("scram-Pass-808"), "{log}");
}
