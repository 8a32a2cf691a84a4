//! The msgpack layer of the event decoder: a cursor over the payload bytes and the few
//! value readers the event shapes need, all on top of `rmp`'s low-level functions.
//!
//! [`Reader`] wraps an [`rmp::decode::Bytes`] (the unread rest of the payload) and knows
//! the payload's length, so every error carries the byte offset it happened at. Each read
//! first peeks at the next byte as an [`rmp::Marker`] to choose what to do (a hash may be an
//! unsigned int, a signed int or a bin; many fields may be nil), then lets `rmp` consume
//! the marker and its data (`read_int`, `read_array_len`, `read_str_len`, ...). Three
//! hot spots read the data of a marker they recognised straight from the slice instead:
//! token ids of up to 32 bits (one 8-byte load, no branch on the width, see
//! [`unsigned_u32`]), full-width hashes (`uint64` / `int64`) and fixstr keys; anything
//! else they meet goes the `rmp` way.
//!
//! Readers provided: container headers (array / map lengths), strings (as bytes, or
//! checked UTF-8), map keys, block hashes (int or bin, normalised to `u64`), token id
//! arrays, bounded integers for the typed fields, the batch timestamp, extra-key values
//! ([`KeyValue`], depth-limited recursion) and [`Reader::skip_value`], which steps over any
//! one msgpack value iteratively: it keeps a count of values still to skip, adds each
//! container's element count to it, and never recurses.
//!
//! Bounds: a length read from the input is compared with the bytes left before slicing;
//! a `Vec` for `n` elements reserves at most the bytes left (every element takes at least
//! one byte), so a forged `array32` header cannot make it allocate more than the input.
//! Integer conversions go through `read_int`'s range checks (the fast paths only take
//! widths that fit); slicing uses `get` / `split_first_chunk`, so nothing here can panic.

use rmp::decode::{self, Bytes, NumValueReadError, ValueReadError};
use rmp::Marker;

use super::DecodeError;
use crate::hashing::KeyValue;

/// How deep `extra_keys` may nest, counting its own list (1) and a block's entry (2):
/// values inside an entry may hold containers down to this level, deeper is a `shape` error.
pub(super) const MAX_EXTRA_KEYS_DEPTH: usize = 16;

/// The kind of a payload error, turned into the matching [`DecodeError`] with its offset.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Msgpack,
    Shape,
    Hash,
    Token,
    BlockSize,
    Rank,
}

impl Kind {
    pub(super) fn at(self, offset: usize, detail: &'static str) -> DecodeError {
        match self {
            Kind::Msgpack => DecodeError::Msgpack { offset, detail },
            Kind::Shape => DecodeError::Shape { offset, detail },
            Kind::Hash => DecodeError::Hash { offset, detail },
            Kind::Token => DecodeError::Token { offset, detail },
            Kind::BlockSize => DecodeError::BlockSize { offset, detail },
            Kind::Rank => DecodeError::Rank { offset, detail },
        }
    }
}

/// What an integer read found: a value in range, an integer out of range, or no integer.
pub(super) enum IntRead<T> {
    Value(T),
    OutOfRange,
    NotInt,
}

