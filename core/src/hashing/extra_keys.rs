//! Per-block extra keys: what besides its tokens makes a block a different cache entry.
//!
//! Engines fold more than the tokens into a block's identity. vLLM's `extra_keys` list,
//! one entry per block, holds the LoRA adapter's name (every block of a LoRA request),
//! a cache salt (the first block of a salted request only; its children differ through
//! their parent) and `[mm_hash, offset]` pairs for the multimodal inputs that overlap the
//! block. SGLang sends `cache_salt` as a field of the event instead.
//!
//! The router credits a request with a block only when it carries the same keys, so
//! both sides fold them into the block's content hash the same way:
//! - the LoRA adapter goes into the hasher's seed ([`super::BlockHasher::with_namespace`],
//!   Dynamo's rule), for every block of the request;
//! - a block's other keys (a list of [`KeyValue`]s, in the engine's order) are hashed
//!   canonically ([`extra_keys_hash`]) and folded into that block's content hash alone
//!   ([`fold_extra_keys`]). A cache salt is block 0's first extra key, as vLLM puts it.
//!
//! [`BlockIdentity`] names all three for a prompt; `BlockHasher::hash_blocks_with_into`
//! applies them, for requests and for the engines' events alike.
//!
//! `KeyValue` is a small value model that msgpack (the engines' events) and JSON (the
//! router's HTTP API) both map onto: an integer is the same key whichever width or
//! signedness carried it, a string is its UTF-8 bytes, an array its elements in order.
//! A map is hashed as the array of its `[key, value]` pairs in the order they came.

use super::xxh3_64_with_seed;
use crate::ids::BlockHash;

/// One extra key (or part of one), as msgpack or JSON carried it.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyValue {
    Nil,
    Bool(bool),
    /// Any integer, signed or unsigned, of any width.
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<KeyValue>),
}

/// What besides its tokens identifies a prompt's blocks (see the module docs); the
/// default is a plain prompt.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockIdentity<'a> {
    /// The LoRA adapter: every block.
    pub lora_name: Option<&'a str>,
    /// The cache salt: block 0, as its first extra key.
    pub cache_salt: Option<&'a str>,
    /// Per block, its extra keys in order (`None`: none); shorter than the prompt is fine.
    pub extra_keys: &'a [Option<Vec<KeyValue>>],
}

impl BlockIdentity<'_> {
    /// No adapter, no salt, no extra keys: blocks hash by their tokens alone.
    pub fn is_plain(&self) -> bool {
        self.lora_name.is_none_or(str::is_empty)
            && self.cache_salt.is_none_or(str::is_empty)
            && self.extra_keys.iter().all(|k| k.as_ref().is_none_or(Vec::is_empty))
    }
}

/// Seed of the canonical extra-key hash (distinct from every block-hash seed in use).
const EXTRA_KEYS_SEED: u64 = 0x6b76_726f_7574_6531; // "kvroute1"
/// Seed of the fold of a key hash into a block's content hash.
const FOLD_SEED: u64 = 0x6b76_726f_7574_6532; // "kvroute2"

impl KeyValue {
    /// Appends the canonical encoding: a tag byte, then a fixed or length-prefixed body.
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            KeyValue::Nil => out.push(0),
            KeyValue::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
            KeyValue::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            KeyValue::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            KeyValue::Str(s) => {
                out.push(4);
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            KeyValue::Bin(b) => {
                out.push(5);
                out.extend_from_slice(&(b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
            KeyValue::Array(items) => {
                out.push(6);
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode_into(out);
                }
            }
        }
    }

    /// The key as a JSON value ([`KeyValue::from_json`] gives it back, but for binary
    /// strings, which become arrays of byte values, and integers past `i64`/`u64`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            KeyValue::Nil => Value::Null,
            KeyValue::Bool(b) => Value::Bool(*b),
            KeyValue::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Value::from(v)
                } else {
                    Value::String(i.to_string())
                }
            }
            KeyValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            KeyValue::Str(s) => Value::String(s.clone()),
            KeyValue::Bin(b) => Value::Array(b.iter().map(|&x| Value::from(x)).collect()),
            KeyValue::Array(items) => Value::Array(items.iter().map(KeyValue::to_json).collect()),
        }
    }

    /// A JSON value as a key: null, booleans, numbers (integers exactly), strings and
    /// arrays as themselves; an object as the array of its `[key, value]` pairs.
    pub fn from_json(value: &serde_json::Value) -> KeyValue {
        use serde_json::Value;
        match value {
            Value::Null => KeyValue::Nil,
            Value::Bool(b) => KeyValue::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    KeyValue::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    KeyValue::Int(i128::from(u))
                } else {
                    KeyValue::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => KeyValue::Str(s.clone()),
            Value::Array(items) => KeyValue::Array(items.iter().map(KeyValue::from_json).collect()),
            Value::Object(map) => KeyValue::Array(
                map.iter()
                    .map(|(k, v)| KeyValue::Array(vec![KeyValue::Str(k.clone()), KeyValue::from_json(v)]))
                    .collect(),
            ),
        }
    }
}

