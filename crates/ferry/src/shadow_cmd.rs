//! Shadow traffic from the operator's side: `ferry shadow --sample N%`, `ferry shadow report`,
//! and the report's JSON form (served by `GET /api/shadow`).

use std::time::SystemTime;

use serde_json::{json, Value};

/// Seconds since the Unix epoch, for JSON.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn latency(l: &ferry_proxy::Latency) -> Value {
    json!({ "p50_ms": l.p50_ms, "p95_ms": l.p95_ms, "p99_ms": l.p99_ms })
}

/// The report as JSON. Without `examples`, the statements and error messages of the examples
/// (which may hold values from the application's data) are left out; fingerprints never hold
/// values.
pub fn report_json(r: &ferry_proxy::ShadowReport, examples: bool, top: usize) -> Value {
    let hidden = || json!("(hidden: needs the API token)");
    let fingerprints: Vec<Value> = r
        .fingerprints
        .iter()
        .take(top)
        .map(|f| {
            json!({
                "fingerprint": f.fingerprint,
                "executions": f.executions,
                "matched": f.matched,
                "mismatches": f.mismatches,
                "transient": f.transient,
                "unstable": f.unstable,
                "target_errors": f.target_errors,
                "writes": f.writes,
                "failures": f.failures,
                "source_latency": latency(&f.source_latency),
                "target_latency": latency(&f.target_latency),
                "slowdown": f.slowdown,
                "mismatch": f.mismatch.as_ref().map(|m| json!({
                    "sql": if examples { json!(m.sql) } else { hidden() },
                    "source": m.source,
                    "target": m.target,
                    "at": unix(m.at),
                })),
                "target_error": f.target_error.as_ref().map(|e| json!({
                    "sql": if examples { json!(e.sql) } else { hidden() },
                    "code": e.code,
                    "message": if examples { json!(e.message) } else { hidden() },
                    "at": unix(e.at),
                })),
            })
        })
        .collect();
    json!({
        "sample_percent": r.sample_percent,
        "since": r.since.map(unix),
        "suspended": r.suspended.as_ref().map(|(why, until)| json!({ "reason": why, "until": unix(*until) })),
        "dropped": r.dropped,
        "skipped_lagging": r.skipped_lagging,
        "pending": r.pending,
        "last_problem": r.last_problem.map(unix),
        "fingerprints_total": r.fingerprints.len(),
        "mismatches": r.fingerprints.iter().map(|f| f.mismatches).sum::<u64>(),
        "target_errors": r.fingerprints.iter().map(|f| f.target_errors).sum::<u64>(),
        "executions": r.fingerprints.iter().map(|f| f.executions).sum::<u64>(),
        "fingerprints": fingerprints,
        "examples_hidden": !examples,
    })
}

/// Whether the report lets a cutover go when "no shadow mismatch in the last `window`" is
/// asked for: shadowing must have run the whole window, with no mismatch nor target-only
/// error in it. Err: the reason for a No-Go.
pub fn clean_for(r: &ferry_proxy::ShadowReport, window: std::time::Duration) -> Result<(), String> {
    let now = SystemTime::now();
    let Some(since) = r.since else {
        return Err("shadow traffic is off (ferry shadow --sample N%)".into());
    };
    if let Some(t) = r.last_problem {
        let ago = now.duration_since(t).unwrap_or_default();
        if ago < window {
            let worst = r.fingerprints.iter().find(|f| f.mismatches > 0 || f.target_errors > 0);
            return Err(format!(
                "shadow traffic found a problem {:.0} s ago{} (ferry shadow report)",
                ago.as_secs_f64(),
                worst.map(|f| format!(" in `{}`", f.fingerprint)).unwrap_or_default()
            ));
        }
    }
    let ran = now.duration_since(since).unwrap_or_default();
    if ran < window {
        return Err(format!(
            "shadow traffic has run {:.0} s of the {:.0} s asked for",
            ran.as_secs_f64(),
            window.as_secs_f64()
        ));
    }
    if r.fingerprints.iter().map(|f| f.executions).sum::<u64>() == 0 {
        return Err("shadow traffic has compared no statement yet".into());
    }
    Ok(())
}

