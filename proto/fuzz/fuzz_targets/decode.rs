//! Fuzzes the frame decoder.
//!
//! Input layout: byte 0 picks how the rest (the "stream") is cut into chunks; the stream is
//! what a peer would send. For every input the target checks that
//!
//! 1. decoding never panics (whatever the bytes);
//! 2. the outcome (the frames decoded, then `None` or the first error) is the same whether the
//!    stream arrives in one piece or in chunks, as it does off a QUIC stream;
//! 3. every frame that decodes re-encodes, and the re-encoded bytes decode to the same frame
//!    and re-encode to the same bytes (the encoding is canonical).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{encode, DecodeError, Decoded, Decoder};

/// Small limit so that the fuzzer reaches the size check easily.
const MAX_FRAME: u32 = 4096;

/// What feeding a whole stream produced: the decoded items, then how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Decoded>,
    /// `None`: the stream ended (possibly inside a frame); `Some`: the first error.
    error: Option<DecodeError>,
    /// Bytes left undecoded when the stream ended without error.
    leftover: usize,
}

/// Feeds `stream` to a fresh decoder in chunks of the given sizes (cycled), decoding after
/// every chunk until the decoder asks for more.
fn feed(stream: &[u8], chunk_sizes: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(d)) => items.push(d),
                Ok(None) => break,
                Err(e) => return Outcome { items, error: Some(e), leftover: 0 },
            }
        }
        if rest.is_empty() {
            return Outcome { items, error: None, leftover: buf.len() };
        }
        let n = chunk_sizes[i % chunk_sizes.len()].clamp(1, rest.len());
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Chunk sizes for control byte `ctl`: 0 = one byte at a time, else a xorshift sequence of
/// sizes in 1..=(ctl as usize * 4).
fn chunk_sizes(ctl: u8) -> Vec<usize> {
    if ctl == 0 {
        return vec![1];
    }
    let max = usize::from(ctl) * 4;
    let mut x = u32::from(ctl) | 0x9e37_7900;
    (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as usize) % max + 1
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };

    let whole = feed(stream, &[usize::MAX]);
    let chunked = feed(stream, &chunk_sizes(ctl));
    assert_eq!(whole, chunked, "chunking changed the outcome");

    for item in &whole.items {
        let Decoded::Frame(frame) = item else { continue };
        let mut bytes = BytesMut::new();
        encode(frame, &mut bytes).expect("a decoded frame must re-encode");
        let encoded = bytes.clone().freeze();
        // Re-encoding may be longer than the input (omitted optional fields come back as nil),
        // so decode it without the small limit.
        let again = Decoder::new(u32::MAX).decode(&mut bytes).expect("re-encoded frame must decode");
        assert_eq!(again.as_ref(), Some(item), "re-encoded frame decodes differently");
        assert!(bytes.is_empty(), "re-encoded frame left bytes behind");
        let Some(Decoded::Frame(again)) = again else { unreachable!() };
        let mut twice = BytesMut::new();
        encode(&again, &mut twice).expect("second encode");
        assert_eq!(twice.freeze(), encoded, "encode(decode(encode(f))) differs from encode(f)");
    }
});
