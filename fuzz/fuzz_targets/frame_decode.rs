//! Feeds arbitrary bytes to the frame decoder, whole and in small chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mule_engine::frame::{FrameDecoder, decode_frame};

fuzz_target!(|data: &[u8]| {
    // Check-then-parse over the whole input.
    let mut rest = data;
    while let Ok(Some((_, used))) = decode_frame(rest) {
        rest = &rest[used..];
    }
    // The same bytes through the incremental decoder, 7 bytes at a time.
    let mut d = FrameDecoder::new();
    'outer: for chunk in data.chunks(7) {
        d.push(chunk);
        loop {
            match d.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
});
