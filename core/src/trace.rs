//! Mooncake trace reader (sans-IO: the caller hands in a [`BufRead`] or a `&str`).
//!
//! The Mooncake (FAST'25) traces are JSON Lines, one request per line:
//! `{"timestamp": ms, "input_length": tokens, "output_length": tokens, "hash_ids": [u64, ...]}`.
//! Each hash id stands for one 512-token block ([`TRACE_BLOCK_TOKENS`]); equal ids are the
//! same content on the same chain, and `len(hash_ids) == ceil(input_length / 512)` (the last
//! block may be partial). Unknown fields are ignored; blank lines are skipped.
//!
//! To model an engine with smaller blocks, [`request_blocks`] expands every hash id into
//! `512 / block_size` derived sub-block content hashes and keeps only the full blocks of
//! the request (`input_length / block_size` of them), as an engine caches full blocks only.

use std::fmt;
use std::io::BufRead;

use crate::ids::BlockHash;

/// Tokens per hash id in the Mooncake traces.
pub const TRACE_BLOCK_TOKENS: u32 = 512;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TraceRequest {
    /// Arrival time in milliseconds from the start of the trace (JSON field `timestamp`).
    #[serde(rename = "timestamp")]
    pub timestamp_ms: u64,
    /// Prompt length in tokens.
    pub input_length: u32,
    /// Generated length in tokens.
    pub output_length: u32,
    /// One id per 512-token block of the prompt (the last one may be partial).
    pub hash_ids: Vec<u64>,
}

/// Why a trace could not be read or expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// A line is not a JSON object with the expected fields and types (1-based line).
    Json { line: usize, message: String },
    /// A line parsed but is inconsistent, e.g. the wrong number of hash ids (1-based line).
    Invalid { line: usize, reason: String },
    /// The reader failed (including input that is not UTF-8).
    Io(String),
    /// A block size that is zero or does not divide [`TRACE_BLOCK_TOKENS`].
    BadBlockSize(u32),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Json { line, message } => {
                write!(f, "trace line {line}: bad JSON: {message}")
            }
            TraceError::Invalid { line, reason } => {
                write!(f, "trace line {line}: invalid request: {reason}")
            }
            TraceError::Io(message) => write!(f, "reading trace: {message}"),
            TraceError::BadBlockSize(size) => {
                write!(f, "block size {size} does not divide the trace's {TRACE_BLOCK_TOKENS}-token blocks")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// Number of 512-token hash ids a prompt of `input_length` tokens has.
fn expected_hash_ids(input_length: u32) -> u64 {
    u64::from(input_length).div_ceil(u64::from(TRACE_BLOCK_TOKENS))
}

fn parse_line(line_number: usize, text: &str) -> Result<TraceRequest, TraceError> {
    let request: TraceRequest =
        serde_json::from_str(text).map_err(|e| TraceError::Json { line: line_number, message: e.to_string() })?;
    let expected = expected_hash_ids(request.input_length);
    if request.hash_ids.len() as u64 != expected {
        return Err(TraceError::Invalid {
            line: line_number,
            reason: format!(
                "{} hash ids for input_length {} (expected ceil({}/{}) = {})",
                request.hash_ids.len(),
                request.input_length,
                request.input_length,
                TRACE_BLOCK_TOKENS,
                expected
            ),
        });
    }
    Ok(request)
}

/// Reads a whole trace. Blank lines are skipped; errors name the 1-based line.
pub fn parse_trace(reader: impl BufRead) -> Result<Vec<TraceRequest>, TraceError> {
    let mut requests = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index + 1;
        let line = line.map_err(|e| TraceError::Io(format!("line {line_number}: {e}")))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        requests.push(parse_line(line_number, text)?);
    }
    Ok(requests)
}

/// [`parse_trace`] over a string.
pub fn parse_trace_str(s: &str) -> Result<Vec<TraceRequest>, TraceError> {
    parse_trace(s.as_bytes())
}

