//! deploy/kubernetes/ as written: valid against the Kubernetes API's schemas
//! (offline, `kubernetes-validate`, which scripts/test installs), every
//! RESEVENT_* variable a setting `resevent run` knows, the probes on the
//! endpoints and port resevent serves, and the pipeline the default one.

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("deploy/kubernetes/{name}: {e}"))
}

const MANIFESTS: [&str; 4] = ["statefulset.yaml", "service.yaml", "poddisruptionbudget.yaml", "secret.yaml"];

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let validate = std::env::var("RESEVENT_K8S_VALIDATE").expect("RESEVENT_K8S_VALIDATE: run the tests through scripts/test, which installs kubernetes-validate");
    let out = Command::new(&validate).arg("--strict").args(MANIFESTS).current_dir(dir()).output().unwrap_or_else(|e| panic!("running {validate}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), MANIFESTS.len(), "{text}");
    // Everything the kustomization lists is there.
    let kustomization = read("kustomization.yaml");
    for m in MANIFESTS {
        assert!(kustomization.contains(&format!("- {m}")), "kustomization.yaml lists {m}");
    }
}

/// `RESEVENT_*` names set by the StatefulSet and the Secret.
fn variables() -> Vec<String> {
    let mut names = Vec::new();
    for line in read("statefulset.yaml").lines() {
        if let Some(name) = line.trim().strip_prefix("- name: RESEVENT_") {
            names.push(format!("RESEVENT_{}", name.trim()));
        }
    }
    for line in read("secret.yaml").lines() {
        if let Some((name, _)) = line.trim().split_once(':').filter(|(n, _)| n.starts_with("RESEVENT_")) {
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn every_variable_the_manifests_set_is_a_setting_resevent_run_knows() {
    let names = variables();
    assert!(names.len() >= 10, "{names:?}");
    let config = serde_json::to_value(resevent::run::config::RunConfig::default()).unwrap();
    let mut unknown = Vec::new();
    for name in &names {
        let key = name.trim_start_matches("RESEVENT_");
        let known = if let Some(setting) = ["KAFKA__", "CONSUMER__", "PRODUCER__"].iter().find_map(|p| key.strip_prefix(p)) {
            // A librdkafka property: librdkafka itself says whether it knows it.
            let property = setting.to_lowercase().replace('_', ".");
            let value = if property == "sasl.mechanism" { "PLAIN" } else if property == "security.protocol" { "SASL_SSL" } else { "x" };
            rdkafka::ClientConfig::new().set(&property, value).create_native_config().is_ok()
        } else if let Some(field) = key.strip_prefix("SCHEMA_REGISTRY__") {
            config["schema_registry"].get(field.to_lowercase()).is_some()
        } else {
            // Log settings are the command line's (--log-format), read from the environment.
            config.get(key.to_lowercase()).is_some() || key == "LOG_FORMAT"
        };
        if !known {
            unknown.push(name.clone());
        }
    }
    assert!(unknown.is_empty(), "variables resevent run does not know: {unknown:?}");
}

#[test]
fn the_probes_and_the_pipeline_match_what_resevent_serves() {
    let sts = read("statefulset.yaml");
    assert!(sts.contains("path: /readyz") && sts.contains("path: /healthz") && sts.contains("prometheus.io/path: /metrics"), "probes on /readyz and /healthz, scraping /metrics");
    // The port resevent serves on by default, which the pod also sets explicitly.
    let help = Command::new(env!("CARGO_BIN_EXE_resevent")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("127.0.0.1:9464"), "the default HTTP port: {help}");
    assert!(sts.contains("containerPort: 9464") && sts.contains("value: \"0.0.0.0:9464\"") && sts.contains("prometheus.io/port: \"9464\""), "one port everywhere");
    assert!(sts.contains("fieldPath: metadata.name") && sts.contains("RESEVENT_CONSUMER__GROUP_INSTANCE_ID"), "static membership from the pod name");
    assert_eq!(read("pipeline.toml"), std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/reservations.toml")).unwrap(), "the ConfigMap's pipeline is the default one");
}
