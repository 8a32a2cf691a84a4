use super::charts::cdf_points;
use super::*;

fn sample(at_ms: u64, active: &[u64]) -> LoadSample {
    LoadSample { at_ms, active: active.to_vec() }
}

/// Three policies (one with an apostrophe, escaped in SVG and HTML), two load panels.
fn input<'a>(ttft: &'a [u64], load: &'a [LoadSample]) -> ReportInput<'a> {
    let policy = |label, hit_rate, chosen, best| PolicyRun {
        label,
        hit_rate,
        ttft_us: ttft,
        chosen_overlap_blocks: chosen,
        best_overlap_blocks: best,
        load_over_time: load,
    };
    ReportInput {
        run: RunParameters {
            trace: "trace <a&b>.jsonl".into(),
            requests: 4,
            workers: 2,
            dp_size: 2,
            block_size: 16,
            capacity_tokens: 4096,
            prefill_tokens_per_ms: 2,
        },
        ceiling_label: "ceiling (one unlimited cache)",
        ceiling_hit_rate: 0.5,
        policies: vec![
            policy("kvroute predicted TTFT (default)", 0.4, 90, 100),
            policy("kvroute cost (Dynamo's)", 0.3, 70, 100),
            policy("round-robin", 0.1, 10, 80),
        ],
        load_panels: vec![0, 2],
    }
}

fn synthetic() -> String {
    let ttft = [0, 8_000, 120_000, 3_000_000, 95_000_000];
    let load = [sample(1_000, &[0, 1, 2, 0]), sample(61_000, &[3, 1, 2, 2]), sample(121_000, &[1, 0, 0, 1])];
    render(&input(&ttft, &load)).expect("render")
}

/// The page as XML (its `<!DOCTYPE html>` is a DTD to roxmltree).
fn parse(html: &str) -> Result<roxmltree::Document<'_>, roxmltree::Error> {
    roxmltree::Document::parse_with_options(html, roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() })
}

/// Every `<text>` element's text in `svg`, joined by newlines.
fn svg_texts(svg: &roxmltree::Document<'_>) -> String {
    let texts = svg.descendants().filter(|n| n.tag_name().name() == "text");
    texts.map(|n| n.text().unwrap_or("").trim()).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_page_is_xml_with_four_svg_charts_titled_and_captioned() {
    let html = synthetic();
    let doc = parse(&html).expect("the page is well-formed XML");
    let svgs: Vec<_> = doc.descendants().filter(|n| n.tag_name().name() == "svg").collect();
    assert_eq!(svgs.len(), 4, "{html}");
    assert_eq!(html.matches("<svg").count(), 4);
    let figures = doc.descendants().filter(|n| n.tag_name().name() == "figure").count();
    let captions = doc.descendants().filter(|n| n.tag_name().name() == "figcaption").count();
    assert_eq!((figures, captions), (4, 4));
    let titles = [
        "Prefix-cache hit rate per policy",
        "Time to first token: CDF per policy",
        "kvroute predicted TTFT (default)",
        "Cache taken: overlap achieved against available",
    ];
    for (svg, title) in svgs.iter().zip(titles) {
        let texts: Vec<_> = svg.descendants().filter(|n| n.tag_name().name() == "text").collect();
        assert!(texts.iter().any(|t| t.text().map(str::trim) == Some(title)), "no {title:?} in chart");
    }
    // The run's parameters, escaped.
    let header = doc.descendants().find(|n| n.tag_name().name() == "p").and_then(|n| n.text()).unwrap_or("");
    assert!(header.contains("trace <a&b>.jsonl") && header.contains("block size 16"), "{header}");
}

#[test]
fn every_policy_is_named_and_the_ceiling_drawn() {
    let html = synthetic();
    let doc = parse(&html).expect("well-formed");
    let texts = svg_texts(&doc);
    for label in ["kvroute predicted TTFT (default)", "kvroute cost (Dynamo's)", "round-robin"] {
        // Hit-rate rows, the TTFT legend and the cache-taken rows.
        assert!(texts.matches(label).count() >= 3, "{label:?} named {} times", texts.matches(label).count());
    }
    assert!(texts.contains("ceiling (one unlimited cache): 50.0%"), "{texts}");
    assert!(texts.contains("40.0% (0.80 of the ceiling)"), "{texts}");
    assert!(texts.contains("90.0% taken") && texts.contains("12.5% taken"), "{texts}");
    assert!(texts.contains("least..most over the ranks"), "{texts}");
}

#[test]
fn the_page_loads_nothing() {
    let html = synthetic();
    let lower = html.to_lowercase();
    for banned in ["<script", "<link", "<img", "@import", "url(", "src=", "href="] {
        assert!(!lower.contains(banned), "{banned} in the page");
    }
    // The only URL is the SVG namespace.
    let urls = lower.matches("http").count();
    assert_eq!(urls, lower.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(), "{html}");
}

#[test]
fn an_unwritable_path_is_a_typed_error() {
    let ttft = [10_000];
    let load = [sample(0, &[1])];
    let path = std::env::temp_dir().join("kvroute-no-such-dir-for-the-report").join("r.html");
    match write(&path, &input(&ttft, &load)) {
        Err(DemoError::Report(message)) => assert!(message.contains("kvroute-no-such-dir-for-the-report"), "{message}"),
        other => panic!("expected DemoError::Report, got {other:?}"),
    }
}

#[test]
fn empty_runs_still_render() {
    let html = render(&input(&[], &[])).expect("render");
    assert_eq!(parse(&html).expect("xml").descendants().filter(|n| n.tag_name().name() == "svg").count(), 4);
}

#[test]
fn cdf_points_rise_to_one() {
    assert_eq!(cdf_points(&[30, 10, 20, 40], 10), vec![(10, 0.25), (20, 0.5), (30, 0.75), (40, 1.0)]);
    let many: Vec<u64> = (0..1000).rev().collect();
    let cdf = cdf_points(&many, 100);
    assert!(cdf.len() <= 101 && cdf.len() >= 100, "{}", cdf.len());
    assert_eq!(cdf.last(), Some(&(999, 1.0)));
    assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    assert!(cdf_points(&[], 10).is_empty());
}

#[test]
fn load_is_sampled_about_three_hundred_times_over_the_trace() {
    let request = |timestamp_ms| kvroute_core::trace::TraceRequest {
        timestamp_ms,
        input_length: 512,
        output_length: 1,
        hash_ids: vec![1],
    };
    assert_eq!(sample_interval_ms(&[request(1_000), request(3_601_000)]), 12_000);
    assert_eq!(sample_interval_ms(&[request(5)]), 1);
}
