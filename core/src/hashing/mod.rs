//! Block hashing: token ids to per-block content hashes ([`BlockHash`]).
//!
//! A request's tokens are cut into blocks of `block_size` tokens; only FULL blocks are
//! hashed (a trailing partial block is ignored, as engines only cache full blocks). Each
//! block's hash depends on its tokens, the block size and the hasher's seed alone, never
//! on its position or its prefix; chaining is the index's business.
//!
//! Two schemes ([`HashScheme`]):
//! - **`Kv64`** (the default): our own 64-bit hash, built to hash many blocks at once.
//!   A block is read as stripes of 8 tokens (the last one zero-padded). Each stripe adds,
//!   to four 64-bit accumulator lanes, the 32x32->64-bit products of its keyed token
//!   pairs: lane `l` gets `(w[2l] ^ k[2l]) * (w[2l+1] ^ k[2l+1])`, with a fixed key row per
//!   stripe position (64 rows, an accumulator scramble each time they repeat). Every key
//!   has bit 31 set, so for token ids below 2^31 no factor is ever zero and a product
//!   never wraps: changing any single token provably changes the lane sum. The lane sum
//!   then goes through a bijective finalizer (xorshift, `lo*M + hi<<32`, twice) into
//!   which the seed and block size are folded. Full definition and argument: `kv64.rs`.
//! - **`Xxh3Compat`**: XXH3-64 over the block's token ids as little-endian `u32` bytes,
//!   seed 1337 (plus namespace): exactly NVIDIA Dynamo's (`dynamo-kv-router`) and the
//!   SGLang gateway's local block hash, for interoperating with them. It uses our own XXH3
//!   ([`xxh3_64_with_seed`]), one block at a time (the long-input secret derived once).
//!
//! SIMD lane layout (x86_64; AVX2 detected at runtime once, cached in an atomic): blocks
//! go four at a time. Block `b` owns one `__m256i` whose four 64-bit lanes ARE its four
//! accumulators; a stripe is one unaligned 32-byte load whose 64-bit lane `l` holds
//! exactly the token pair `(w[2l], w[2l+1])` of the definition, so `vpxor` (key row),
//! `vpsrlq 32` and `vpmuludq` form that lane's product and `vpaddq` accumulates it. The
//! four blocks are independent chains in one instruction stream. A 4x4 transpose-and-add
//! (`vpunpck{l,h}qdq`, `vpblendd`, `vperm2i128`) leaves block `b`'s sum in lane `b` and
//! the finalizer runs on four blocks at once. A leftover group of 1-3 blocks repeats the
//! last block in the missing lanes; a partial tail stripe is a masked load (zeros).
//!
//! SIMD == scalar, bit for bit, because both compute the same wrapping integer formula
//! on the same values in the same lanes: `vpmuludq` is exactly `(a as u64) * (b as u64)`,
//! `vpaddq` is `wrapping_add`, `lo*M + hi<<32` is a `vpmuludq` plus a `vpblendd`, and the
//! lane sum is order-independent mod 2^64. Tests compare the two on random inputs.
//!
//! Default: `Kv64`, because the router hashes every request on its hot path and `Kv64`
//! runs at more than twice the speed of per-block XXH3 (16-token blocks; see
//! `bench/benches/hashing.rs`), with no collisions on the tests' millions of random and
//! exhaustive structured blocks. Use `Xxh3Compat` only when hashes must match Dynamo's or
//! the SGLang gateway's.
//!
//! Namespaces (LoRA adapter, cache salt) are folded into the seed with Dynamo's rule,
//! found in `dynamo-kv-hashing-1.6.1/src/salt.rs` (`compute_salt_hash`, called by
//! `dynamo-kv-router-1.6.1/src/protocols.rs::block_hash_seed` with
//! `(options.cache_namespace, options.lora_name)`): empty strings count as absent; then
//! `seed = base`, `seed += xxh3_64_with_seed(lora_name, 0)` if a LoRA name is given,
//! `seed += xxh3_64_with_seed(salt, 1)` if a salt is given (wrapping adds, UTF-8 bytes).
//! With `base = 1337` (`Xxh3Compat`) this is Dynamo's block-hash seed exactly; `Kv64`
//! applies the same rule to its base seed 0. Dynamo's chained sequence hash
//! (`dynamo-tokens-1.6.1/src/lib.rs::compute_next_sequence_hash`: XXH3 seed 1337 over the
//! parent sequence hash then the block hash, each as 8 little-endian bytes) is
//! [`dynamo_sequence_hashes`].

mod extra_keys;
mod kv64;
mod xxh3;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::ids::BlockHash;

