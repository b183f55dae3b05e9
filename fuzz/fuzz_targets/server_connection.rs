//! A server connection fed arbitrary bytes, through the same decode and
//! engine path as the broker's connection reader: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corebus_shards::fuzzing::feed_new_connection(data);
});
