//! Accepts etcdctl 3.4's `:authority` of `http://host:port` on HTTP/2 connections.
//!
//! For some commands (`endpoint status`, `defrag`) etcd 3.4's client dials the endpoint as
//! written, scheme included, and sends it as the `:authority` pseudo-header. etcd accepts that;
//! the `h2` crate under tonic rejects it as malformed and resets the stream. So before `h2`
//! sees a header block, [`rewrite_authority`] walks its HPACK representations without decoding
//! them, copying every byte except a literal `:authority` value with a scheme, which it
//! re-emits without it. Clients send that literal once and then refer to it in the dynamic
//! table, where `h2` now holds the fixed value. The fixed entry is shorter than the client
//! thinks, so `h2`'s table can only evict later than the client's, never earlier: every index
//! the client uses still names the same entry.

use loona_hpack::huffman::HuffmanDecoder;

/// `http://host:port` → `host:port`; anything else unchanged.
fn strip_scheme(value: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if let Some(rest) = value.strip_prefix(scheme) {
            return rest.strip_suffix(b"/").unwrap_or(rest);
        }
    }
    value
}

/// The static table index of `:authority` (RFC 7541, appendix A).
const AUTHORITY_INDEX: u64 = 1;

/// Reads an HPACK integer with a `prefix`-bit prefix at `*at`, moving past it.
fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Option<u64> {
    let max = (1u64 << prefix) - 1;
    let first = u64::from(*block.get(*at)?) & max;
    *at += 1;
    if first < max {
        return Some(first);
    }
    let mut value = max;
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// Appends an HPACK integer with a `prefix`-bit prefix whose first byte carries `flags`.
fn write_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: u64) {
    let max = (1u64 << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Reads an HPACK string at `*at`: whether it is Huffman-coded, and its raw bytes.
fn read_string<'a>(block: &'a [u8], at: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *block.get(*at)? & 0x80 != 0;
    let len = usize::try_from(read_int(block, at, 7)?).ok()?;
    let bytes = block.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some((huffman, bytes))
}

fn string_value(huffman: bool, raw: &[u8]) -> Option<Vec<u8>> {
    if huffman {
        HuffmanDecoder::new().decode(raw).ok()
    } else {
        Some(raw.to_vec())
    }
}

/// The header block with every literal `:authority` value stripped of a scheme; the same
/// bytes otherwise. `None` when the block is not valid HPACK.
pub(super) fn rewrite_authority(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let start = at;
        let first = block[at];
        let (flags, prefix) = match first {
            b if b & 0x80 != 0 => {
                read_int(block, &mut at, 7)?;
                out.extend_from_slice(&block[start..at]);
                continue;
            }
            b if b & 0xe0 == 0x20 => {
                read_int(block, &mut at, 5)?;
                out.extend_from_slice(&block[start..at]);
                continue;
            }
            b if b & 0xc0 == 0x40 => (0x40, 6),
            b => (b & 0xf0, 4),
        };
        let name_index = read_int(block, &mut at, prefix)?;
        let is_authority = if name_index == 0 {
            let (huffman, raw) = read_string(block, &mut at)?;
            // Only a name that could be `:authority` is worth decoding.
            (huffman || raw.first() == Some(&b':'))
                && string_value(huffman, raw)?.as_slice() == b":authority"
        } else {
            name_index == AUTHORITY_INDEX
        };
        let (huffman, raw) = read_string(block, &mut at)?;
        if is_authority {
            let value = string_value(huffman, raw)?;
            let stripped = strip_scheme(&value);
            if stripped.len() != value.len() {
                write_int(&mut out, flags, prefix, AUTHORITY_INDEX);
                write_int(&mut out, 0, 7, stripped.len() as u64);
                out.extend_from_slice(stripped);
                continue;
            }
        }
        out.extend_from_slice(&block[start..at]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use loona_hpack::Decoder;

    use super::*;

    #[test]
    fn every_literal_form_is_fixed() {
        // Literal without indexing (0000), never indexed (0001), and a literal name.
        let mut block = Vec::new();
        write_int(&mut block, 0x00, 4, AUTHORITY_INDEX);
        write_int(&mut block, 0, 7, 11);
        block.extend_from_slice(b"http://a:1/");
        write_int(&mut block, 0x10, 4, AUTHORITY_INDEX);
        write_int(&mut block, 0, 7, 11);
        block.extend_from_slice(b"https://b:2");
        write_int(&mut block, 0x40, 6, 0);
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b":authority");
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b"http://c:3");
        write_int(&mut block, 0x40, 6, 0);
        write_int(&mut block, 0, 7, 4);
        block.extend_from_slice(b"host");
        write_int(&mut block, 0, 7, 10);
        block.extend_from_slice(b"http://d:4");
        let fixed = rewrite_authority(&block).unwrap();
        let headers = Decoder::new().decode(&fixed).unwrap();
        let values: Vec<&[u8]> = headers.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, [&b"a:1"[..], b"b:2", b"c:3", b"http://d:4"]);
        assert_eq!(
            rewrite_authority(&[0x40, 0x05, b'a']),
            None,
            "truncated HPACK is refused"
        );
        assert_eq!(
            rewrite_authority(&[0x82, 0x86]).unwrap(),
            [0x82, 0x86],
            "indexed fields pass"
        );
    }

    #[test]
    fn schemes_are_stripped() {
        assert_eq!(strip_scheme(b"http://a:1"), b"a:1");
        assert_eq!(strip_scheme(b"https://a:1/"), b"a:1");
        assert_eq!(strip_scheme(b"a:1"), b"a:1");
    }
}
