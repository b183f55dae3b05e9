//! What a protocol layer between a connection's socket and the engine (the
//! browser gateway's [`crate::web`], the MQTT front door's [`crate::mqtt`])
//! tells the reader and the writer, and the native frames of a batch it
//! translates.

use bytes::{Bytes, BytesMut};
use corebus_net::{check, decode, Check, Frame};

use crate::outbox::OutFrame;

/// What the reader does after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// Go on reading; frames (if any) are in the buffer.
    More,
    /// Stop reading: the peer closed, was refused, or broke the protocol.
    End,
}

/// What the writer does after a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wrapped {
    /// The connection ends after this write.
    pub end: bool,
    /// A heartbeat went to an event stream (which never answers one).
    pub pinged: bool,
}

/// The frames in a batch the native encoder produced (whole frames, split
/// across buffers anywhere).
pub(crate) fn frames_of(segments: &[Bytes]) -> Vec<Frame> {
    let mut wire = BytesMut::with_capacity(segments.iter().map(Bytes::len).sum());
    for segment in segments {
        wire.extend_from_slice(segment);
    }
    let mut frames = Vec::new();
    while let Ok(Check::Complete { len }) = check(&wire, u32::MAX) {
        // The broker's own encoding: anything it cannot read back is a bug,
        // not input, and is skipped rather than taking the connection down.
        if let Ok(frame) = decode(wire.split_to(len).freeze()) {
            frames.push(frame);
        }
    }
    frames
}

/// The frames a writer took from its outbox, as its client would decode
/// them, without encoding them first: an item queued as a frame is
/// converted, and a run encoded when it was queued is decoded where it is
/// (its frames are whole, so nothing is copied). What the MQTT edge reads.
pub(crate) fn frames_of_batch(batch: &mut Vec<OutFrame>) -> Vec<Frame> {
    // A run holds messages under 512 bytes, most of them small.
    let guess = batch
        .iter()
        .map(|item| match item {
            OutFrame::Encoded(run) => run.len() / 128 + 1,
            _ => 1,
        })
        .sum();
    let mut frames = Vec::with_capacity(guess);
    for item in batch.drain(..) {
        match item.into_frame() {
            Ok(frame) => frames.push(frame),
            Err(mut run) => {
                while let Ok(Check::Complete { len }) = check(&run, u32::MAX) {
                    if let Ok(frame) = decode(run.split_to(len)) {
                        frames.push(frame);
                    }
                }
            }
        }
    }
    frames
}
