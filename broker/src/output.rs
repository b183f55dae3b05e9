//! Output formats of `corebus sub`: raw lines and JSON objects.
//!
//! In JSON, every 64-bit integer (a sequence number, an epoch, a Unix time
//! in milliseconds) is a decimal string: JavaScript numbers, and jq's, are
//! doubles, which hold integers exactly only up to 2^53, and a topic's epoch
//! is a random 64-bit value. A field may be a JSON number only when its
//! value is bounded well below 2^53 by construction; none of `sub`'s is.
//! docs/operations.md lists the fields.

/// Appends `text` to `out` as a JSON string literal (quotes included).
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if (ch as u32) < 0x20 || ch == '\u{2028}' || ch == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", ch as u32));
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
}

/// Appends `value` to `out` as a JSON string of its decimal digits, so that
/// a reader whose numbers are doubles gets it exactly (see the module docs).
pub fn push_json_u64(out: &mut String, value: u64) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "\"{value}\"");
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

/// A message's headers as a JSON object (`None` when it has none), as
/// `sub --json` prints them and webhooks POST them: `user` (pairs, in the
/// publisher's order), `content_type`, `response_topic`,
/// `correlation_data_base64`, `utf8_payload` and `expires_at_ms` (a
/// decimal string), each only when set. The origin a connection's
/// `no_local` filters know its publishes by is the broker's, not shown.
pub fn headers_json(headers: &corebus_net::Headers) -> Option<serde_json::Value> {
    let mut object = serde_json::Map::new();
    if !headers.user.is_empty() {
        let pairs = headers
            .user
            .iter()
            .map(|(name, value)| serde_json::json!([name, value]))
            .collect();
        object.insert("user".into(), serde_json::Value::Array(pairs));
    }
    let mut text = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            object.insert(name.into(), value.as_str().into());
        }
    };
    text("content_type", &headers.content_type);
    text("response_topic", &headers.response_topic);
    if let Some(data) = &headers.correlation_data {
        object.insert("correlation_data_base64".into(), base64(data).into());
    }
    if headers.utf8_payload {
        object.insert("utf8_payload".into(), true.into());
    }
    if let Some(at) = headers.expires_at_ms {
        object.insert("expires_at_ms".into(), at.to_string().into());
    }
    (!object.is_empty()).then_some(serde_json::Value::Object(object))
}

/// One `sub --json` line (without the newline), with the message's
/// headers when it has some ([`headers_json`]).
pub fn json_message(
    namespace: &str,
    topic: &str,
    seq: u64,
    payload: &[u8],
    headers: Option<&corebus_net::Headers>,
) -> String {
    let mut out = String::with_capacity(64 + payload.len());
    out.push_str("{\"ns\":");
    push_json_string(&mut out, namespace);
    out.push_str(",\"topic\":");
    push_json_string(&mut out, topic);
    out.push_str(",\"seq\":");
    push_json_u64(&mut out, seq);
    out.push(',');
    match std::str::from_utf8(payload) {
        Ok(text) => {
            out.push_str("\"payload\":");
            push_json_string(&mut out, text);
        }
        Err(_) => {
            out.push_str("\"payload_base64\":\"");
            out.push_str(&base64(payload));
            out.push('"');
        }
    }
    if let Some(headers) = headers.and_then(headers_json) {
        out.push_str(",\"headers\":");
        out.push_str(&headers.to_string());
    }
    out.push('}');
    out
}

/// One `sub --json` line reporting lost messages (without the newline).
pub fn json_discontinuity(
    namespace: &str,
    topic: &str,
    epoch: u64,
    last_seq: u64,
    next_seq: u64,
) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"discontinuity\":true,\"ns\":");
    push_json_string(&mut out, namespace);
    out.push_str(",\"topic\":");
    push_json_string(&mut out, topic);
    out.push_str(",\"epoch\":");
    push_json_u64(&mut out, epoch);
    out.push_str(",\"last_seq\":");
    push_json_u64(&mut out, last_seq);
    out.push_str(",\"next_seq\":");
    push_json_u64(&mut out, next_seq);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn discontinuity_lines_carry_the_sequence_fields() {
        assert_eq!(
            json_discontinuity("ns", "t", 9, 3, 8),
            r#"{"discontinuity":true,"ns":"ns","topic":"t","epoch":"9","last_seq":"3","next_seq":"8"}"#
        );
    }

    #[test]
    fn values_above_2_pow_53_survive_a_json_reader_exactly() {
        // The first integer a double cannot hold: as a JSON number, a
        // JavaScript or jq reader would see 2^53.
        let seq = (1u64 << 53) + 1;
        assert_ne!(seq as f64 as u64, seq);
        let epoch = u64::MAX;
        let read = |line: &str, field: &str| -> u64 {
            let object: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
            object[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} is a string in {line}"))
                .parse()
                .expect("decimal digits")
        };
        let message = json_message("ns", "t", seq, b"x", None);
        assert_eq!(read(&message, "seq"), seq);
        let gap = json_discontinuity("ns", "t", epoch, seq, seq + 1);
        assert_eq!(read(&gap, "epoch"), epoch);
        assert_eq!(read(&gap, "last_seq"), seq);
        assert_eq!(read(&gap, "next_seq"), seq + 1);
    }

    #[test]
    fn json_lines_escape_and_choose_the_payload_field() {
        assert_eq!(
            json_message("ns", "t\"1", 7, b"a\nb", None),
            r#"{"ns":"ns","topic":"t\"1","seq":"7","payload":"a\nb"}"#
        );
        assert_eq!(
            json_message("ns", "t", 1, &[0xff, 0x00], None),
            r#"{"ns":"ns","topic":"t","seq":"1","payload_base64":"/wA="}"#
        );
        assert_eq!(
            json_message("n", "t", 2, b"\x01", None),
            r#"{"ns":"n","topic":"t","seq":"2","payload":"\u0001"}"#
        );
    }
}
