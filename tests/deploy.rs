//! The Kubernetes manifests in `deploy/kubernetes/`: valid against the (vendored, strict)
//! Kubernetes JSON schemas; the ConfigMap's `rapport.toml` loads and passes the start-up checks;
//! every `RAPPORT_*` variable the StatefulSet sets names a key of `config/default.toml`.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The block scalar under `rapport.toml: |` in the ConfigMap, unindented.
fn configmap_toml() -> String {
    let yaml = read("deploy/kubernetes/configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "rapport.toml: |").skip(1);
    let first = lines.next().expect("rapport.toml has content");
    let indent = first.len() - first.trim_start().len();
    let mut out = vec![first[indent..].to_owned()];
    for l in lines {
        if l.trim().is_empty() {
            out.push(String::new());
        } else if l.len() - l.trim_start().len() >= indent {
            out.push(l[indent..].to_owned());
        } else {
            break;
        }
    }
    out.join("\n")
}

#[test]
fn the_configmap_configuration_loads_and_passes_the_start_up_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rapport.toml");
    std::fs::write(&path, configmap_toml()).unwrap();
    let cfg = rapport::config::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.mode, rapport::config::Mode::Kafka);
    assert_eq!(cfg.kafka.output_partitions, cfg.engine.partitions as u32);
    assert!(!cfg.kafka.changelog_topic.is_empty());
}

#[test]
fn every_variable_the_statefulset_sets_is_a_configuration_key() {
    let defaults: toml::Table = read("config/default.toml").parse().unwrap();
    let sts = read("deploy/kubernetes/statefulset.yaml");
    let names: Vec<&str> = sts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: RAPPORT_"))
        .collect();
    assert!(names.len() >= 4, "the StatefulSet configures rapport through variables");
    for name in names {
        let (section, key) = name
            .split_once("__")
            .unwrap_or_else(|| panic!("RAPPORT_{name} is not RAPPORT_<SECTION>__<KEY>"));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        assert!(
            defaults
                .get(&section)
                .and_then(|s| s.get(&key))
                .is_some(),
            "RAPPORT_{name}: there is no key {section}.{key} in config/default.toml"
        );
    }
}

#[test]
fn the_manifests_are_valid_against_the_kubernetes_schemas() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/validate.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs (./dev.sh test installs jsonschema and PyYAML)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/kubernetes/validate.py:\n{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}
