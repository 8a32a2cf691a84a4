//! [`WorkerGrant`]: the set of worker ids a publisher may publish KV events for, and its
//! encoding as URI subject alternative names in the publisher's certificate.
//!
//! One URI SAN per single id or inclusive range:
//! - `urn:kvroute:worker:7` allows worker 7;
//! - `urn:kvroute:workers:0-63` allows workers 0 through 63.
//!
//! Ids are plain decimal `u64` ([`WorkerId`]). Other URIs (and other SAN kinds) are ignored;
//! a `urn:kvroute:worker:` / `urn:kvroute:workers:` URI that does not parse is an error
//! rather than silently granting less, so a mis-issued certificate is noticed.
//! On the command line the same sets are written `0-3,7`.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use kvroute_core::ids::WorkerId;

use super::error::TlsError;

/// URI SAN prefix of a single worker id: `urn:kvroute:worker:<id>`.
pub const WORKER_URI_PREFIX: &str = "urn:kvroute:worker:";
/// URI SAN prefix of an inclusive worker id range: `urn:kvroute:workers:<first>-<last>`.
pub const WORKERS_URI_PREFIX: &str = "urn:kvroute:workers:";

/// A set of worker ids a publisher is allowed to publish for.
///
/// Kept as sorted, disjoint, non-adjacent inclusive ranges, so equality is set equality
/// and [`allows`](Self::allows) is a binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerGrant {
    ranges: Vec<(u64, u64)>,
}

impl WorkerGrant {
    /// The grant that allows nothing (a certificate without worker SANs).
    pub fn none() -> Self {
        WorkerGrant { ranges: Vec::new() }
    }

    /// The grant that allows every worker id: insecure loopback mode, where there is no
    /// certificate to read a grant from.
    pub fn all() -> Self {
        WorkerGrant { ranges: vec![(0, u64::MAX)] }
    }

    /// The union of `ranges` (empty ranges such as `5..=3` are skipped).
    pub fn from_ranges(ranges: impl IntoIterator<Item = RangeInclusive<u64>>) -> Self {
        let mut raw: Vec<(u64, u64)> =
            ranges.into_iter().filter(|r| r.start() <= r.end()).map(|r| (*r.start(), *r.end())).collect();
        raw.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(raw.len());
        for (lo, hi) in raw {
            match merged.last_mut() {
                // Overlapping or adjacent (`prev_hi + 1 == lo`) ranges merge.
                Some((_, prev_hi)) if lo <= prev_hi.saturating_add(1) => *prev_hi = (*prev_hi).max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        WorkerGrant { ranges: merged }
    }

    /// Whether a publisher holding this grant may publish events for `worker`.
    pub fn allows(&self, worker: WorkerId) -> bool {
        let id = worker.0;
        // The last range starting at or before `id` is the only candidate.
        let after = self.ranges.partition_point(|&(lo, _)| lo <= id);
        after > 0 && id <= self.ranges[after - 1].1
    }

    /// Whether the grant allows no worker at all.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether the grant allows every worker id.
    pub fn is_all(&self) -> bool {
        self.ranges == [(0, u64::MAX)]
    }

    /// The grant's disjoint ranges, in increasing order.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.ranges.iter().map(|&(lo, hi)| lo..=hi)
    }

    /// How many worker ids the grant allows (a `u128`: [`all`](Self::all) has 2^64).
    pub fn count(&self) -> u128 {
        self.ranges.iter().map(|&(lo, hi)| u128::from(hi - lo) + 1).sum()
    }

    /// Every allowed worker id, in increasing order.
    pub fn ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| (lo..=hi).map(WorkerId))
    }

    /// The URI SANs that encode this grant in a publisher certificate.
    pub fn to_san_uris(&self) -> Vec<String> {
        self.ranges
            .iter()
            .map(
                |&(lo, hi)| {
                    if lo == hi {
                        format!("{WORKER_URI_PREFIX}{lo}")
                    } else {
                        format!("{WORKERS_URI_PREFIX}{lo}-{hi}")
                    }
                },
            )
            .collect()
    }

    /// The grant named by a certificate's URI SANs (all of them; non-kvroute URIs are
    /// ignored). No worker URI gives [`none`](Self::none).
    pub fn from_san_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Self, TlsError> {
        let mut ranges = Vec::new();
        for uri in uris {
            let bad = || TlsError::BadWorkerSan { san: printable(uri) };
            if let Some(id) = uri.strip_prefix(WORKERS_URI_PREFIX) {
                let (lo, hi) = id.split_once('-').ok_or_else(bad)?;
                let (lo, hi) = (parse_id(lo).ok_or_else(bad)?, parse_id(hi).ok_or_else(bad)?);
                if lo > hi {
                    return Err(bad());
                }
                ranges.push(lo..=hi);
            } else if let Some(id) = uri.strip_prefix(WORKER_URI_PREFIX) {
                let id = parse_id(id).ok_or_else(bad)?;
                ranges.push(id..=id);
            }
        }
        Ok(WorkerGrant::from_ranges(ranges))
    }
}

