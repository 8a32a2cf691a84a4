//! The report's HTML page: a header with the run's parameters, then each chart's inline
//! SVG in a `<figure>` with its caption. Inline CSS only; the page is well-formed XML.

use super::charts::Chart;
use super::ReportInput;

const STYLE: &str = "body { font-family: sans-serif; margin: 24px auto; max-width: 1040px; color: #222; }
h1 { font-size: 24px; margin-bottom: 4px; }
p.run { color: #444; margin-top: 0; }
figure { margin: 28px 0; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 14px; line-height: 1.4; margin-top: 6px; }";

/// Escapes text for HTML (and XML) content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

pub(super) fn html(input: &ReportInput<'_>, charts: &[Chart]) -> String {
    let run = &input.run;
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    page.push_str("<title>kvroute demo report</title>\n<style>\n");
    page.push_str(STYLE);
    page.push_str("\n</style>\n</head>\n<body>\n<h1>kvroute demo: routing policies on one trace</h1>\n");
    page.push_str(&format!(
        "<p class=\"run\">{} requests of {}; {} workers x {} DP ranks ({} ranks), block size {} tokens, {} tokens of \
         KV cache and {} prefill tokens/ms per rank; simulated time.</p>\n",
        run.requests,
        escape(&run.trace),
        run.workers,
        run.dp_size,
        u64::from(run.workers) * u64::from(run.dp_size),
        run.block_size,
        run.capacity_tokens,
        run.prefill_tokens_per_ms
    ));
    for chart in charts {
        page.push_str("<figure>\n");
        page.push_str(&chart.svg);
        page.push_str(&format!("\n<figcaption>{}</figcaption>\n</figure>\n", escape(&chart.caption)));
    }
    page.push_str("</body>\n</html>\n");
    page
}
