//! Stand-ins for the NATS and Redis drivers in a harness built without the
//! `peers` feature (the default, which keeps the test suite's build free of
//! both client libraries): connecting says how to build it with them, and
//! no value of these types can exist.

use bytes::Bytes;

use super::{Endpoint, PublisherDone, Received};
use crate::BenchError;

fn not_built(target: &'static str) -> BenchError {
    BenchError::Broker {
        target,
        action: "connect",
        reason: "this corebus-bench was built without the NATS and Redis clients; build it \
                 with `cargo build --release -p corebus-bench --features peers` (the \
                 bench/*.sh scripts do)"
            .into(),
    }
}

/// An uninhabited driver for `$target`, connected to with `$to` (the
/// endpoint, or its URL, as the real driver takes).
macro_rules! absent {
    ($module:ident, $publisher:ident, $subscriber:ident, $target:literal, $to:ty) => {
        pub(super) mod $module {
            use super::*;

            /// A driver that cannot be connected.
            pub enum Absent {}

            pub type $publisher = Absent;
            pub type $subscriber = Absent;

            impl Absent {
                pub(in crate::driver) async fn connect<T: ?Sized>(
                    _to: $to,
                    _topics: &T,
                ) -> Result<Absent, BenchError> {
                    Err(not_built($target))
                }

                pub(in crate::driver) async fn publish(
                    &mut self,
                    _topic: usize,
                    _payload: Bytes,
                ) -> Result<(), BenchError> {
                    match *self {}
                }

                pub(in crate::driver) async fn finish(self) -> Result<PublisherDone, BenchError> {
                    match self {}
                }

                pub(in crate::driver) async fn next(&mut self) -> Option<Received> {
                    match *self {}
                }
            }
        }
    };
}

absent!(nats, NatsPublisher, NatsSubscriber, "nats", &Endpoint);
absent!(redis, RedisPublisher, RedisSubscriber, "redis", &str);
