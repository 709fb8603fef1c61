//! The monitoring files in deploy/: they parse, they are complete, and (with the API test)
//! every metric they use is one `ferry migrate` exports.

use std::path::PathBuf;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn grafana() -> Value {
    serde_json::from_str(&repo_file("deploy/grafana/ferry-dashboard.json")).expect("the Grafana dashboard is valid JSON")
}

fn alert_rules() -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&repo_file("deploy/prometheus/ferry-alerts.yml")).expect("the alert rules are valid YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list").clone();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules in every group").clone())
        .collect()
}

/// Every `ferry_*` metric name in a PromQL expression.
fn names_in(expr: &str, out: &mut Vec<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ferry_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary && !out.iter().any(|n| n == &expr[start..end]) {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
}

/// Every Ferry metric the dashboard and the alert rules use.
pub fn referenced_metrics() -> Vec<String> {
    let mut names = Vec::new();
    for panel in grafana()["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            names_in(t["expr"].as_str().unwrap(), &mut names);
        }
    }
    names_in(grafana()["templating"]["list"][1]["definition"].as_str().unwrap(), &mut names);
    for rule in alert_rules() {
        names_in(rule["expr"].as_str().unwrap(), &mut names);
    }
    names
}

#[test]
fn grafana_dashboard_and_alert_rules_are_complete() {
    let g = grafana();
    assert_eq!(g["uid"], "ferry-migration");
    let panels = g["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = Vec::new();
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "a panel without a title: {p}");
        assert!(p["gridPos"]["w"].as_i64().is_some(), "{p}");
        ids.push(p["id"].as_i64().unwrap());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let mut names = Vec::new();
            names_in(expr, &mut names);
            assert!(!names.is_empty(), "panel {} queries no Ferry metric: {expr}", p["title"]);
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");

    let rules = alert_rules();
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().expect("every rule is an alert")).collect();
    for wanted in [
        "FerryReplicationLagHigh",
        "FerryDeadLetters",
        "FerryApplyErrors",
        "FerryPhaseStuck",
        "FerryFullLoadStuck",
        "FerrySlotRetainsTooMuchWAL",
    ] {
        assert!(alerts.contains(&wanted), "{wanted} missing from {alerts:?}");
    }
    for r in &rules {
        assert!(r["expr"].as_str().is_some_and(|e| e.contains("ferry_")), "{r:?}");
        assert!(matches!(r["labels"]["severity"].as_str(), Some("warning" | "critical")), "{r:?}");
        assert!(r["annotations"]["summary"].as_str().is_some(), "{r:?}");
    }
    let names = referenced_metrics();
    for n in &names {
        assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{n}");
    }
    assert!(names.iter().any(|n| n == "ferry_replication_lag_seconds"));
}
