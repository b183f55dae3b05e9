//! Entry points for fuzzing (`fuzz/` at the repository root) and the bounded
//! property tests: feed bytes to a server connection exactly as its reader
//! does, without sockets.

use bytes::BytesMut;
use corebus_net::{check, decode_from_client, Check, KeyCache};

use crate::engine::{EngineConfig, Flow, Shard};

/// Feeds `input` to a fresh connection in `split`-sized reads, exactly as
/// `conn::read_loop` does, and returns how the connection ended.
pub fn feed(shard: &mut Shard, input: &[u8], split: usize) -> Flow {
    let conn = shard.open_conn();
    let mut buf = BytesMut::new();
    // As the reader does: the same names in a row take the cache's path.
    let mut keys = KeyCache::default();
    for piece in input.chunks(split.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match check(&buf, 4096) {
                Ok(Check::Complete { len }) => {
                    let flow = match decode_from_client(buf.split_to(len).freeze(), &mut keys) {
                        Ok(frame) => shard.handle_frame(conn, frame),
                        Err(err) => shard.handle_decode_error(conn, &err),
                    };
                    if flow == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(Check::Incomplete { .. }) => break,
                Err(err) => {
                    shard.handle_decode_error(conn, &err);
                    return Flow::Close;
                }
            }
        }
    }
    Flow::Continue
}

/// Feeds `input` to one connection of a fresh two-shard engine; never panics
/// (that is what the fuzz target checks). The first byte picks the read size.
pub fn feed_new_connection(input: &[u8]) -> Flow {
    let split = input.first().map_or(1, |byte| usize::from(*byte % 64) + 1);
    let mut shard = Shard::new(0, 2, EngineConfig::default(), 1);
    feed(&mut shard, input.get(1..).unwrap_or_default(), split)
}
