//! gRPC for the tests: tonic's client and server with a codec of raw bytes
//! (a message is its bytes: no protobuf and no code generation, the rest is
//! gRPC as tonic speaks it: HTTP/2, length-prefixed messages, the status in
//! trailers, or in the headers of a trailers-only answer).
//!
//! The backend's one method, [`SAY`], answers a message `m` with
//! `<backend id>:m`. Request metadata changes that, for tests:
//! `x-status: <code>` fails the call with that gRPC status, and
//! `x-fail-once: <key>` fails the first call with each key with
//! UNAVAILABLE (then answers).
use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// The method's path.
pub const SAY: &str = "/rt.Echo/Say";

/// Messages as raw bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
