//! The `Kv64` block hash: its definition (the portable scalar code below is the
//! reference) and the AVX2 kernel that hashes four blocks at once, bit-identically.
//!
//! For one block of `n >= 1` tokens and a per-hasher 64-bit `tweak` (from the seed and the
//! block size, see [`tweak`]):
//!
//! 1. The block is read as stripes of 8 tokens `w[0..8]`; the last one is zero-padded.
//! 2. Four 64-bit accumulators start at 0. Stripe `j` uses key row `K[j % 64]` (eight
//!    32-bit keys) and adds, to each lane `l` in `0..4`, the 32x32 -> 64-bit product
//!    `(w[2l] ^ k[2l]) * (w[2l+1] ^ k[2l+1])` (wrapping, mod 2^64).
//! 3. Before stripe `j` when `j > 0` and `j % 64 == 0` the lanes are scrambled
//!    (`a ^= a >> 47; a *= 0x9E3779B1`), so stripes 64 apart, which share key rows,
//!    contribute differently.
//! 4. `S = acc[0] + acc[1] + acc[2] + acc[3]` and the result is [`finish`]`(S, tweak)`, a
//!    bijection of `S`: xorshift 32, then `lo * M1 + (hi << 32 | tweak_lo)`, xorshift 32,
//!    then `lo * M2 + (hi << 32 | tweak_hi)` (`M1`, `M2` odd and close to 2^32, so the
//!    products' top bits are near-uniform; per-bit avalanche measured unbiased).
//!
//! Keys have bit 31 set, so for token ids below 2^31 (every real vocabulary) each factor
//! is in `[2^31, 2^32)`: never zero, and a product never wraps. Hence changing ONE token
//! changes its product by `(A' - A) * B` with `0 < |A' - A| < 2^32` and `0 < B < 2^32`,
//! which is nonzero mod 2^64; `S` changes and, `finish` being a bijection, so does the
//! hash (a scramble in between is a bijection of that one lane, so it keeps the change).
//! The two keys of a lane differ in bits 24..31, so the product's factor-swap symmetry,
//! `(a, b) -> (b ^ d, a ^ d)` with `d = k[2l] ^ k[2l+1]`, needs a token id of at least
//! 2^24. Other collisions need an exact arithmetic coincidence (about 2^-64 for unrelated
//! blocks). Token ids of 2^31 and more are hashed too, without these guarantees (e.g. a
//! token equal to its key zeroes its lane's product).

use crate::ids::BlockHash;

/// Tokens per stripe (one 256-bit vector of u32).
pub(crate) const STRIPE_TOKENS: usize = 8;
/// Stripes per key segment; key rows repeat with this period (with a scramble between).
pub(crate) const SEGMENT: usize = 64;

const SCRAMBLE_MUL: u32 = 0x9E37_79B1;
const FINISH_MUL_1: u32 = 0xD6E8_FEB7;
const FINISH_MUL_2: u32 = 0xFD7A_4C2B;
const LO: u64 = 0xFFFF_FFFF;

/// Key rows, 32-byte aligned so the AVX2 kernel can use aligned loads.
#[repr(C, align(32))]
pub(crate) struct Keys(pub(crate) [[u32; STRIPE_TOKENS]; SEGMENT]);

/// Fixed pseudo-random key rows (a splitmix64 stream): every key has bit 31 set, and the
/// two keys of each lane differ somewhere in bits 24..31 (see the module doc).
pub(crate) static KEYS: Keys = Keys(gen_keys());

const fn splitmix64(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (s, z ^ (z >> 31))
}

const fn gen_keys() -> [[u32; STRIPE_TOKENS]; SEGMENT] {
    let mut keys = [[0u32; STRIPE_TOKENS]; SEGMENT];
    let mut state = 0x6B76_726F_7574_6521; // "kvroute!"
    let mut j = 0;
    while j < SEGMENT {
        let mut w = 0;
        while w < STRIPE_TOKENS {
            let (s, z) = splitmix64(state);
            state = s;
            let lo = (z as u32) | 0x8000_0000;
            let hi = ((z >> 32) as u32) | 0x8000_0000;
            if (lo ^ hi) >> 24 != 0 {
                keys[j][w] = lo;
                keys[j][w + 1] = hi;
                w += 2;
            }
        }
        j += 1;
    }
    keys
}

