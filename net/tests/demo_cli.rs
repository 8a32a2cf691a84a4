//! `kvroute demo` as a user runs it: both modes finish, every check passes, and the
//! cache-aware router beats round-robin on prefix-cache hits.

use std::process::Command;

/// One demo at a time: they are CPU-bound, and the live one compares timing-dependent
/// routing (a router starved of CPU applies its engines' events late) with round-robin.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn demo(args: &[&str]) -> String {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["demo", "--quiet"])
        .args(if args.contains(&"--requests") { &[][..] } else { &["--requests", "1500"][..] })
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

/// Every policy's row label, in the demo's order.
const POLICIES: [&str; 8] = [
    "kvroute predicted TTFT (default)",
    "kvroute cost (Dynamo's)",
    "SGLang cache_aware",
    "llm-d weighted scorers",
    "largest overlap",
    "least loaded",
    "round-robin",
    "random",
];

fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse().unwrap_or_else(|_| panic!("not a percentage: {cell}"))
}

#[test]
fn aggregated_demo_is_exact_and_beats_round_robin() {
    let out = demo(&[]);
    assert!(out.contains("predicted overlap equal to the engine's reuse: 1500/1500"), "{out}");
    let ceiling = percent(cells(&out, "ceiling (one unlimited cache)")[0]);
    for label in POLICIES {
        let row = cells(&out, label);
        // Hit rate, its share of the ceiling, TTFT p50 and p99 in readable units ("2.63 s",
        // "1 min 02 s"), two spreads, the cache taken, the decision's latency in microseconds.
        assert!(row.len() >= 11 && row[row.len() - 1] == "us", "{label}: {row:?}\n{out}");
        assert!(percent(row[0]) <= ceiling, "{label} reused more than the ceiling:\n{out}");
        let share: f64 = row[1].parse().unwrap_or_else(|_| panic!("{label}: share {:?}", row[1]));
        // Both percentages and the share are rounded.
        assert!((share - percent(row[0]) / ceiling).abs() < 0.01, "{label}: share {share}\n{out}");
        // Cache taken: chosen over best overlap, a percentage, just before the latency.
        let taken = percent(row[row.len() - 3]);
        assert!((0.0..=100.0).contains(&taken), "{label}: cache taken {taken}\n{out}");
    }
    let ours = percent(cells(&out, POLICIES[0])[0]);
    assert!(ours > percent(cells(&out, "round-robin")[0]), "kvroute should reuse more than round-robin:\n{out}");

    // The replicas table: one router is the default policy's replay above, again.
    let single = cells(&out, "1 router");
    let default_row = cells(&out, POLICIES[0]);
    assert_eq!(single[0], default_row[0], "hit rate:\n{out}");
    // Hit rate, p50 and p99 (a value and a unit each), then p99 / 1 router.
    assert_eq!(&single[3..5], &default_row[4..6], "TTFT p99:\n{out}");
    assert_eq!(single[5], "1.00", "{out}");
    for label in ["2 replicas, own bookkeeping", "2 replicas + engine reports/500ms"] {
        let row = cells(&out, label);
        assert!(percent(row[0]) <= ceiling, "{label}:\n{out}");
        let ratio: f64 = row[5].parse().unwrap_or_else(|_| panic!("{label}: p99 ratio {:?}\n{out}", row[5]));
        assert!(ratio > 0.0, "{label}:\n{out}");
    }
}

#[test]
fn one_replica_skips_the_replicas_table_and_zero_is_refused() {
    let out = demo(&["--replicas", "1", "--requests", "300"]);
    assert!(out.contains("predicted overlap equal to the engine's reuse: 300/300"), "{out}");
    assert!(!out.contains("router replicas"), "{out}");
    let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["demo", "--quiet", "--replicas", "0"])
        .output()
        .expect("run kvroute");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--replicas"), "{output:?}");
    for bad in ["-1", "nan", "inf", "hot"] {
        let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
            .args(["demo", "--quiet", "--replica-temperature", bad])
            .output()
            .expect("run kvroute");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("finite number >= 0"), "{bad}: {output:?}");
    }
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
fn live_demo_serves_every_request_over_sockets_and_kvroute_reuses_more() {
    // A short run on a lightly loaded fleet (2 engines x 2 ranks, fast simulated GPUs, caches
    // large enough for the whole run): 400 requests, whose prompts could reuse 13.5% of
    // their blocks with an infinite cache, sent at 20x the trace's pace.
    let out = demo(&[
        "--live",
        "--requests",
        "400",
        "--speedup",
        "20",
        "--workers",
        "2",
        "--dp-size",
        "2",
        "--prefill-us-per-token",
        "2",
        "--decode-ms-per-token",
        "1",
        "--capacity-tokens",
        "4194304",
    ]);
    assert_eq!(cells(&out, "errors"), ["0", "0"], "{out}");
    let cached = cells(&out, "cached prompt tokens");
    assert!(percent(cached[0]) > percent(cached[1]), "kvroute should find more of the prompts cached:\n{out}");
    assert_eq!(cells(&out, "TTFT p50").len(), 4, "two policies, a value and its unit each:\n{out}");
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

/// Every `<text>` of the report's SVG charts, trimmed, one a line.
fn chart_texts(doc: &roxmltree::Document<'_>) -> String {
    let texts = doc.descendants().filter(|n| n.tag_name().name() == "text");
    texts.map(|n| n.text().unwrap_or("").trim()).collect::<Vec<_>>().join("\n")
}

#[test]
fn report_writes_one_page_of_four_charts_naming_every_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.html");
    let out = demo(&["--report", path.to_str().expect("utf-8 temp path")]);
    // The table still prints, and the report is named after it.
    let ceiling = cells(&out, "ceiling (one unlimited cache)")[0];
    assert!(cells(&out, "round-robin").len() >= 11, "{out}");
    assert!(out.contains(&format!("report: {}", path.display())), "{out}");
    let html = std::fs::read_to_string(&path).expect("the report was written");
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&html, options).expect("the report is well-formed XML");
    let charts = doc.descendants().filter(|n| n.tag_name().name() == "svg").count();
    assert_eq!(charts, 4, "{html}");
    assert_eq!(doc.descendants().filter(|n| n.tag_name().name() == "figcaption").count(), 4);
    let texts = chart_texts(&doc);
    for title in [
        "Prefix-cache hit rate per policy",
        "Time to first token: CDF per policy",
        "Cache taken: overlap achieved against available",
    ] {
        assert!(texts.lines().any(|l| l == title), "no chart titled {title:?}");
    }
    for label in POLICIES {
        // A hit-rate row, a TTFT legend entry and a cache-taken row at least.
        let named = texts.lines().filter(|l| *l == label).count();
        assert!(named >= 3, "{label:?} named {named} times in the charts");
    }
    // The ceiling's line is labelled with the table's figure.
    assert!(texts.contains(&format!("ceiling (one unlimited cache): {ceiling}")), "{ceiling}\n{texts}");
    assert!(html.contains("1500 requests of the built-in Mooncake conversation trace"), "{html}");
    assert!(!html.contains("<script") && !html.contains("href=") && !html.contains("src="));
}

#[test]
fn report_is_refused_outside_the_aggregated_demo() {
    for mode in ["--disagg", "--live"] {
        let output = Command::new(env!("CARGO_BIN_EXE_kvroute"))
            .args(["demo", "--quiet", mode, "--report", "unused.html"])
            .output()
            .expect("run kvroute");
        assert!(!output.status.success(), "{mode}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--report charts the aggregated demo"), "{mode}: {stderr}");
    }
    assert!(!std::path::Path::new("unused.html").exists());
}