/// Content hash of sub-block `sub_block` (of `512 / block_size`) of trace hash id `hash_id`.
/// A strong 64-bit mix of all three inputs, so equal ids give equal sub-blocks and
/// anything else collides only by chance (2^-64).
fn sub_block_hash(hash_id: u64, sub_block: u32, block_size: u32) -> BlockHash {
    const SEED: u64 = 0x6b76_726f_7574_6531; // "kvroute1"
    let salt = (u64::from(block_size) << 32) | u64::from(sub_block);
    let first = mix64(hash_id ^ SEED);
    BlockHash(mix64(first.wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
}

/// A bijective 64-bit finaliser with full avalanche (Pelle Evensen's rrmxmx).
fn mix64(mut x: u64) -> u64 {
    x ^= x.rotate_right(49) ^ x.rotate_right(24);
    x = x.wrapping_mul(0x9fb2_1c65_1e98_df25);
    x ^= x >> 28;
    x = x.wrapping_mul(0x9fb2_1c65_1e98_df25);
    x ^ (x >> 28)
}

/// Content hashes of the request's full blocks at `block_size` tokens.
///
/// `block_size` must divide 512 (16 gives 32 sub-blocks per hash id), else
/// [`TraceError::BadBlockSize`]. The request has `input_length / block_size` full blocks
/// (a request that was not validated by [`parse_trace`] is cut at
/// `hash_ids.len() * 512 / block_size`); block `i` is sub-block `i % (512 / block_size)`
/// of hash id `hash_ids[i / (512 / block_size)]`.
pub fn request_blocks(req: &TraceRequest, block_size: u32) -> Result<Vec<BlockHash>, TraceError> {
    let mut out = Vec::new();
    request_blocks_into(req, block_size, &mut out)?;
    Ok(out)
}

/// [`request_blocks`] into a caller-owned buffer, which is cleared first.
pub fn request_blocks_into(req: &TraceRequest, block_size: u32, out: &mut Vec<BlockHash>) -> Result<(), TraceError> {
    out.clear();
    if block_size == 0 || TRACE_BLOCK_TOKENS % block_size != 0 {
        return Err(TraceError::BadBlockSize(block_size));
    }
    let per_id = (TRACE_BLOCK_TOKENS / block_size) as usize;
    let full_blocks = (req.input_length / block_size) as usize;
    let count = full_blocks.min(req.hash_ids.len().saturating_mul(per_id));
    out.reserve(count);
    for (position, &hash_id) in req.hash_ids.iter().enumerate() {
        let first = position * per_id;
        if first >= count {
            break;
        }
        let subs = per_id.min(count - first);
        out.extend((0..subs).map(|sub| sub_block_hash(hash_id, sub as u32, block_size)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const SHIPPED_TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl");

    fn shipped_trace() -> Vec<TraceRequest> {
        let file = std::fs::File::open(SHIPPED_TRACE).expect("shipped trace present");
        parse_trace(std::io::BufReader::new(file)).expect("shipped trace parses")
    }

    #[test]
    fn a_written_trace_reads_back_the_same() {
        let requests: Vec<TraceRequest> = shipped_trace().into_iter().take(50).collect();
        let text: String = requests.iter().map(|r| serde_json::to_string(r).expect("serializes") + "\n").collect();
        assert!(text.starts_with("{\"timestamp\":"), "{}", &text[..40]);
        assert_eq!(parse_trace_str(&text).expect("parses"), requests);
    }

    #[test]
    fn parses_the_shipped_trace() {
        let trace = shipped_trace();
        assert_eq!(trace.len(), 12_031);
        assert!(trace.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        assert_eq!(
            trace[0],
            TraceRequest { timestamp_ms: 0, input_length: 6758, output_length: 500, hash_ids: (0..14).collect() }
        );
        // About 3,537 s of requests.
        let last = trace.last().map_or(0, |r| r.timestamp_ms);
        assert!((3_500_000..3_600_000).contains(&last), "last timestamp {last}");
    }

    /// REFERENCE.md section 7: with an infinite cache, 36.6% of the trace's blocks were
    /// seen before (counted over hash ids, i.e. 512-token blocks, the partial last included).
    #[test]
    fn whole_trace_reuse_with_infinite_cache() {
        let trace = shipped_trace();
        let mut seen = HashSet::new();
        let (mut total, mut reused) = (0u64, 0u64);
        for request in &trace {
            for &id in &request.hash_ids {
                total += 1;
                if !seen.insert(id) {
                    reused += 1;
                }
            }
        }
        assert_eq!((total, reused), (288_500, 105_710));
        let ratio = reused as f64 / total as f64;
        assert!((ratio - 0.366).abs() < 0.001, "reuse {ratio}");
    }

    #[test]
    fn expansion_counts_at_16_and_512() {
        let trace = shipped_trace();
        let mut buffer = Vec::new();
        let (mut total16, mut total512) = (0usize, 0usize);
        for request in &trace {
            request_blocks_into(request, 16, &mut buffer).expect("16 divides 512");
            assert_eq!(buffer.len(), (request.input_length / 16) as usize);
            total16 += buffer.len();
            let blocks512 = request_blocks(request, 512).expect("512 divides 512");
            assert_eq!(blocks512.len(), (request.input_length / 512) as usize);
            assert!(blocks512.len() + 1 >= request.hash_ids.len());
            // Sub-block 0 at size 16 is not the whole-block hash at size 512.
            if let (Some(a), Some(b)) = (buffer.first(), blocks512.first()) {
                assert_ne!(a, b);
            }
            total512 += blocks512.len();
        }
        let tokens: u64 = trace.iter().map(|r| u64::from(r.input_length)).sum();
        assert!(total16 as u64 <= tokens / 16 && total512 as u64 <= tokens / 512);
        assert!(total16 > 30 * total512);
        assert_eq!((total16, total512), (9_044_013, 276_491));
    }

    #[test]
    fn equal_ids_give_equal_sub_blocks() {
        let a = TraceRequest { timestamp_ms: 0, input_length: 1100, output_length: 1, hash_ids: vec![7, 8, 9] };
        let b = TraceRequest { timestamp_ms: 5, input_length: 1024, output_length: 1, hash_ids: vec![7, 8] };
        let c = TraceRequest { timestamp_ms: 5, input_length: 1024, output_length: 1, hash_ids: vec![7, 10] };
        let blocks_a = request_blocks(&a, 16).unwrap();
        let blocks_b = request_blocks(&b, 16).unwrap();
        let blocks_c = request_blocks(&c, 16).unwrap();
        assert_eq!(blocks_a.len(), 1100 / 16); // 68: 64 from ids 7 and 8, 4 from id 9
        assert_eq!(blocks_b.len(), 64);
        assert_eq!(&blocks_a[..64], &blocks_b[..]);
        assert_eq!(&blocks_c[..32], &blocks_b[..32]);
        assert!(blocks_c[32..].iter().all(|h| !blocks_b.contains(h)));
        // All 64 sub-blocks of two distinct ids are distinct.
        let distinct: HashSet<_> = blocks_b.iter().collect();
        assert_eq!(distinct.len(), 64);
        // A partial block is not a block.
        let short = TraceRequest { timestamp_ms: 0, input_length: 15, output_length: 1, hash_ids: vec![1] };
        assert!(request_blocks(&short, 16).unwrap().is_empty());
        assert_eq!(request_blocks(&short, 1).unwrap().len(), 15);
    }

    #[test]
    fn bad_block_sizes() {
        let r = TraceRequest { timestamp_ms: 0, input_length: 512, output_length: 1, hash_ids: vec![1] };
        for size in [0, 3, 24, 1000, 1024, u32::MAX] {
            assert_eq!(request_blocks(&r, size), Err(TraceError::BadBlockSize(size)));
        }
        for size in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
            assert_eq!(request_blocks(&r, size).unwrap().len(), (512 / size) as usize);
        }
    }

    #[test]
    fn unvalidated_request_never_expands_past_its_ids() {
        let r = TraceRequest { timestamp_ms: 0, input_length: u32::MAX, output_length: 0, hash_ids: vec![1, 2] };
        assert_eq!(request_blocks(&r, 16).unwrap().len(), 64);
        let mut buffer = vec![BlockHash(1); 3];
        request_blocks_into(&r, 7, &mut buffer).unwrap_err();
        assert!(buffer.is_empty());
    }

    #[test]
    fn blank_lines_are_skipped_and_unknown_fields_ignored() {
        let text = "\n{\"timestamp\": 3, \"input_length\": 513, \"output_length\": 2, \"hash_ids\": [1, 2], \"x\": null}\n  \n\
                    {\"timestamp\": 4, \"input_length\": 0, \"output_length\": 0, \"hash_ids\": []}\r\n";
        let trace = parse_trace_str(text).unwrap();
        assert_eq!(trace.len(), 2);
        assert_eq!(trace[0].hash_ids, vec![1, 2]);
        assert_eq!(trace[1].timestamp_ms, 4);
        assert_eq!(parse_trace_str("").unwrap(), vec![]);
    }

    fn error_line(text: &str) -> TraceError {
        parse_trace_str(text).expect_err(text)
    }

    #[test]
    fn malformed_lines_give_typed_errors() {
        let ok = r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}"#;
        let json_cases = [
            "not json",
            "{",
            "[]",
            "null",
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1}"#,
            r#"{"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": -10, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": 4294967296, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 18446744073709551616, "input_length": 10, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 1.5, "input_length": 10, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [-1]}"#,
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1e300]}"#,
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": "1"}"#,
            r#"{"timestamp": "0", "input_length": 10, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]} trailing"#,
        ];
        for case in json_cases {
            let text = format!("{ok}\n\n{case}\n{ok}\n");
            match error_line(&text) {
                TraceError::Json { line, message } => {
                    assert_eq!(line, 3, "{case}");
                    assert!(!message.is_empty());
                }
                other => panic!("{case}: {other:?}"),
            }
        }
        let invalid_cases = [
            r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": []}"#,
            r#"{"timestamp": 0, "input_length": 512, "output_length": 1, "hash_ids": [1, 2]}"#,
            r#"{"timestamp": 0, "input_length": 513, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": [1]}"#,
            r#"{"timestamp": 0, "input_length": 4294967295, "output_length": 1, "hash_ids": [1]}"#,
        ];
        for case in invalid_cases {
            match error_line(&format!("{ok}\n{case}")) {
                TraceError::Invalid { line, reason } => {
                    assert_eq!(line, 2, "{case}");
                    assert!(reason.contains("hash ids"));
                }
                other => panic!("{case}: {other:?}"),
            }
        }
        let display = error_line("{").to_string();
        assert!(display.starts_with("trace line 1: bad JSON"), "{display}");
    }

    #[test]
    fn unreadable_input_is_an_io_error() {
        let bytes: &[u8] =
            b"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n\xff\xfe\n";
        match parse_trace(bytes) {
            Err(TraceError::Io(message)) => assert!(message.starts_with("line 2")),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,120}") {
            let _ = parse_trace_str(&line);
        }

        #[test]
        fn expansion_keeps_full_blocks_only(ids in proptest::collection::vec(0u64..50, 0..6), extra in 0u32..512) {
            let input_length = (ids.len() as u32 * 512).saturating_sub(if ids.is_empty() { 0 } else { extra });
            let r = TraceRequest { timestamp_ms: 0, input_length, output_length: 0, hash_ids: ids };
            for size in [1u32, 16, 512] {
                let blocks = request_blocks(&r, size).unwrap();
                proptest::prop_assert_eq!(blocks.len(), (input_length / size) as usize);
            }
        }
    }
}
