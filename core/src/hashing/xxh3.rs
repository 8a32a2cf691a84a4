//! Our own XXH3-64 (seeded), written from the public algorithm description
//! (xxHash's `doc/xxhash_spec.md`, XXH3 section). Only the 64-bit variant with the
//! default secret and a 64-bit seed is implemented, which is exactly what Dynamo and
//! the SGLang gateway use for block hashes (`xxh3_64_with_seed(bytes, 1337)`).
//!
//! Input-length ranges, as in the specification:
//! - `0`, `1..=3`, `4..=8`, `9..=16` bytes: dedicated short paths;
//! - `17..=128`: up to four pairs of 16-byte "mix" steps taken from both ends;
//! - `129..=240`: eight 16-byte mixes, an avalanche, then the remaining mixes;
//! - `> 240`: the striped "long" loop (8 accumulators, 64-byte stripes, a scramble every
//!   16 stripes) over a secret derived from the seed.
//!
//! Everything is safe Rust over byte slices; reads are little-endian.

/// The 192-byte default secret of XXH3 (a published constant of the specification).
const SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4, 0x6d,
    0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0,
    0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0,
    0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b,
    0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac,
    0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51,
    0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34,
    0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49,
    0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8,
    0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b,
    0x40, 0x7e,
];

const P32_1: u64 = 0x9E37_79B1;
const P32_2: u64 = 0x85EB_CA77;
const P32_3: u64 = 0xC2B2_AE3D;
const P64_1: u64 = 0x9E37_79B1_85EB_CA87;
const P64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P64_3: u64 = 0x1656_67B1_9E37_79F9;
const P64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const P64_5: u64 = 0x27D4_EB2F_1656_67C5;
const PRIME_MX1: u64 = 0x1656_6791_9E37_79F9;
const PRIME_MX2: u64 = 0x9FB2_1C65_1E98_DF25;

const STRIPE: usize = 64;
/// Secret bytes consumed per stripe (the secret "slides" by 8 bytes per stripe).
const SECRET_STEP: usize = 8;
const STRIPES_PER_BLOCK: usize = (SECRET.len() - STRIPE) / SECRET_STEP; // 16
const BLOCK: usize = STRIPE * STRIPES_PER_BLOCK; // 1024 bytes

#[inline(always)]
fn r32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

#[inline(always)]
fn r64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// 64x64 -> 128-bit product, folded by xoring its halves.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The XXH64-style finalizer (used by the 0..=3 byte paths).
#[inline(always)]
fn avalanche_xxh64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P64_2);
    h ^= h >> 29;
    h = h.wrapping_mul(P64_3);
    h ^ (h >> 32)
}

/// The XXH3 finalizer.
#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(PRIME_MX1);
    h ^ (h >> 32)
}

/// The stronger finalizer of the 4..=8 byte path.
#[inline(always)]
fn rrmxmx(mut h: u64, len: u64) -> u64 {
    h ^= h.rotate_left(49) ^ h.rotate_left(24);
    h = h.wrapping_mul(PRIME_MX2);
    h ^= (h >> 35).wrapping_add(len);
    h = h.wrapping_mul(PRIME_MX2);
    h ^ (h >> 28)
}

/// One 16-byte mix: both input words keyed by the default secret at `secret_at` (offset
/// by the seed), multiplied and folded. `secret_at` is a constant at every call site.
#[inline(always)]
fn mix16(input: &[u8], at: usize, secret_at: usize, seed: u64) -> u64 {
    let lo = r64(input, at) ^ r64(&SECRET, secret_at).wrapping_add(seed);
    let hi = r64(input, at + 8) ^ r64(&SECRET, secret_at + 8).wrapping_sub(seed);
    fold_mul(lo, hi)
}

fn hash_0to16(input: &[u8], seed: u64) -> u64 {
    let len = input.len();
    if len > 8 {
        let flip_lo = (r64(&SECRET, 24) ^ r64(&SECRET, 32)).wrapping_add(seed);
        let flip_hi = (r64(&SECRET, 40) ^ r64(&SECRET, 48)).wrapping_sub(seed);
        let lo = r64(input, 0) ^ flip_lo;
        let hi = r64(input, len - 8) ^ flip_hi;
        let acc = (len as u64).wrapping_add(lo.swap_bytes()).wrapping_add(hi).wrapping_add(fold_mul(lo, hi));
        avalanche(acc)
    } else if len >= 4 {
        let seed = seed ^ (((seed as u32).swap_bytes() as u64) << 32);
        let first = r32(input, 0) as u64;
        let last = r32(input, len - 4) as u64;
        let flip = (r64(&SECRET, 8) ^ r64(&SECRET, 16)).wrapping_sub(seed);
        let keyed = (last.wrapping_add(first << 32)) ^ flip;
        rrmxmx(keyed, len as u64)
    } else if len > 0 {
        let c1 = input[0] as u32;
        let c2 = input[len >> 1] as u32;
        let c3 = input[len - 1] as u32;
        let combined = (c1 << 16) | (c2 << 24) | c3 | ((len as u32) << 8);
        let flip = ((r32(&SECRET, 0) ^ r32(&SECRET, 4)) as u64).wrapping_add(seed);
        avalanche_xxh64(combined as u64 ^ flip)
    } else {
        avalanche_xxh64(seed ^ r64(&SECRET, 56) ^ r64(&SECRET, 64))
    }
}

