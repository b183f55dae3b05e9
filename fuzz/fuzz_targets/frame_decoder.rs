//! The frame decoder on arbitrary bytes: `check` then `decode`, as a reader
//! does, must never panic, and whatever decodes must survive an encode/decode
//! round trip unchanged. (Bytes may differ: a resume epoch without a resume
//! sequence number is not kept, for one.)
#![no_main]

use bytes::BytesMut;
use corebus_net::{check, decode, Check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Check::Complete { len }) = check(&buf, 1 << 20) {
        let bytes = buf.split_to(len).freeze();
        if let Ok(frame) = decode(bytes) {
            let mut again = BytesMut::new();
            frame.encode(&mut again);
            let reparsed = decode(again.freeze()).expect("an encoded frame decodes");
            assert_eq!(reparsed, frame, "encode/decode round trip");
        }
    }
});
