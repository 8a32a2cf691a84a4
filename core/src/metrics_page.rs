//! [`MetricsPage`]: a `/metrics` page in the Prometheus text format (kvroute's own, or an
//! engine's: vLLM, SGLang) parsed into samples, and looked up by name and label subset.
//!
//! Shape: `MetricsPage::parse(text)` keeps every sample line as (name, labels, value),
//! skipping `#` lines and lines that do not parse (a page is untrusted input: a bad line
//! is dropped, never a panic). [`MetricsPage::get`] sums the samples of a name whose
//! labels include all the given pairs (`get("kvroute_index_unknown_rank_total",
//! &[("tier", "device")])`; no pairs: the sum over every label set), `None` when the page
//! has no such sample, so that a gauge another build may not have yet reads as absent
//! rather than zero. [`MetricsPage::value`] is `get` with 0 for absent;
//! [`MetricsPage::samples`] walks every sample of a name with its labels.

/// One sample line: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One parsed `/metrics` page; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct MetricsPage {
    samples: Vec<Sample>,
}

impl MetricsPage {
    pub fn parse(text: &str) -> Self {
        let samples = text.lines().filter(|line| !line.starts_with('#')).filter_map(parse_line).collect();
        MetricsPage { samples }
    }

    /// The sum of `name`'s samples whose labels include `labels`; `None` if there are none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (sample, sample_labels, value) in &self.samples {
            let matches =
                sample == name && labels.iter().all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
            if matches {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// [`MetricsPage::get`] as an integer, 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).unwrap_or(0.0).max(0.0) as u64
    }

    /// Every sample of `name`: its labels and value.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples.iter().filter(move |(n, _, _)| n == name).map(|(_, labels, value)| (labels.as_slice(), *value))
    }

    /// Whether the page has any sample at all (an empty page is a failed scrape).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else { return Some((series.to_owned(), Vec::new(), value)) };
    let labels = parse_labels(rest.strip_suffix('}')?)?;
    Some((name.to_owned(), labels, value))
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::MetricsPage;

    #[test]
    fn samples_by_name_and_label_subset() {
        let page = "# HELP a x\n# TYPE a counter\na{tier=\"device\",k=\"q\\\"x\"} 3\na{tier=\"host\"} 4\nb 7\n";
        let x = MetricsPage::parse(page);
        assert_eq!(x.get("a", &[("tier", "device")]), Some(3.0));
        assert_eq!(x.get("a", &[("k", "q\"x")]), Some(3.0));
        assert_eq!(x.get("a", &[]), Some(7.0));
        assert_eq!(x.value("b", &[]), 7);
        assert_eq!(x.get("c", &[]), None);
    }
}
