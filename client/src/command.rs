//! The commands a super-user sends (`WEBHOOK_REQUEST`, `CLUSTER_REQUEST`)
//! and their JSON results: sent, awaited within the request timeout,
//! forgotten when the caller stops waiting, and their result's root object.

use serde_json::{Map, Value};
use tokio::time::timeout;

use crate::connection::{CommandKind, Shared};
use crate::{Client, Error};

impl Client {
    /// Sends a `WEBHOOK_REQUEST` or `CLUSTER_REQUEST` and returns the reply's
    /// result text.
    pub(crate) async fn command_request(
        &self,
        kind: CommandKind,
        command: &Value,
    ) -> Result<String, Error> {
        let shared = self.shared();
        let (request_id, answer) = shared.enqueue_command(kind, command.to_string()).await?;
        // From here on, a timeout or a dropped call must not leave the entry
        // behind; once answered, forgetting finds nothing.
        let _forget = ForgetOnDrop { shared, request_id };
        match timeout(shared.request_timeout(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(shared.current_error()),
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// Removes a command's pending entry when its caller stops waiting.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    request_id: u32,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.forget_command(self.request_id);
    }
}

/// A result that does not read as the command calls for, as
/// [`Error::MalformedReply`] for `request`.
pub(crate) fn with_reason<T>(request: &'static str, parsed: Result<T, String>) -> Result<T, Error> {
    parsed.map_err(|reason| Error::MalformedReply { request, reason })
}

/// The result's root object.
pub(crate) fn parse_root(result: &str) -> Result<Map<String, Value>, String> {
    // serde_json's messages give a position, never the text itself.
    match serde_json::from_str(result) {
        Ok(Value::Object(root)) => Ok(root),
        Ok(_) => Err("the result is not a JSON object".into()),
        Err(err) => Err(format!("the result is not JSON: {err}")),
    }
}
