//! MQTT topic names as native ones. A native level that is exactly `*` or
//! `>` is a wildcard, so an MQTT level that is exactly `*` or `>` is
//! escaped with a `\` in front, and so is an MQTT level that starts with a
//! `\` (so the escape itself is never ambiguous): `a/*/b` over MQTT is the
//! native topic `a/\*/b`, and `a/\x` is `a/\\x`. A native client names the
//! MQTT topic `a/*/b` as `a/\*/b`. Every other name is the same on both
//! sides, and the mapping is one to one.

use std::borrow::Cow;

/// Whether a level needs the escape.
fn needs_escape(level: &str) -> bool {
    level == "*" || level == ">" || level.starts_with('\\')
}

/// The native form of an MQTT topic name (or of the literal levels of a
/// filter, whose wildcards the caller maps itself).
pub(super) fn escape(name: &str) -> Cow<'_, str> {
    if !name.contains(['*', '>', '\\']) || !name.split('/').any(needs_escape) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.split('/')
            .map(escape_level)
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// One level's native form.
pub(super) fn escape_level(level: &str) -> Cow<'_, str> {
    if needs_escape(level) {
        Cow::Owned(format!("\\{level}"))
    } else {
        Cow::Borrowed(level)
    }
}

/// The MQTT name of a native topic: [`escape`] undone.
pub(super) fn unescape(native: &str) -> Cow<'_, str> {
    if !native.contains('\\') {
        return Cow::Borrowed(native);
    }
    Cow::Owned(
        native
            .split('/')
            .map(|level| level.strip_prefix('\\').unwrap_or(level))
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// The MQTT name of a subscription's native topic, in multi-tenant mode
/// after its namespace's `prefix`; `None` for a pattern (its messages name
/// their topics).
pub(super) fn exact_name(native: &str, prefix: Option<&str>) -> Option<String> {
    (!corebus_net::is_pattern(native.as_bytes()))
        .then(|| format!("{}{}", prefix.unwrap_or_default(), unescape(native)))
}

/// `text` as an MQTT string, without a copy; `None` if it is not one
/// (U+0000, or longer than 65,535 bytes): such a name is not delivered.
pub(super) fn owned_str(text: String) -> Option<corebus_mqtt::MqttStr> {
    corebus_mqtt::MqttStr::from_bytes(bytes::Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_levels_and_leading_backslashes_are_escaped_one_to_one() {
        for (mqtt, native) in [
            ("a/b", "a/b"),
            ("a/*/b", "a/\\*/b"),
            (">", "\\>"),
            ("a/>", "a/\\>"),
            ("a/**/b*", "a/**/b*"),
            ("a/\\x", "a/\\\\x"),
            ("a\\b/c", "a\\b/c"),
            ("\\*", "\\\\*"),
            ("", ""),
            ("a//b/", "a//b/"),
        ] {
            assert_eq!(escape(mqtt), native, "{mqtt}");
            assert_eq!(unescape(native), mqtt, "{native}");
        }
        // A native name without a leading backslash in any level is its
        // own MQTT name.
        assert!(matches!(unescape("a/b*/c"), Cow::Borrowed(_)));
        assert!(matches!(escape("plain/name"), Cow::Borrowed(_)));
    }
}