/// A report (its JSON) for a human: problems first, then the slowest fingerprints.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let pct = v["sample_percent"].as_f64().unwrap_or(0.0);
    out.push_str(&format!(
        "shadow traffic: {} ({} statements compared in {} fingerprints; {} mismatch(es), {} target-only error(s); {} sample(s) dropped, {} skipped while the target lagged)\n",
        if pct > 0.0 { format!("sampling {pct}%") } else { "off".into() },
        v["executions"],
        v["fingerprints_total"],
        v["mismatches"],
        v["target_errors"],
        v["dropped"],
        v["skipped_lagging"],
    ));
    if let Some(s) = v["suspended"].as_object() {
        out.push_str(&format!("SUSPENDED: {}\n", s["reason"].as_str().unwrap_or("")));
    }
    let empty = vec![];
    let fps = v["fingerprints"].as_array().unwrap_or(&empty);
    let section = |out: &mut String, title: &str, pick: &dyn Fn(&Value) -> bool, detail: &dyn Fn(&Value) -> String| {
        let chosen: Vec<&Value> = fps.iter().filter(|f| pick(f)).collect();
        if chosen.is_empty() {
            return;
        }
        out.push_str(&format!("\n{title}\n"));
        for f in chosen {
            out.push_str(&format!("  {}\n    {}\n", f["fingerprint"].as_str().unwrap_or(""), detail(f)));
        }
    };
    section(
        &mut out,
        "MISMATCHES (the target answered differently, and still did when checked again)",
        &|f| f["mismatches"].as_u64().unwrap_or(0) > 0,
        &|f| {
            let m = &f["mismatch"];
            format!(
                "{} of {} run(s); e.g. {}\n    source: {}\n    target: {}",
                f["mismatches"], f["executions"], m["sql"], m["source"], m["target"]
            )
        },
    );
    section(
        &mut out,
        "FAILED ONLY ON THE TARGET (missing function, extension, permission, ...)",
        &|f| f["target_errors"].as_u64().unwrap_or(0) > 0,
        &|f| {
            let e = &f["target_error"];
            format!(
                "{} of {} run(s); {} {}; e.g. {}",
                f["target_errors"], f["executions"], e["code"], e["message"], e["sql"]
            )
        },
    );
    out.push_str("\nSLOWEST ON THE TARGET RELATIVE TO THE SOURCE (p50 / p95 / p99, ms)\n");
    let mut by_slowdown: Vec<&Value> = fps.iter().collect();
    by_slowdown.sort_by(|a, b| {
        b["slowdown"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&a["slowdown"].as_f64().unwrap_or(0.0))
    });
    for f in by_slowdown.iter().take(10) {
        let l = |side: &str, q: &str| f[side][q].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "  {:>6.1}x  source {:.2} / {:.2} / {:.2}  target {:.2} / {:.2} / {:.2}  ({} runs)  {}\n",
            f["slowdown"].as_f64().unwrap_or(0.0),
            l("source_latency", "p50_ms"),
            l("source_latency", "p95_ms"),
            l("source_latency", "p99_ms"),
            l("target_latency", "p50_ms"),
            l("target_latency", "p95_ms"),
            l("target_latency", "p99_ms"),
            f["executions"],
            f["fingerprint"].as_str().unwrap_or(""),
        ));
    }
    if fps.is_empty() {
        out.push_str("  (nothing compared yet)\n");
    }
    out
}

/// `ferry shadow --sample N%` and `ferry shadow report`.
pub async fn command(args: &crate::cli::ShadowArgs) -> anyhow::Result<i32> {
    let (a, path, method) = match (&args.action, args.sample) {
        (Some(crate::cli::ShadowAction::Report { top, api }), _) => (api, format!("/api/shadow?top={top}"), "GET"),
        (None, Some(p)) => (&args.api, format!("/api/shadow?sample={p}"), "POST"),
        (None, None) => {
            return Err(crate::exit::UsageError(
                "say what to do: ferry shadow --sample 10% (start, or 0% to stop) or ferry shadow report".into(),
            )
            .into())
        }
    };
    let api = crate::status::ApiClient::new(&a.api, a.api_token_file.as_deref(), a.api_ca.as_deref())?;
    let (code, body) = api.request(method, &path).await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&body) }));
    match code {
        200 => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if method == "GET" {
                print!("{}", render(&v));
            } else {
                println!("shadow traffic: sampling {}% (was {}%)", v["sample"], v["previous"]);
            }
            Ok(crate::exit::OK)
        }
        401 | 403 => Err(crate::exit::UsageError(format!(
            "the Ferry API at {} refused ({code}): {}",
            api.base,
            crate::status::api_error(&body)
        ))
        .into()),
        409 => {
            eprintln!("ferry: {}", crate::status::api_error(&body));
            Ok(crate::exit::FOUND_PROBLEM)
        }
        _ => anyhow::bail!("the Ferry API at {} answered {code}: {}", api.base, crate::status::api_error(&body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(since_s: Option<u64>, problem_s: Option<u64>, executions: u64) -> ferry_proxy::ShadowReport {
        let ago = |s: u64| SystemTime::now() - Duration::from_secs(s);
        let lat = ferry_proxy::Latency::default();
        ferry_proxy::ShadowReport {
            sample_percent: 10.0,
            since: since_s.map(ago),
            suspended: None,
            dropped: 0,
            skipped_lagging: 0,
            pending: 0,
            last_problem: problem_s.map(ago),
            fingerprints: vec![ferry_proxy::FingerprintReport {
                fingerprint: "select ?".into(),
                executions,
                matched: executions,
                mismatches: u64::from(problem_s.is_some()),
                transient: 0,
                unstable: 0,
                target_errors: 0,
                writes: 0,
                failures: 0,
                source_latency: lat,
                target_latency: lat,
                slowdown: 1.0,
                mismatch: None,
                target_error: None,
            }],
        }
    }

    #[test]
    fn the_shadow_go_no_go_needs_a_long_enough_clean_run() {
        let w = Duration::from_secs(600);
        assert!(clean_for(&report(Some(700), None, 50), w).is_ok());
        assert!(
            clean_for(&report(Some(700), Some(900), 50), w).is_ok(),
            "a problem before the window"
        );
        let e = clean_for(&report(Some(700), Some(30), 50), w).unwrap_err();
        assert!(e.contains("found a problem 30 s ago in `select ?`"), "{e}");
        let e = clean_for(&report(Some(100), None, 50), w).unwrap_err();
        assert!(e.contains("has run 100 s of the 600 s"), "{e}");
        assert!(clean_for(&report(None, None, 50), w).unwrap_err().contains("off"));
        assert!(clean_for(&report(Some(700), None, 0), w).unwrap_err().contains("no statement"));
    }
}
