//! Engine load from the engines' own Prometheus metrics: what a router replica scrapes
//! from each worker's `/metrics` to learn the load other replicas sent there
//! ([`Router::apply_load_report`](super::Router::apply_load_report)).
//!
//! Read per DP rank: requests running plus waiting, from vLLM's
//! `vllm:num_requests_running` / `vllm:num_requests_waiting` (V1 labels each engine core
//! `engine="<dp rank>"`) or SGLang's `sglang:num_running_reqs` / `sglang:num_queue_reqs`
//! (per rank with a `dp_rank` label). A sample without a rank label belongs to the
//! worker's only rank, and is skipped when the worker has several (it cannot be split).
//! Neither engine reports queued prompt tokens, and their KV usage counts cached prefix
//! blocks too (not the router's per-request blocks), so only `requests` is reported; the
//! router's own bookkeeping goes on counting the other two.

use std::collections::BTreeMap;
use std::ops::Range;

use super::LoadReport;
use crate::ids::DpRank;
use crate::metrics_page::MetricsPage;

/// Gauges counted as a rank's requests (running, then waiting), per engine.
const REQUEST_GAUGES: [&str; 4] =
    ["vllm:num_requests_running", "vllm:num_requests_waiting", "sglang:num_running_reqs", "sglang:num_queue_reqs"];

/// Labels that name the DP rank of a sample: vLLM's, SGLang's.
const RANK_LABELS: [&str; 2] = ["engine", "dp_rank"];

/// The reports of `page` for the worker's ranks `ranks`, in rank order; a rank the page
/// says nothing of has none.
pub fn engine_load_reports(page: &MetricsPage, ranks: Range<u32>) -> Vec<(DpRank, LoadReport)> {
    let mut requests: BTreeMap<u32, f64> = BTreeMap::new();
    for name in REQUEST_GAUGES {
        for (labels, value) in page.samples(name) {
            let label = labels.iter().find(|(key, _)| RANK_LABELS.contains(&key.as_str()));
            let rank = match label {
                Some((_, rank)) => rank.parse::<u32>().ok(),
                None if ranks.len() == 1 => Some(ranks.start),
                None => None,
            };
            if let Some(rank) = rank.filter(|r| ranks.contains(r)) {
                if value.is_finite() && value >= 0.0 {
                    *requests.entry(rank).or_default() += value;
                }
            }
        }
    }
    requests
        .into_iter()
        .map(|(rank, n)| (DpRank(rank), LoadReport { requests: Some(n.round() as u64), ..LoadReport::default() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(page: &str, ranks: Range<u32>) -> Vec<(u32, Option<u64>)> {
        engine_load_reports(&MetricsPage::parse(page), ranks).into_iter().map(|(r, l)| (r.0, l.requests)).collect()
    }

    #[test]
    fn vllm_engines_by_their_engine_label() {
        let page = "# TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{engine=\"2\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_running{engine=\"3\",model_name=\"m\"} 1.0\n\
            vllm:num_requests_waiting{engine=\"2\",model_name=\"m\"} 4.0\n\
            vllm:num_requests_waiting{engine=\"9\",model_name=\"m\"} 4.0\n\
            vllm:kv_cache_usage_perc{engine=\"2\",model_name=\"m\"} 0.5\n";
        assert_eq!(requests(page, 2..4), vec![(2, Some(7)), (3, Some(1))], "rank 9 is not this worker's");
    }

    #[test]
    fn sglang_by_dp_rank_or_the_only_rank() {
        let page = "sglang:num_running_reqs{dp_rank=\"0\"} 2\nsglang:num_queue_reqs{dp_rank=\"0\"} 5\n\
            sglang:num_running_reqs{dp_rank=\"1\"} 1\n";
        assert_eq!(requests(page, 0..2), vec![(0, Some(7)), (1, Some(1))]);
        let unlabelled = "sglang:num_running_reqs{model_name=\"m\"} 8\nsglang:num_queue_reqs{model_name=\"m\"} 4\n";
        assert_eq!(requests(unlabelled, 5..6), vec![(5, Some(12))]);
        assert_eq!(requests(unlabelled, 0..2), vec![], "two ranks: an unlabelled total cannot be split");
    }

    #[test]
    fn bad_lines_and_values_are_skipped() {
        let page = "vllm:num_requests_running{engine=\"0\"} NaN\nvllm:num_requests_running{engine=\"x\"} 3\n\
            vllm:num_requests_waiting{engine=\"0\"} -2\nvllm:num_requests_running{engine=\"0\" 3\ngarbage\n";
        assert_eq!(requests(page, 0..1), vec![]);
        assert_eq!(requests("", 0..1), vec![]);
    }
}