/// 17..=128 bytes: pairs of 16-byte mixes from the front and the back; the pair at
/// front offset `16i` (secret `32i`) and back offset `len - 16(i+1)` (secret `32i + 16`)
/// is used when `len > 32i`.
fn hash_17to128(input: &[u8], seed: u64) -> u64 {
    let len = input.len();
    let mut acc = (len as u64).wrapping_mul(P64_1);
    if len > 32 {
        if len > 64 {
            if len > 96 {
                acc = acc.wrapping_add(mix16(input, 48, 96, seed));
                acc = acc.wrapping_add(mix16(input, len - 64, 112, seed));
            }
            acc = acc.wrapping_add(mix16(input, 32, 64, seed));
            acc = acc.wrapping_add(mix16(input, len - 48, 80, seed));
        }
        acc = acc.wrapping_add(mix16(input, 16, 32, seed));
        acc = acc.wrapping_add(mix16(input, len - 32, 48, seed));
    }
    acc = acc.wrapping_add(mix16(input, 0, 0, seed));
    acc = acc.wrapping_add(mix16(input, len - 16, 16, seed));
    avalanche(acc)
}

fn hash_129to240(input: &[u8], seed: u64) -> u64 {
    const START_OFFSET: usize = 3;
    const LAST_OFFSET: usize = 17;
    const SECRET_MIN: usize = 136;
    let len = input.len();
    let mut acc = (len as u64).wrapping_mul(P64_1);
    for i in 0..8 {
        acc = acc.wrapping_add(mix16(input, 16 * i, 16 * i, seed));
    }
    let mut acc = avalanche(acc);
    for i in 8..len / 16 {
        acc = acc.wrapping_add(mix16(input, 16 * i, 16 * (i - 8) + START_OFFSET, seed));
    }
    acc = acc.wrapping_add(mix16(input, len - 16, SECRET_MIN - LAST_OFFSET, seed));
    avalanche(acc)
}

/// A seed-derived secret for inputs over 240 bytes: each 16-byte pair of default-secret
/// words gets `(+seed, -seed)`; the default secret itself when the seed is 0.
#[derive(Clone)]
pub(crate) struct LongSecret {
    bytes: [u8; SECRET.len()],
    /// `bytes` as little-endian words (stripe `s` reads words `s..s + 8`).
    words: [u64; SECRET.len() / 8],
}

impl LongSecret {
    pub(crate) fn new(seed: u64) -> LongSecret {
        let mut bytes = SECRET;
        if seed != 0 {
            for i in 0..SECRET.len() / 16 {
                let lo = r64(&SECRET, 16 * i).wrapping_add(seed);
                let hi = r64(&SECRET, 16 * i + 8).wrapping_sub(seed);
                bytes[16 * i..16 * i + 8].copy_from_slice(&lo.to_le_bytes());
                bytes[16 * i + 8..16 * i + 16].copy_from_slice(&hi.to_le_bytes());
            }
        }
        let mut words = [0u64; SECRET.len() / 8];
        for (i, w) in words.iter_mut().enumerate() {
            *w = r64(&bytes, 8 * i);
        }
        LongSecret { bytes, words }
    }
}

/// One 64-byte stripe into the 8 accumulators: each lane adds the product of the low
/// and high halves of (data ^ key), and the raw data word goes to the neighbour lane.
#[inline(always)]
fn accumulate_stripe(acc: &mut [u64; 8], stripe: &[u8; STRIPE], keys: &[u64; 8]) {
    let mut data = [0u64; 8];
    for (i, d) in data.iter_mut().enumerate() {
        *d = r64(stripe, 8 * i);
    }
    for i in 0..8 {
        let keyed = data[i] ^ keys[i];
        acc[i ^ 1] = acc[i ^ 1].wrapping_add(data[i]);
        acc[i] = acc[i].wrapping_add((keyed & 0xFFFF_FFFF).wrapping_mul(keyed >> 32));
    }
}