/// The canonical hash of one block's extra keys, in order. An empty list hashes like no
/// keys at all: callers fold only non-empty lists.
pub fn extra_keys_hash(keys: &[KeyValue]) -> u64 {
    // Encoded like `KeyValue::Array(keys)`, without building one.
    let mut bytes = Vec::with_capacity(16 * keys.len() + 9);
    bytes.push(6);
    bytes.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for key in keys {
        key.encode_into(&mut bytes);
    }
    xxh3_64_with_seed(&bytes, EXTRA_KEYS_SEED)
}

/// `block`'s content hash with its extra keys (hashed by [`extra_keys_hash`]) folded in.
pub fn fold_extra_keys(block: BlockHash, keys_hash: u64) -> BlockHash {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&block.0.to_le_bytes());
    bytes[8..].copy_from_slice(&keys_hash.to_le_bytes());
    BlockHash(xxh3_64_with_seed(&bytes, FOLD_SEED))
}

/// Folds per-block extra keys into `blocks` (content hashes of a request's or an event's
/// blocks, in order): `keys[i]`, when present and non-empty, into `blocks[i]`. Keys past
/// the last block are ignored.
pub fn fold_block_keys(blocks: &mut [BlockHash], keys: &[Option<Vec<KeyValue>>]) {
    for (block, keys) in blocks.iter_mut().zip(keys) {
        if let Some(keys) = keys.as_deref().filter(|k| !k.is_empty()) {
            *block = fold_extra_keys(*block, extra_keys_hash(keys));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_one_key_whatever_carried_them() {
        let a = extra_keys_hash(&[KeyValue::Int(5)]);
        let json = serde_json::json!([5]);
        let b = extra_keys_hash(&[KeyValue::from_json(&json[0])]);
        assert_eq!(a, b);
        assert_ne!(a, extra_keys_hash(&[KeyValue::Int(6)]));
        assert_ne!(a, extra_keys_hash(&[KeyValue::Str("5".into())]));
    }

    #[test]
    fn structure_is_part_of_the_key() {
        let flat = extra_keys_hash(&[KeyValue::Str("a".into()), KeyValue::Int(1)]);
        let nested = extra_keys_hash(&[KeyValue::Array(vec![KeyValue::Str("a".into()), KeyValue::Int(1)])]);
        let swapped = extra_keys_hash(&[KeyValue::Int(1), KeyValue::Str("a".into())]);
        assert_ne!(flat, nested);
        assert_ne!(flat, swapped);
        // Length prefixes keep "ab" + "c" apart from "a" + "bc".
        let ab_c = extra_keys_hash(&[KeyValue::Str("ab".into()), KeyValue::Str("c".into())]);
        let a_bc = extra_keys_hash(&[KeyValue::Str("a".into()), KeyValue::Str("bc".into())]);
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn folding_changes_only_blocks_with_keys() {
        let mut blocks = vec![BlockHash(1), BlockHash(2), BlockHash(3)];
        fold_block_keys(&mut blocks, &[Some(vec![KeyValue::Str("salt".into())]), None, Some(vec![])]);
        assert_ne!(blocks[0], BlockHash(1));
        assert_eq!(&blocks[1..], &[BlockHash(2), BlockHash(3)]);
        assert_eq!(blocks[0], fold_extra_keys(BlockHash(1), extra_keys_hash(&[KeyValue::Str("salt".into())])));
    }

    #[test]
    fn json_round_trip_keeps_the_hash() {
        let keys = vec![
            KeyValue::Str("mm-hash".into()),
            KeyValue::Array(vec![KeyValue::Str("img".into()), KeyValue::Int(32)]),
            KeyValue::Int(i128::from(u64::MAX)),
            KeyValue::Int(-3),
            KeyValue::Nil,
            KeyValue::Bool(true),
        ];
        let back: Vec<KeyValue> = keys.iter().map(|k| KeyValue::from_json(&k.to_json())).collect();
        assert_eq!(extra_keys_hash(&keys), extra_keys_hash(&back));
    }
}