/// A decimal `u64` with digits only (no sign, no spaces), or `None`.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `s` for an error message: control characters escaped, length capped (it comes from a peer).
fn printable(s: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// Parses `0-3,7`: comma-separated ids and inclusive `first-last` ranges.
impl FromStr for WorkerGrant {
    type Err = TlsError;

    fn from_str(spec: &str) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::BadWorkerSpec { spec: spec.to_string(), reason };
        let mut ranges = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad("empty element".into()));
            }
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let id = |s: &str| parse_id(s.trim()).ok_or_else(|| bad(format!("`{}` is not a worker id", s.trim())));
            let (lo, hi) = (id(lo)?, id(hi)?);
            if lo > hi {
                return Err(bad(format!("range {lo}-{hi} is backwards")));
            }
            ranges.push(lo..=hi);
        }
        Ok(WorkerGrant::from_ranges(ranges))
    }
}

/// Writes the `0-3,7` form that [`FromStr`] reads; `none` and `all` for the two extremes.
impl fmt::Display for WorkerGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        if self.is_all() {
            return f.write_str("all");
        }
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(spec: &str) -> WorkerGrant {
        spec.parse().unwrap()
    }

    #[test]
    fn parse_merge_and_display() {
        assert_eq!(g("0-3,7").to_string(), "0-3,7");
        assert_eq!(g(" 7 , 0-3 ,4").to_string(), "0-4,7");
        assert_eq!(g("5-9,0-5,10").to_string(), "0-10");
        assert_eq!(g("0-18446744073709551615"), WorkerGrant::all());
        assert_eq!(g("0-3,7").count(), 5);
        assert_eq!(g("2-4").ids().map(|w| w.0).collect::<Vec<_>>(), [2, 3, 4]);
        for bad in ["", ",", "1,", "a", "-1", "1-", "3-1", "+1", "1-2-3", "18446744073709551616"] {
            assert!(bad.parse::<WorkerGrant>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn allows() {
        let grant = g("0-3,7,10-12");
        let allowed: Vec<u64> = (0..16).filter(|&w| grant.allows(WorkerId(w))).collect();
        assert_eq!(allowed, [0, 1, 2, 3, 7, 10, 11, 12]);
        assert!(!WorkerGrant::none().allows(WorkerId(0)));
        assert!(WorkerGrant::all().allows(WorkerId(u64::MAX)));
        assert!(WorkerGrant::all().allows(WorkerId(0)));
    }

    #[test]
    fn san_round_trip() {
        let grant = g("0-63,70");
        let uris = grant.to_san_uris();
        assert_eq!(uris, ["urn:kvroute:workers:0-63", "urn:kvroute:worker:70"]);
        let back = WorkerGrant::from_san_uris(uris.iter().map(String::as_str)).unwrap();
        assert_eq!(back, grant);
        let other = ["https://example.com", "urn:kvroute:router", "urn:kvroute:worker:3"];
        assert_eq!(WorkerGrant::from_san_uris(other).unwrap(), g("3"));
        assert!(WorkerGrant::from_san_uris([]).unwrap().is_empty());
        for bad in ["urn:kvroute:worker:", "urn:kvroute:worker:x", "urn:kvroute:workers:5", "urn:kvroute:workers:5-3"] {
            assert!(matches!(WorkerGrant::from_san_uris([bad]), Err(TlsError::BadWorkerSan { .. })), "{bad}");
        }
    }
}
