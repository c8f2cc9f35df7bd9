//! Feeds arbitrary bytes to the frame decoder, whole and in small chunks, under the limits
//! of an authenticated session and under the pre-authentication limits.
//!
//! Before authentication a peer may only send handshake frames of at most
//! `MAX_HANDSHAKE_FRAME` bytes, refused from the header: the decoder must never ask to wait
//! for more bytes once more than one handshake frame's worth is buffered, and must never
//! return any other message type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mule_engine::frame::{
    FRAME_HEADER, FrameDecoder, MAX_HANDSHAKE_FRAME, Message, MessageType, Phase, decode_frame,
    decode_frame_in,
};

fn handshake_type(m: &Message) -> bool {
    matches!(
        m.kind(),
        MessageType::Hello | MessageType::HelloAck | MessageType::KeepAlive | MessageType::Bye
    )
}

fuzz_target!(|data: &[u8]| {
    // Check-then-parse over the whole input, authenticated limits.
    let mut rest = data;
    while let Ok(Some((_, used))) = decode_frame(rest) {
        rest = &rest[used..];
    }
    // The same under the pre-authentication limits: only handshake types, each small.
    let mut rest = data;
    while let Ok(Some((m, used))) = decode_frame_in(rest, Phase::Handshake) {
        assert!(handshake_type(&m), "{:?} admitted before authentication", m.kind());
        assert!(used <= FRAME_HEADER + MAX_HANDSHAKE_FRAME, "{used}-byte handshake frame");
        rest = &rest[used..];
    }
    // Incrementally, 7 bytes at a time: handshake limits until the first HelloAck, then
    // the authenticated limits (the order a session switches in).
    let mut d = FrameDecoder::new();
    let mut phase = Phase::Handshake;
    'outer: for chunk in data.chunks(7) {
        d.push(chunk);
        loop {
            match d.next_message_in(phase) {
                Ok(Some(m)) => {
                    if phase == Phase::Handshake {
                        assert!(handshake_type(&m), "{:?} before authentication", m.kind());
                        if m.kind() == MessageType::HelloAck {
                            phase = Phase::Authenticated;
                        }
                    }
                }
                Ok(None) => {
                    assert!(
                        phase != Phase::Handshake || d.buffered() <= FRAME_HEADER + MAX_HANDSHAKE_FRAME,
                        "waiting for more with {} bytes buffered before authentication",
                        d.buffered()
                    );
                    break;
                }
                Err(_) => break 'outer,
            }
        }
    }
});