pub use extra_keys::{extra_keys_hash, fold_block_keys, fold_extra_keys, BlockIdentity, KeyValue};
pub use xxh3::xxh3_64_with_seed;

/// The XXH3 seed Dynamo and the SGLang gateway use for block and sequence hashes.
pub const DYNAMO_XXH3_SEED: u64 = 1337;

/// Which block-hash function a [`BlockHasher`] computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HashScheme {
    /// Our SIMD-friendly 64-bit hash (default: the fastest; see the module doc).
    #[default]
    Kv64,
    /// XXH3-64, seed 1337 (plus namespace), over little-endian `u32` token bytes:
    /// identical to Dynamo's and the SGLang gateway's local block hashes.
    Xxh3Compat,
}

impl HashScheme {
    /// The seed a fresh hasher of this scheme starts from (before namespaces).
    pub const fn base_seed(self) -> u64 {
        match self {
            HashScheme::Kv64 => 0,
            HashScheme::Xxh3Compat => DYNAMO_XXH3_SEED,
        }
    }
}

/// Why a [`BlockHasher`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashError {
    /// A block size of zero tokens.
    ZeroBlockSize,
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::ZeroBlockSize => f.write_str("block size must be at least one token"),
        }
    }
}

impl std::error::Error for HashError {}

/// Computes per-block content hashes for one block size, scheme and seed.
///
/// The seed is `base_seed + namespace`, where the base is the scheme's
/// ([`HashScheme::base_seed`], replaceable with [`BlockHasher::with_seed`]) and the
/// namespace term comes from [`BlockHasher::with_namespace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHasher {
    block_size: usize,
    scheme: HashScheme,
    base_seed: u64,
    namespace: u64,
}

impl BlockHasher {
    /// A `Kv64` hasher with seed 0.
    pub fn new(block_size: usize) -> Result<BlockHasher, HashError> {
        Self::with_scheme(block_size, HashScheme::Kv64)
    }

    /// A hasher of `scheme` with the scheme's base seed (0 for `Kv64`, 1337 for
    /// `Xxh3Compat`).
    pub fn with_scheme(block_size: usize, scheme: HashScheme) -> Result<BlockHasher, HashError> {
        if block_size == 0 {
            return Err(HashError::ZeroBlockSize);
        }
        Ok(BlockHasher { block_size, scheme, base_seed: scheme.base_seed(), namespace: 0 })
    }

    /// Replaces the base seed (the namespace term, if any, is kept and added to it).
    pub fn with_seed(self, seed: u64) -> BlockHasher {
        BlockHasher { base_seed: seed, ..self }
    }