#[inline(always)]
fn scramble(acc: &mut [u64; 8], keys: &[u64; 8]) {
    for (a, k) in acc.iter_mut().zip(keys) {
        let v = *a ^ (*a >> 47) ^ k;
        *a = v.wrapping_mul(P32_1);
    }
}

/// Key words `first..first + 8` of the secret (`first <= 16` at every call site).
#[inline(always)]
fn key_words(secret: &LongSecret, first: usize) -> &[u64; 8] {
    <&[u64; 8]>::try_from(&secret.words[first..first + 8]).unwrap_or(&ZERO_KEYS)
}

static ZERO_KEYS: [u64; 8] = [0; 8];

fn hash_long(input: &[u8], secret: &LongSecret) -> u64 {
    const LAST_ACC_START: usize = 7;
    const MERGE_START: usize = 11;
    let len = input.len();
    let mut acc: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];
    let scramble_keys = key_words(secret, (SECRET.len() - STRIPE) / 8);
    // Full 1024-byte blocks, except that the last (possibly partial) block is handled
    // below: `(len - 1) / BLOCK` of them.
    let blocks = (len - 1) / BLOCK;
    for block in input.chunks_exact(BLOCK).take(blocks) {
        for (s, stripe) in block.chunks_exact(STRIPE).enumerate() {
            accumulate_stripe(&mut acc, stripe_array(stripe), key_words(secret, s));
        }
        scramble(&mut acc, scramble_keys);
    }
    let tail_stripes = ((len - 1) - blocks * BLOCK) / STRIPE;
    for (s, stripe) in input[blocks * BLOCK..].chunks_exact(STRIPE).take(tail_stripes).enumerate() {
        accumulate_stripe(&mut acc, stripe_array(stripe), key_words(secret, s));
    }
    // The last stripe (possibly overlapping the previous one), with an unaligned key.
    let last_at = SECRET.len() - STRIPE - LAST_ACC_START;
    let mut last_keys = [0u64; 8];
    for (i, k) in last_keys.iter_mut().enumerate() {
        *k = r64(&secret.bytes, last_at + 8 * i);
    }
    accumulate_stripe(&mut acc, stripe_array(&input[len - STRIPE..]), &last_keys);
    let mut h = (len as u64).wrapping_mul(P64_1);
    for i in 0..4 {
        let at = MERGE_START + 16 * i;
        h = h.wrapping_add(fold_mul(acc[2 * i] ^ r64(&secret.bytes, at), acc[2 * i + 1] ^ r64(&secret.bytes, at + 8)));
    }
    avalanche(h)
}

/// A 64-byte chunk as an array reference (`chunk.len()` is 64 at every call site).
#[inline(always)]
fn stripe_array(chunk: &[u8]) -> &[u8; STRIPE] {
    <&[u8; STRIPE]>::try_from(chunk).unwrap_or(&[0; STRIPE])
}

/// XXH3-64 of `bytes` with `seed`, bit-identical to the reference `XXH3_64bits_withSeed`.
pub fn xxh3_64_with_seed(bytes: &[u8], seed: u64) -> u64 {
    match bytes.len() {
        0..=16 => hash_0to16(bytes, seed),
        17..=128 => hash_17to128(bytes, seed),
        129..=240 => hash_129to240(bytes, seed),
        _ => hash_long(bytes, &LongSecret::new(seed)),
    }
}

/// XXH3-64 with a fixed seed, for hashing many inputs: the seed-derived secret of the
/// long-input path is computed once.
#[derive(Clone)]
pub(crate) struct Xxh3Seeded {
    seed: u64,
    long: Option<LongSecret>,
}

impl Xxh3Seeded {
    /// `max_len`: the longest input this will hash (the secret is only needed above 240).
    pub(crate) fn new(seed: u64, max_len: usize) -> Xxh3Seeded {
        Xxh3Seeded { seed, long: (max_len > MIDSIZE_MAX).then(|| LongSecret::new(seed)) }
    }

    #[inline]
    pub(crate) fn hash(&self, bytes: &[u8]) -> u64 {
        match (bytes.len(), &self.long) {
            (0..=16, _) => hash_0to16(bytes, self.seed),
            (17..=128, _) => hash_17to128(bytes, self.seed),
            (129..=MIDSIZE_MAX, _) => hash_129to240(bytes, self.seed),
            (_, Some(secret)) => hash_long(bytes, secret),
            (_, None) => hash_long(bytes, &LongSecret::new(self.seed)),
        }
    }
}

const MIDSIZE_MAX: usize = 240;