/// A cursor over one msgpack payload.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reader<'a> {
    /// The bytes not read yet.
    bytes: Bytes<'a>,
    /// Length of the whole payload (offsets are `len - remaining`).
    len: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(payload: &'a [u8]) -> Self {
        Reader { bytes: Bytes::new(payload), len: payload.len() }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.remaining_slice().len()
    }

    /// Offset of the next unread byte in the payload.
    pub(super) fn offset(&self) -> usize {
        self.len - self.remaining()
    }

    /// An error of `kind` at the current offset.
    pub(super) fn error(&self, kind: Kind, detail: &'static str) -> DecodeError {
        kind.at(self.offset(), detail)
    }

    fn truncated(&self) -> DecodeError {
        self.error(Kind::Msgpack, "truncated")
    }

    /// Maps an `rmp` error (after a peek chose the reader, so a type mismatch means a
    /// malformed value) onto a [`DecodeError`].
    fn value_error<E: decode::RmpReadErr>(&self, error: ValueReadError<E>, kind: Kind) -> DecodeError {
        match error {
            ValueReadError::InvalidMarkerRead(_) | ValueReadError::InvalidDataRead(_) => self.truncated(),
            ValueReadError::TypeMismatch(Marker::Reserved) => self.error(Kind::Msgpack, "reserved marker 0xc1"),
            ValueReadError::TypeMismatch(_) => self.error(kind, "unexpected msgpack type"),
        }
    }

    /// The next value's marker, not consumed.
    #[inline]
    pub(super) fn peek(&self) -> Result<Marker, DecodeError> {
        match self.bytes.remaining_slice().first() {
            Some(&byte) => Ok(Marker::from_u8(byte)),
            None => Err(self.truncated()),
        }
    }

    /// Consumes `len` bytes and returns them.
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.remaining_slice();
        if len > rest.len() {
            return Err(self.truncated());
        }
        let (head, tail) = rest.split_at(len);
        self.bytes = Bytes::new(tail);
        Ok(head)
    }

    /// Consumes a nil if one is next; says whether it did.
    #[inline]
    pub(super) fn eat_nil(&mut self) -> bool {
        match self.bytes.remaining_slice().split_first() {
            Some((&0xc0, tail)) => {
                self.bytes = Bytes::new(tail);
                true
            }
            _ => false,
        }
    }

    /// An array header; anything else is a `kind` error saying `what` was expected.
    /// The length is checked against the bytes left (each element needs one at least).
    pub(super) fn array_len(&mut self, kind: Kind, what: &'static str) -> Result<usize, DecodeError> {
        match self.peek()? {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {}
            Marker::Reserved => return Err(self.error(Kind::Msgpack, "reserved marker 0xc1")),
            _ => return Err(self.error(kind, what)),
        }
        let len = decode::read_array_len(&mut self.bytes).map_err(|e| self.value_error(e, kind))?;
        self.checked_count(len as usize, 1)
    }

    /// A map header (number of pairs), checked against the bytes left (two per pair).
    pub(super) fn map_len(&mut self) -> Result<usize, DecodeError> {
        let len = decode::read_map_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
        self.checked_count(len as usize, 2)
    }

    /// `count` values of at least `bytes_each` bytes each must fit in what is left.
    fn checked_count(&self, count: usize, bytes_each: usize) -> Result<usize, DecodeError> {
        if count.saturating_mul(bytes_each) > self.remaining() {
            return Err(self.truncated());
        }
        Ok(count)
    }

    /// A string's bytes (not checked for UTF-8); anything else is a `kind` error.
    pub(super) fn str_bytes(&mut self, kind: Kind, what: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.peek()? {
            Marker::FixStr(len) => {
                // Every key and most values: the length is in the marker.
                self.take(1)?;
                return self.take(usize::from(len));
            }
            Marker::Str8 | Marker::Str16 | Marker::Str32 => {}
            Marker::Reserved => return Err(self.error(Kind::Msgpack, "reserved marker 0xc1")),
            _ => return Err(self.error(kind, what)),
        }
        let len = decode::read_str_len(&mut self.bytes).map_err(|e| self.value_error(e, kind))?;
        self.take(len as usize)
    }

    /// A UTF-8 string; anything else (or invalid UTF-8) is a `shape` error.
    pub(super) fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let bytes = self.str_bytes(Kind::Shape, what)?;
        std::str::from_utf8(bytes).map_err(|_| Kind::Shape.at(at, "string is not UTF-8"))
    }

    /// A UTF-8 string or nil.
    pub(super) fn opt_str(&mut self, what: &'static str) -> Result<Option<&'a str>, DecodeError> {
        if self.eat_nil() {
            return Ok(None);
        }
        self.str(what).map(Some)
    }

    /// A map key: `Some(bytes)` for a string key, `None` (the key skipped) for any other.
    pub(super) fn map_key(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.peek()? {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                self.str_bytes(Kind::Shape, "map key").map(Some)
            }
            _ => self.skip_value().map(|()| None),
        }
    }

    /// What `read_int` gave: a value, out of range, not an int; errors only on malformed msgpack.
    #[inline]
    fn int_read<T, E: decode::RmpReadErr>(
        &self,
        result: Result<T, NumValueReadError<E>>,
    ) -> Result<IntRead<T>, DecodeError> {
        match result {
            Ok(value) => Ok(IntRead::Value(value)),
            Err(NumValueReadError::OutOfRange) => Ok(IntRead::OutOfRange),
            Err(NumValueReadError::TypeMismatch(Marker::Reserved)) => {
                Err(self.error(Kind::Msgpack, "reserved marker 0xc1"))
            }
            Err(NumValueReadError::TypeMismatch(_)) => Ok(IntRead::NotInt),
            Err(NumValueReadError::InvalidMarkerRead(_) | NumValueReadError::InvalidDataRead(_)) => {
                Err(self.truncated())
            }
        }
    }

    /// An integer as `u32` (any msgpack int width; range-checked by `rmp`).
    pub(super) fn int_u32(&mut self) -> Result<IntRead<u32>, DecodeError> {
        let result = decode::read_int::<u32, _>(&mut self.bytes);
        self.int_read(result)
    }

    /// An integer as `u64`.
    pub(super) fn int_u64(&mut self) -> Result<IntRead<u64>, DecodeError> {
        let result = decode::read_int::<u64, _>(&mut self.bytes);
        self.int_read(result)
    }

    /// An integer as `i64`.
    pub(super) fn int_i64(&mut self) -> Result<IntRead<i64>, DecodeError> {
        let result = decode::read_int::<i64, _>(&mut self.bytes);
        self.int_read(result)
    }

    /// An integer as `i128` (every msgpack int fits).
    pub(super) fn int_i128(&mut self) -> Result<IntRead<i128>, DecodeError> {
        let result = decode::read_int::<i128, _>(&mut self.bytes);
        self.int_read(result)
    }

    /// `read` (one of the `int_*` readers) or nil; anything else is a `kind` error.
    pub(super) fn opt_int<T>(
        &mut self,
        read: fn(&mut Self) -> Result<IntRead<T>, DecodeError>,
        kind: Kind,
        what: &'static str,
    ) -> Result<Option<T>, DecodeError> {
        if self.eat_nil() {
            return Ok(None);
        }
        let at = self.offset();
        match read(self)? {
            IntRead::Value(value) => Ok(Some(value)),
            IntRead::OutOfRange | IntRead::NotInt => Err(kind.at(at, what)),
        }
    }

    /// A number (float64, float32 or any integer) as `f64`.
    pub(super) fn number(&mut self, what: &'static str) -> Result<f64, DecodeError> {
        let at = self.offset();
        match self.peek()? {
            Marker::F64 => decode::read_f64(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape)),
            Marker::F32 => {
                decode::read_f32(&mut self.bytes).map(f64::from).map_err(|e| self.value_error(e, Kind::Shape))
            }
            _ => match self.int_i128()? {
                IntRead::Value(value) => Ok(value as f64),
                IntRead::OutOfRange | IntRead::NotInt => Err(Kind::Shape.at(at, what)),
            },
        }
    }

    /// A block hash: an unsigned int as itself, a negative int by two's complement
    /// (SGLang's `i64`), a bin by its last 8 bytes big-endian (fewer: all of them,
    /// zero-extended). An empty bin or any other value is a `hash` error.
    #[inline]
    pub(super) fn hash(&mut self) -> Result<u64, DecodeError> {
        // Fast path for the common case, a full-width uint64 (vLLM) or int64 (SGLang).
        if let Some((&[marker, data @ ..], rest)) = self.bytes.remaining_slice().split_first_chunk::<9>() {
            if let Marker::U64 | Marker::I64 = Marker::from_u8(marker) {
                self.bytes = Bytes::new(rest);
                // The same bits either way: an int64 is taken by two's complement.
                return Ok(u64::from_be_bytes(data));
            }
        }
        let at = self.offset();
        match self.peek()? {
            Marker::FixPos(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => match self.int_u64()? {
                IntRead::Value(value) => Ok(value),
                IntRead::OutOfRange | IntRead::NotInt => Err(Kind::Hash.at(at, "unsigned hash unreadable")),
            },
            Marker::FixNeg(_) | Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => match self.int_i64()? {
                // Two's complement: SGLang sends `u64` hashes as `i64`.
                IntRead::Value(value) => Ok(value as u64),
                IntRead::OutOfRange | IntRead::NotInt => Err(Kind::Hash.at(at, "signed hash unreadable")),
            },
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = decode::read_bin_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Hash))?;
                let bytes = self.take(len as usize)?;
                if bytes.is_empty() {
                    return Err(Kind::Hash.at(at, "empty bin hash"));
                }
                let last8 = &bytes[bytes.len().saturating_sub(8)..];
                Ok(last8.iter().fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte)))
            }
            Marker::Reserved => Err(Kind::Msgpack.at(at, "reserved marker 0xc1")),
            _ => Err(Kind::Hash.at(at, "hash is neither an int nor a bin")),
        }
    }

    /// A hash or nil (a root block's parent).
    pub(super) fn opt_hash(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.eat_nil() {
            return Ok(None);
        }
        self.hash().map(Some)
    }

    /// An array of block hashes.
    pub(super) fn hashes(&mut self) -> Result<Vec<u64>, DecodeError> {
        let count = self.array_len(Kind::Shape, "block_hashes is not an array")?;
        let mut hashes = Vec::with_capacity(count);
        for _ in 0..count {
            hashes.push(self.hash()?);
        }
        Ok(hashes)
    }

    /// An array of token ids, each an integer in `0..=u32::MAX`. The hot loop of the
    /// decoder: where 8 bytes are left, the unsigned markers engines use for token ids
    /// (positive fixint, uint8, uint16, uint32) are decoded from one big-endian load
    /// ([`unsigned_u32`]); anything else (a uint64 or signed int in range, the last bytes
    /// of the payload, an error) goes through `rmp::decode::read_int`.
    pub(super) fn tokens(&mut self) -> Result<Vec<u32>, DecodeError> {
        let count = self.array_len(Kind::Shape, "token_ids is not an array")?;
        let mut tokens = Vec::with_capacity(count);
        let input = self.bytes.remaining_slice();
        let mut pos = 0;
        for _ in 0..count {
            if let Some(&word) = input.get(pos..).and_then(<[u8]>::first_chunk::<8>) {
                let word = u64::from_be_bytes(word);
                if let Some((token, len)) = unsigned_u32(word) {
                    tokens.push(token);
                    pos += len;
                    continue;
                }
            }
            let mut rest = Bytes::new(input.get(pos..).unwrap_or_default());
            match decode::read_int::<u32, _>(&mut rest) {
                Ok(token) => tokens.push(token),
                Err(error) => {
                    self.bytes = rest;
                    return Err(self.token_error(error));
                }
            }
            pos = input.len() - rest.remaining_slice().len();
        }
        self.bytes = Bytes::new(input.get(pos..).unwrap_or_default());
        Ok(tokens)
    }

    #[cold]
    fn token_error<E: decode::RmpReadErr>(&self, error: NumValueReadError<E>) -> DecodeError {
        match error {
            NumValueReadError::OutOfRange => self.error(Kind::Token, "token id outside 0..=u32::MAX"),
            NumValueReadError::TypeMismatch(Marker::Reserved) => self.error(Kind::Msgpack, "reserved marker 0xc1"),
            NumValueReadError::TypeMismatch(_) => self.error(Kind::Token, "token id is not an int"),
            NumValueReadError::InvalidMarkerRead(_) | NumValueReadError::InvalidDataRead(_) => self.truncated(),
        }
    }

    /// Steps over one msgpack value of any type and size, without recursion: `pending`
    /// counts the values still to step over; a container adds its elements to it.
    pub(super) fn skip_value(&mut self) -> Result<(), DecodeError> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let fixed_len = match self.peek()? {
                Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => 1,
                Marker::U8 | Marker::I8 => 2,
                Marker::U16 | Marker::I16 => 3,
                Marker::U32 | Marker::I32 | Marker::F32 => 5,
                Marker::U64 | Marker::I64 | Marker::F64 => 9,
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                    let len = decode::read_str_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                    self.take(len as usize)?;
                    0
                }
                Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                    let len = decode::read_bin_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                    self.take(len as usize)?;
                    0
                }
                Marker::FixExt1
                | Marker::FixExt2
                | Marker::FixExt4
                | Marker::FixExt8
                | Marker::FixExt16
                | Marker::Ext8
                | Marker::Ext16
                | Marker::Ext32 => {
                    let meta = decode::read_ext_meta(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                    self.take(meta.size as usize)?;
                    0
                }
                Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                    let len = decode::read_array_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                    pending = pending.saturating_add(len as usize);
                    0
                }
                Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                    let len = decode::read_map_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                    pending = pending.saturating_add((len as usize).saturating_mul(2));
                    0
                }
                Marker::Reserved => return Err(self.error(Kind::Msgpack, "reserved marker 0xc1")),
            };
            self.take(fixed_len)?;
            // Every value still pending takes one byte at least.
            if pending > self.remaining() {
                return Err(self.truncated());
            }
        }
        Ok(())
    }

    /// Steps over `count` values.
    pub(super) fn skip_values(&mut self, count: usize) -> Result<(), DecodeError> {
        for _ in 0..count {
            self.skip_value()?;
        }
        Ok(())
    }

    /// One extra-key value at nesting level `depth` of the `extra_keys` field: nil, bool,
    /// any int, float, UTF-8 string, bin, array, or map (as the array of its `[k, v]`
    /// pairs). Ext values, invalid UTF-8 and containers deeper than
    /// [`MAX_EXTRA_KEYS_DEPTH`] are `shape` errors.
    pub(super) fn key_value(&mut self, depth: usize) -> Result<KeyValue, DecodeError> {
        let at = self.offset();
        let value = match self.peek()? {
            Marker::Null => {
                self.take(1)?;
                KeyValue::Nil
            }
            Marker::True | Marker::False => {
                let value = decode::read_bool(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                KeyValue::Bool(value)
            }
            Marker::F32 | Marker::F64 => KeyValue::Float(self.number("extra key")?),
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                KeyValue::Str(self.str("extra key")?.to_owned())
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = decode::read_bin_len(&mut self.bytes).map_err(|e| self.value_error(e, Kind::Shape))?;
                KeyValue::Bin(self.take(len as usize)?.to_vec())
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                if depth >= MAX_EXTRA_KEYS_DEPTH {
                    return Err(Kind::Shape.at(at, "extra keys nested too deep"));
                }
                let count = self.array_len(Kind::Shape, "extra key array")?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.key_value(depth + 1)?);
                }
                KeyValue::Array(items)
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                // The map is the array of its pairs, each pair an array one level down.
                if depth + 1 >= MAX_EXTRA_KEYS_DEPTH {
                    return Err(Kind::Shape.at(at, "extra keys nested too deep"));
                }
                let pairs = self.map_len()?;
                let mut items = Vec::with_capacity(pairs);
                for _ in 0..pairs {
                    let key = self.key_value(depth + 2)?;
                    let value = self.key_value(depth + 2)?;
                    items.push(KeyValue::Array(vec![key, value]));
                }
                KeyValue::Array(items)
            }
            Marker::Reserved => return Err(Kind::Msgpack.at(at, "reserved marker 0xc1")),
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64 => match self.int_i128()? {
                IntRead::Value(value) => KeyValue::Int(value),
                IntRead::OutOfRange | IntRead::NotInt => return Err(Kind::Shape.at(at, "extra key int")),
            },
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(Kind::Shape.at(at, "extra key is an ext value")),
        };
        Ok(value)
    }
}