    /// Sets the namespace (replacing any earlier one): an optional LoRA adapter name and
    /// an optional cache salt, folded into the seed with Dynamo's rule (see the module
    /// doc). `None` and `Some("")` are the same (no namespace).
    pub fn with_namespace(self, lora_name: Option<&str>, cache_salt: Option<&str>) -> BlockHasher {
        BlockHasher { namespace: namespace_term(lora_name, cache_salt), ..self }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The hash scheme.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// The effective seed: base seed plus the namespace term (wrapping).
    pub fn seed(&self) -> u64 {
        self.base_seed.wrapping_add(self.namespace)
    }

    /// Appends one hash per full block of `tokens` to `out` (a trailing partial block is
    /// ignored). Uses the AVX2 kernel for `Kv64` when the CPU has it.
    pub fn hash_blocks_into(&self, tokens: &[u32], out: &mut Vec<BlockHash>) {
        self.hash_into(tokens, out, true);
    }

    /// One hash per full block of `tokens`.
    pub fn hash_blocks(&self, tokens: &[u32]) -> Vec<BlockHash> {
        let mut out = Vec::with_capacity(tokens.len() / self.block_size);
        self.hash_blocks_into(tokens, &mut out);
        out
    }

    /// Appends one hash per full block of `tokens`, identified as `identity` says: the
    /// LoRA adapter folded into the seed (every block), the cache salt and each block's
    /// extra keys folded into their blocks (see [`BlockIdentity`]'s rules).
    /// A plain identity hashes exactly as [`BlockHasher::hash_blocks_into`]. The router
    /// hashes requests and the engines' events with this one function.
    pub fn hash_blocks_with_into(&self, tokens: &[u32], identity: &BlockIdentity<'_>, out: &mut Vec<BlockHash>) {
        let start = out.len();
        match identity.lora_name.filter(|name| !name.is_empty()) {
            Some(lora) => self.with_namespace(Some(lora), None).hash_blocks_into(tokens, out),
            None => self.hash_blocks_into(tokens, out),
        }
        let blocks = &mut out[start..];
        let salt = identity.cache_salt.filter(|salt| !salt.is_empty());
        if let (Some(salt), Some(first)) = (salt, blocks.first_mut()) {
            let mut keys = vec![KeyValue::Str(salt.to_owned())];
            if let Some(Some(more)) = identity.extra_keys.first() {
                keys.extend(more.iter().cloned());
            }
            *first = fold_extra_keys(*first, extra_keys_hash(&keys));
            fold_block_keys(&mut blocks[1..], identity.extra_keys.get(1..).unwrap_or(&[]));
        } else {
            fold_block_keys(blocks, identity.extra_keys);
        }
    }

    /// Like [`BlockHasher::hash_blocks_into`] but always on the portable scalar path
    /// (identical results; for tests and benches).
    pub fn hash_blocks_portable_into(&self, tokens: &[u32], out: &mut Vec<BlockHash>) {
        self.hash_into(tokens, out, false);
    }

    fn hash_into(&self, tokens: &[u32], out: &mut Vec<BlockHash>, simd: bool) {
        let bs = self.block_size;
        if bs == 0 {
            return; // unreachable through the constructors; no panic either way
        }
        let n = tokens.len() / bs;
        if n == 0 {
            return;
        }
        let start = out.len();
        out.resize(start + n, BlockHash(0));
        let dst = &mut out[start..];
        match self.scheme {
            HashScheme::Kv64 => {
                let tweak = kv64::tweak(self.seed(), bs);
                if simd {
                    kv64::hash_blocks(tokens, bs, tweak, dst);
                } else {
                    kv64::hash_blocks_portable(tokens, bs, tweak, dst);
                }
            }
            HashScheme::Xxh3Compat => {
                // `n >= 1` so `bs <= tokens.len()`, and `bs * 4` cannot overflow.
                let hasher = xxh3::Xxh3Seeded::new(self.seed(), bs * 4);
                let bytes = le_bytes(&tokens[..n * bs]);
                for (d, chunk) in dst.iter_mut().zip(bytes.chunks_exact(bs * 4)) {
                    *d = BlockHash(hasher.hash(chunk));
                }
            }
        }
    }
}

/// The namespace part of the seed: `xxh3(lora, 0) + xxh3(salt, 1)` over the non-empty
/// ones (Dynamo's `compute_salt_hash` minus its base of 1337).
fn namespace_term(lora_name: Option<&str>, cache_salt: Option<&str>) -> u64 {
    let mut term = 0u64;
    if let Some(name) = lora_name.filter(|s| !s.is_empty()) {
        term = term.wrapping_add(xxh3_64_with_seed(name.as_bytes(), 0));
    }
    if let Some(salt) = cache_salt.filter(|s| !s.is_empty()) {
        term = term.wrapping_add(xxh3_64_with_seed(salt.as_bytes(), 1));
    }
    term
}

/// Token ids as little-endian bytes: borrowed on little-endian targets, copied otherwise.
fn le_bytes(tokens: &[u32]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: `u32` has no padding and every byte pattern is a valid `u8`; the new
        // slice covers exactly the `4 * len` bytes of `tokens` (which fits in `isize`
        // because `tokens` exists), `u8` has alignment 1, and it borrows `tokens` for the
        // same lifetime. On little-endian targets these bytes are the LE encoding.
        let bytes = unsafe { std::slice::from_raw_parts(tokens.as_ptr().cast::<u8>(), std::mem::size_of_val(tokens)) };
        std::borrow::Cow::Borrowed(bytes)
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(tokens.iter().flat_map(|t| t.to_le_bytes()).collect())
    }
}

/// Dynamo's chained sequence hashes of a run of local block hashes starting at the root:
/// `seq[0] = local[0]`, `seq[i] = xxh3_64_with_seed(le(seq[i-1]) ++ le(local[i]), 1337)`.
pub fn dynamo_sequence_hashes(local: &[BlockHash]) -> Vec<u64> {
    let mut out = Vec::with_capacity(local.len());
    let mut iter = local.iter();
    if let Some(first) = iter.next() {
        let mut prev = first.0;
        out.push(prev);
        for block in iter {
            prev = dynamo_next_sequence_hash(prev, *block);
            out.push(prev);
        }
    }
    out
}

/// One step of Dynamo's sequence-hash chain: the hash of the child block `block` under a
/// parent whose sequence hash is `parent`.
pub fn dynamo_next_sequence_hash(parent: u64, block: BlockHash) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&parent.to_le_bytes());
    bytes[8..].copy_from_slice(&block.0.to_le_bytes());
    xxh3_64_with_seed(&bytes, DYNAMO_XXH3_SEED)
}
