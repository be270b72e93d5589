//! Bounded bincode: the one encoding of everything a replica writes to disk or sends to a peer,
//! and the one way to decode it.
//!
//! Decoded bytes come from outside (a peer, a file that may be damaged), so decoding must not
//! trust a length it reads: bincode allocates a string or byte buffer at its declared length
//! before reading it, and without a limit fifteen bytes can announce 2^62 of them. Every decode
//! here runs with a limit, which bincode charges before each such allocation. bincode also
//! charges every integer its width in memory (16 bytes for a u128) although its encoding may
//! take one byte, so a legal value of `n` bytes is charged at most `16 n`: the limit is the
//! smallest tier (powers of eight from 4 KiB) at or above that. It never refuses a legal value,
//! and no string or byte buffer is allocated beyond it: 4 KiB for any input up to 256 bytes,
//! under 128 times the input beyond. Sequences are not charged; serde preallocates at most
//! 1 MiB for one, whatever length it announces. A value must fill its input exactly: trailing
//! bytes are an error, not ignored.

use bincode::error::{DecodeError, EncodeError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What bincode may charge a legal value per byte of its encoding (a u128 in one byte).
const CHARGE_PER_BYTE_MAX: usize = 16;

/// Largest input any decoder accepts (its charge fits the top tier).
pub const DECODE_MAX_BYTES: usize = TOP_TIER / CHARGE_PER_BYTE_MAX;

const TOP_TIER: usize = 1 << 42;

/// `value` encoded.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

/// Appends `value` encoded to `out`; returns how many bytes it took.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
}

/// Decodes with the smallest limit tier that fits `bytes` (`$limited` is `limited` or
/// `limited_borrowed`), and refuses trailing bytes.
macro_rules! tiered {
    ($limited:ident, $t:ty, $bytes:expr) => {{
        let bytes = $bytes;
        let (value, read) = match bytes.len().saturating_mul(CHARGE_PER_BYTE_MAX) {
            charge if charge <= 1 << 12 => $limited::<$t, { 1 << 12 }>(bytes),
            charge if charge <= 1 << 15 => $limited::<$t, { 1 << 15 }>(bytes),
            charge if charge <= 1 << 18 => $limited::<$t, { 1 << 18 }>(bytes),
            charge if charge <= 1 << 21 => $limited::<$t, { 1 << 21 }>(bytes),
            charge if charge <= 1 << 24 => $limited::<$t, { 1 << 24 }>(bytes),
            charge if charge <= 1 << 27 => $limited::<$t, { 1 << 27 }>(bytes),
            charge if charge <= 1 << 30 => $limited::<$t, { 1 << 30 }>(bytes),
            charge if charge <= 1 << 33 => $limited::<$t, { 1 << 33 }>(bytes),
            charge if charge <= 1 << 36 => $limited::<$t, { 1 << 36 }>(bytes),
            charge if charge <= 1 << 39 => $limited::<$t, { 1 << 39 }>(bytes),
            charge if charge <= TOP_TIER => $limited::<$t, TOP_TIER>(bytes),
            _ => Err(DecodeError::LimitExceeded),
        }?;
        if read != bytes.len() {
            return Err(DecodeError::OtherString(format!(
                "{} bytes after the value's {read}",
                bytes.len() - read
            )));
        }
        Ok(value)
    }};
}

/// The value `bytes` encode, all of them.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    tiered!(limited, T, bytes)
}

/// `decode` for a value that borrows from `bytes` (byte strings as `&[u8]`: no copy of each).
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    tiered!(limited_borrowed, T, bytes)
}

fn limited<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

fn limited_borrowed<'a, T: Deserialize<'a>, const LIMIT: usize>(
    bytes: &'a [u8],
) -> Result<(T, usize), DecodeError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::borrow_decode_from_slice(bytes, config)
}

/// A byte string (`Vec<u8>`) encoded exactly as serde encodes one by default (its length, then
/// its bytes), but written and read as one run instead of one call per byte. For fields that
/// hold bytes already encoded (a log entry, a snapshot): `#[serde(with = "codec::bytes")]`.
/// Decoding still charges the size limit for the buffer before allocating it.
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string announcing 2^62 bytes in a 15-byte input is a clean error, not an allocation.
    #[test]
    fn a_huge_declared_length_is_refused_before_allocating() {
        let mut bytes = vec![0xfd]; // varint: a u64 follows
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        bytes.extend_from_slice(b"abcdef");
        assert_eq!(bytes.len(), 15);
        assert!(matches!(decode::<String>(&bytes), Err(DecodeError::LimitExceeded)));
        assert!(decode::<Vec<String>>(&bytes).is_err());
    }

    /// Values round-trip at every tier boundary, and trailing bytes are refused.
    #[test]
    fn values_round_trip_and_must_fill_their_input() {
        // Small integers: one byte each on the wire, charged eight.
        let ints: Vec<u64> = (0..100_000).map(|i| i % 100).collect();
        assert_eq!(decode::<Vec<u64>>(&encode(&ints).expect("encodes")).expect("decodes"), ints);
        for len in [0, 4090, 1 << 12, (1 << 12) + 1, 1 << 15, (1 << 18) + 7] {
            let value = "x".repeat(len);
            let mut bytes = encode(&value).expect("encodes");
            assert_eq!(decode::<String>(&bytes).expect("decodes"), value);
            bytes.push(0);
            assert!(decode::<String>(&bytes).is_err(), "trailing byte at {len}");
        }
    }

    /// `bytes` encodes a byte string exactly as the default encoding of a `Vec<u8>` does, and
    /// each decodes what the other wrote, so switching a field to it keeps files readable.
    #[test]
    fn bytes_match_the_default_encoding_of_a_byte_vector() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Plain(u32, Vec<u8>);
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Run(u32, #[serde(with = "bytes")] Vec<u8>);
        for len in [0, 1, 250, 251, 65_536, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let plain = encode(&Plain(7, data.clone())).expect("encodes");
            let run = encode(&Run(7, data.clone())).expect("encodes");
            assert_eq!(plain, run, "at {len} bytes");
            assert_eq!(decode::<Run>(&plain).expect("decodes"), Run(7, data.clone()));
            assert_eq!(decode::<Plain>(&run).expect("decodes"), Plain(7, data));
        }
    }
}