/// The per-hasher constant folded into [`finish`]: murmur3's fmix64 of the seed and the
/// block size.
pub(crate) fn tweak(seed: u64, block_size: usize) -> u64 {
    let mut z = seed ^ (block_size as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^= z >> 33;
    z = z.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^= z >> 33;
    z = z.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

#[inline(always)]
fn scramble(a: u64) -> u64 {
    (a ^ (a >> 47)).wrapping_mul(SCRAMBLE_MUL as u64)
}

/// The finalizer: a bijection of `s` for each `tweak`. Each multiply round is
/// `lo * M + (hi << 32 | c)`, one `vpmuludq`, one `vpblendd` and one `vpaddq` in AVX2.
#[inline(always)]
pub(crate) fn finish(s: u64, tweak: u64) -> u64 {
    let mut h = s ^ (s >> 32);
    h = (h & LO).wrapping_mul(FINISH_MUL_1 as u64).wrapping_add((h & !LO) | (tweak & LO));
    h ^= h >> 32;
    (h & LO).wrapping_mul(FINISH_MUL_2 as u64).wrapping_add((h & !LO) | (tweak >> 32))
}

/// Adds stripe `w` (8 tokens, zero-padded) keyed by row `k` to the accumulators.
#[inline(always)]
fn stripe(acc: &mut [u64; 4], w: &[u32; STRIPE_TOKENS], k: &[u32; STRIPE_TOKENS]) {
    for (l, a) in acc.iter_mut().enumerate() {
        let product = ((w[2 * l] ^ k[2 * l]) as u64) * ((w[2 * l + 1] ^ k[2 * l + 1]) as u64);
        *a = a.wrapping_add(product);
    }
}

/// Portable reference: the hash of one block (the caller passes a non-empty block).
pub(crate) fn hash_block(block: &[u32], tweak: u64) -> u64 {
    let mut acc = [0u64; 4];
    let stripes = block.chunks_exact(STRIPE_TOKENS);
    let tail = stripes.remainder();
    let mut j = 0;
    for chunk in stripes {
        if j != 0 && j % SEGMENT == 0 {
            acc = acc.map(scramble);
        }
        let w = <&[u32; STRIPE_TOKENS]>::try_from(chunk).unwrap_or(&[0; STRIPE_TOKENS]);
        stripe(&mut acc, w, &KEYS.0[j % SEGMENT]);
        j += 1;
    }
    if !tail.is_empty() {
        if j != 0 && j % SEGMENT == 0 {
            acc = acc.map(scramble);
        }
        let mut w = [0u32; STRIPE_TOKENS];
        w[..tail.len()].copy_from_slice(tail);
        stripe(&mut acc, &w, &KEYS.0[j % SEGMENT]);
    }
    let s = acc.iter().fold(0u64, |s, &a| s.wrapping_add(a));
    finish(s, tweak)
}

/// Portable path: `out[i]` = hash of block `i`, for the blocks `out` has room for.
pub(crate) fn hash_blocks_portable(tokens: &[u32], block_size: usize, tweak: u64, out: &mut [BlockHash]) {
    if block_size == 0 {
        return;
    }
    for (dst, block) in out.iter_mut().zip(tokens.chunks_exact(block_size)) {
        *dst = BlockHash(hash_block(block, tweak));
    }
}

/// Whether the AVX2 kernel may be used (detected once, then cached).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: not probed yet, 1: absent, 2: present.
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let present = std::arch::is_x86_feature_detected!("avx2");
            STATE.store(if present { 2 } else { 1 }, Ordering::Relaxed);
            present
        }
    }
}

