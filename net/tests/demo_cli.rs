//! `kvroute demo` as a user runs it: both modes finish, every check passes, and the
//! cache-aware router beats round-robin on prefix-cache hits.

use std::process::Command;

fn demo(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["demo", "--quiet", "--requests", "1500"])
        .args(args)
        .output()
        .expect("run kvroute");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kvroute demo {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The cells of the table row that starts with `label`.
fn cells<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} row in\n{stdout}"));
    line[label.len()..].split_whitespace().collect()
}

fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse().unwrap_or_else(|_| panic!("not a percentage: {cell}"))
}

#[test]
fn aggregated_demo_is_exact_and_beats_round_robin() {
    let out = demo(&[]);
    assert!(out.contains("predicted overlap equal to the engine's reuse: 1500/1500"), "{out}");
    let hits = cells(&out, "prefix-cache hit rate");
    assert_eq!(hits.len(), 3, "{out}");
    assert!(percent(hits[0]) > percent(hits[2]), "kvroute should reuse more than round-robin:\n{out}");
}

#[test]
fn disaggregated_demo_checks_every_room() {
    let out = demo(&["--disagg", "--prefill-dp", "4", "--decode-dp", "2"]);
    assert!(
        out.contains("room % 4 == prefill rank for 1500/1500 requests; decode fields resolve to it for 1500/1500; 1500 distinct rooms"),
        "{out}"
    );
    let hits = cells(&out, "prefill prefix-cache hit rate");
    assert!(percent(hits[0]) > percent(hits[1]), "{out}");
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["demo", "--quiet", "--disagg", "--prefill-dp", "0"])
        .output()
        .expect("run kvroute");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DP size must be at least 1"), "{stderr}");
}