/// An unsigned int of up to 32 bits from the big-endian `u64` loaded at its marker, and
/// its encoded length: a positive fixint is the marker itself (1 byte); uint8 (`0xcc`),
/// uint16 (`0xcd`), uint32 (`0xce`) are the 1 / 2 / 4 bytes after it (2 / 3 / 5 bytes in
/// all). `None` for every other marker.
///
/// Computed without a branch on the width (token ids mix the widths at random, which
/// defeats branch prediction) and without a table load, so the step to the next token,
/// which every token waits for, stays a few ALU operations long.
#[inline(always)]
fn unsigned_u32(word: u64) -> Option<(u32, usize)> {
    const FIRST_NON_FIXINT: u32 = Marker::FixMap(0).to_u8() as u32; // 0x80
    const UINT8: u32 = Marker::U8.to_u8() as u32; // 0xcc, then uint16 0xcd, uint32 0xce
    const _: () = assert!(Marker::U32.to_u8() as u32 == UINT8 + 2);
    let marker = (word >> 56) as u32;
    let is_fixint = marker < FIRST_NON_FIXINT;
    let uint_index = marker.wrapping_sub(UINT8); // 0, 1, 2 for uint8, uint16, uint32
    if !is_fixint && uint_index > 2 {
        return None;
    }
    let len = if is_fixint { 1 } else { 2 + uint_index + (uint_index >> 1) };
    let value_bits = if is_fixint { 8 } else { 8 << uint_index };
    let value = (word >> (64 - 8 * len)) & ((1u64 << value_bits) - 1);
    Some((value as u32, len as usize))
}