/// `out[i]` = hash of block `i` for every block `out` has room for (the caller sizes it
/// to `tokens.len() / block_size`), with the AVX2 kernel when the CPU has it.
pub(crate) fn hash_blocks(tokens: &[u32], block_size: usize, tweak: u64, out: &mut [BlockHash]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: AVX2 support was detected at runtime (`avx2_available`), the kernel's
        // only precondition; it bounds-checks every access itself.
        unsafe { avx2::hash_blocks(tokens, block_size, tweak, out) };
        return;
    }
    hash_blocks_portable(tokens, block_size, tweak, out);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Four blocks per group. Block `b` of a group keeps its four accumulators in one
    //! `__m256i` (64-bit lane `l` = `acc[l]`). A stripe is one unaligned 32-byte load,
    //! whose 64-bit lane `l` holds exactly the token pair `(w[2l], w[2l+1])`; `vpxor` with
    //! the key row, `vpsrlq 32` (high token to the low half) and `vpmuludq` make the four
    //! products and `vpaddq` accumulates them. The four blocks are independent dependency
    //! chains in one instruction stream. A 4x4 transpose-and-add then puts block `b`'s sum
    //! `S` in lane `b`, and `finish` runs on the four blocks at once. Common block sizes
    //! get a fully unrolled kernel; the general one handles tails with a masked load
    //! (zero for the missing tokens, as in the definition) and the 64-stripe scramble.
    //!
    //! All arithmetic intrinsics are used inside `#[target_feature(enable = "avx2")]`
    //! functions (through the macros below); only the memory accesses need `unsafe`.

    use super::{FINISH_MUL_1, FINISH_MUL_2, KEYS, SCRAMBLE_MUL, SEGMENT, STRIPE_TOKENS};
    use crate::ids::BlockHash;
    use std::arch::x86_64::*;

    /// `acc + (lo(t) * hi(t))` per 64-bit lane, with `t = x ^ k`.
    macro_rules! step {
        ($acc:expr, $x:expr, $k:expr) => {{
            let t = _mm256_xor_si256($x, $k);
            _mm256_add_epi64($acc, _mm256_mul_epu32(t, _mm256_srli_epi64::<32>(t)))
        }};
    }

    /// `step!` applied to the four blocks' accumulators with the same key row.
    macro_rules! step4 {
        ($a:ident, $x:expr, $k:expr) => {{
            let x = $x;
            let k = $k;
            $a = [step!($a[0], x[0], k), step!($a[1], x[1], k), step!($a[2], x[2], k), step!($a[3], x[3], k)];
        }};
    }

    /// `super::scramble` on every lane of the four accumulators.
    macro_rules! scramble4 {
        ($a:ident) => {{
            let m = _mm256_set1_epi64x(SCRAMBLE_MUL as i64);
            for v in $a.iter_mut() {
                let x = _mm256_xor_si256(*v, _mm256_srli_epi64::<47>(*v));
                // 64x32-bit multiply: lo * m + (hi * m << 32).
                let hi = _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), m);
                *v = _mm256_add_epi64(_mm256_mul_epu32(x, m), _mm256_slli_epi64::<32>(hi));
            }
        }};
    }

    /// One `lo * M + (hi << 32 | c)` round of `super::finish`; `c` holds the 32-bit
    /// constant in the low half of each lane.
    macro_rules! half_mul {
        ($h:expr, $m:expr, $c:expr) => {{
            let h = $h;
            _mm256_add_epi64(_mm256_mul_epu32(h, $m), _mm256_blend_epi32::<0x55>(h, $c))
        }};
    }

    /// Per-call constants: the tweak halves for `finish` and the tail mask.
    #[derive(Clone, Copy)]
    struct Consts {
        tweak_lo: __m256i,
        tweak_hi: __m256i,
        tail_mask: __m256i,
    }

    /// Reduces four blocks' accumulators to their four hashes (lane `b` = block `b`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn reduce_finish(a: [__m256i; 4], c: Consts) -> __m256i {
        // s01 = [a0.0+a0.1, a1.0+a1.1, a0.2+a0.3, a1.2+a1.3], s23 likewise.
        let s01 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[0], a[1]), _mm256_unpackhi_epi64(a[0], a[1]));
        let s23 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[2], a[3]), _mm256_unpackhi_epi64(a[2], a[3]));
        // [s01.lo, s23.hi] + [s01.hi, s23.lo] = [S0, S1, S2, S3].
        let s = _mm256_add_epi64(_mm256_blend_epi32::<0xF0>(s01, s23), _mm256_permute2x128_si256::<0x21>(s01, s23));
        let m1 = _mm256_set1_epi64x(FINISH_MUL_1 as i64);
        let m2 = _mm256_set1_epi64x(FINISH_MUL_2 as i64);
        let mut h = _mm256_xor_si256(s, _mm256_srli_epi64::<32>(s));
        h = half_mul!(h, m1, c.tweak_lo);
        h = _mm256_xor_si256(h, _mm256_srli_epi64::<32>(h));
        half_mul!(h, m2, c.tweak_hi)
    }

    /// Loads stripe `j` (tokens `8j..8j + 8`) of the four blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2, and tokens `8j..8j + 8` of each block must be readable.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load4(p: &[*const u32; 4], j: usize) -> [__m256i; 4] {
        let off = j * STRIPE_TOKENS;
        // SAFETY: the caller guarantees tokens `off..off + 8` of each block are readable;
        // these are unaligned 32-byte loads.
        unsafe {
            [
                _mm256_loadu_si256(p[0].add(off).cast()),
                _mm256_loadu_si256(p[1].add(off).cast()),
                _mm256_loadu_si256(p[2].add(off).cast()),
                _mm256_loadu_si256(p[3].add(off).cast()),
            ]
        }
    }

    /// Key row `j % SEGMENT`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn key(j: usize) -> __m256i {
        let row = &KEYS.0[j % SEGMENT];
        // SAFETY: `KEYS` is `align(32)` and every row is exactly 32 bytes, so this is an
        // aligned load entirely inside `row`.
        unsafe { _mm256_load_si256(row.as_ptr().cast()) }
    }

    /// Four blocks of exactly `8 * FULL` tokens, `1 <= FULL <= SEGMENT` (no tail, no
    /// scramble), fully unrolled; lane `b` of the result is block `b`.
    ///
    /// # Safety
    /// The CPU must support AVX2, and each `p[b]` must point to `8 * FULL` readable `u32`s.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn group_fixed<const FULL: usize>(p: [*const u32; 4], c: Consts) -> __m256i {
        let mut a = [_mm256_setzero_si256(); 4];
        for j in 0..FULL {
            // SAFETY: `j < FULL`, so stripe `j` lies within each block, as required.
            step4!(a, unsafe { load4(&p, j) }, unsafe { key(j) });
        }
        // SAFETY: AVX2 is enabled in this function.
        unsafe { reduce_finish(a, c) }
    }

    /// Four blocks of any size `block_size >= 1`; lane `b` of the result is block `b`.
    ///
    /// # Safety
    /// The CPU must support AVX2, and each `p[b]` must point to `block_size` readable
    /// `u32`s.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn group_any(p: [*const u32; 4], block_size: usize, c: Consts) -> __m256i {
        let full = block_size / STRIPE_TOKENS;
        let mut a = [_mm256_setzero_si256(); 4];
        let mut start = 0;
        while start < full {
            if start != 0 {
                // `start` is a positive multiple of SEGMENT: the key rows start over.
                scramble4!(a);
            }
            let end = full.min(start + SEGMENT);
            for j in start..end {
                // SAFETY: `j < full`, so stripe `j` lies within each block.
                step4!(a, unsafe { load4(&p, j) }, unsafe { key(j) });
            }
            start = end;
        }
        if block_size % STRIPE_TOKENS != 0 {
            if full != 0 && full % SEGMENT == 0 {
                scramble4!(a);
            }
            let off = full * STRIPE_TOKENS;
            // SAFETY: `c.tail_mask` enables exactly the first `block_size - off` lanes; a
            // masked load reads only the enabled lanes (the others read as zero and never
            // fault), and tokens `off..block_size` of each block are readable.
            let x = unsafe {
                [
                    _mm256_maskload_epi32(p[0].add(off).cast(), c.tail_mask),
                    _mm256_maskload_epi32(p[1].add(off).cast(), c.tail_mask),
                    _mm256_maskload_epi32(p[2].add(off).cast(), c.tail_mask),
                    _mm256_maskload_epi32(p[3].add(off).cast(), c.tail_mask),
                ]
            };
            // SAFETY: AVX2 is enabled in this function.
            step4!(a, x, unsafe { key(full) });
        }
        // SAFETY: AVX2 is enabled in this function.
        unsafe { reduce_finish(a, c) }
    }

    /// Writes `out[i]` = hash of block `i` for `i < min(out.len(), tokens.len() / block_size)`.
    ///
    /// # Safety
    /// The CPU must support AVX2. (Every memory access is bounds-checked here.)
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_blocks(tokens: &[u32], block_size: usize, tweak: u64, out: &mut [BlockHash]) {
        // One monomorphic loop per common block size, so the per-group code has no
        // dispatch and its stripes are fully unrolled. SAFETY: AVX2 is enabled in this
        // function, and in every arm `FULL` is either 0 or exactly `block_size / 8` with
        // `block_size % 8 == 0`, as `run` requires.
        unsafe {
            match block_size {
                8 => run::<1>(tokens, block_size, tweak, out),
                16 => run::<2>(tokens, block_size, tweak, out),
                32 => run::<4>(tokens, block_size, tweak, out),
                64 => run::<8>(tokens, block_size, tweak, out),
                _ => run::<0>(tokens, block_size, tweak, out),
            }
        }
    }

    /// The body of [`hash_blocks`]: `group_fixed::<FULL>` when `FULL != 0`, else
    /// `group_any`.
    ///
    /// # Safety
    /// The CPU must support AVX2, and `FULL` must be 0 or `block_size / 8` with
    /// `block_size % 8 == 0` (checked: other combinations do nothing).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn run<const FULL: usize>(tokens: &[u32], block_size: usize, tweak: u64, out: &mut [BlockHash]) {
        if block_size == 0 || (FULL != 0 && block_size != FULL * STRIPE_TOKENS) {
            return;
        }
        let n = out.len().min(tokens.len() / block_size);
        if n == 0 {
            return;
        }
        let rem = (block_size % STRIPE_TOKENS) as i32;
        let c = Consts {
            tweak_lo: _mm256_set1_epi64x((tweak & super::LO) as i64),
            tweak_hi: _mm256_set1_epi64x((tweak >> 32) as i64),
            tail_mask: _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        };
        // Hashes the four blocks at `p`; each must start `block_size` readable tokens.
        let group = |p: [*const u32; 4]| {
            // SAFETY: AVX2 is enabled (this closure only runs inside `run`), `FULL`
            // matches `block_size` as checked above, and the caller of the closure passes
            // pointers to full in-bounds blocks.
            unsafe {
                if FULL != 0 {
                    group_fixed::<FULL>(p, c)
                } else {
                    group_any(p, block_size, c)
                }
            }
        };
        let base = tokens.as_ptr();
        let groups = n / 4;
        for (g, dst) in out[..4 * groups].chunks_exact_mut(4).enumerate() {
            // SAFETY: blocks `4g..4g + 4` are all `< n <= tokens.len() / block_size`, so
            // every pointer below starts a full block inside `tokens`.
            let p = unsafe {
                let p0 = base.add(4 * g * block_size);
                [p0, p0.add(block_size), p0.add(2 * block_size), p0.add(3 * block_size)]
            };
            let h = group(p);
            // SAFETY: `dst` is 4 `BlockHash`es = 32 writable bytes (`BlockHash` is a
            // `repr(transparent)` u64); the store is unaligned.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) };
        }
        let done = 4 * groups;
        if done < n {
            // 1..=3 leftover blocks: one more group whose missing lanes repeat the last
            // block; only the real lanes are kept.
            let last = n - 1;
            let idx = |b: usize| (done + b).min(last) * block_size;
            // SAFETY: every block index is `<= last < n`, so each pointer starts a full
            // block inside `tokens`, as in the main loop.
            let p = unsafe { [base.add(idx(0)), base.add(idx(1)), base.add(idx(2)), base.add(idx(3))] };
            let h = group(p);
            let mut lanes = [0u64; 4];
            // SAFETY: `lanes` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), h) };
            for (dst, &v) in out[done..n].iter_mut().zip(lanes.iter()) {
                *dst = BlockHash(v);
            }
        }
    }
}
