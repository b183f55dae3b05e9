//! Permissions as keys and tokens spell them, turned into the engine's
//! [`Rule`]s: `{ns, topic, prefix, publish, subscribe}` in the configuration
//! file and `{ns, topic, prefix, pub, sub}` in a token's `perm` claim.

use corebus_shards::auth::{Rule, TopicPattern};
use serde_json::{json, Value};

/// A rule, checked: valid namespace, valid topic (a prefix may be empty,
/// meaning every topic), and at least one action.
pub fn make_rule(
    namespace: String,
    topic: String,
    prefix: bool,
    publish: bool,
    subscribe: bool,
) -> Result<Rule, String> {
    corebus_net::validate_namespace(namespace.as_bytes()).map_err(|err| err.to_string())?;
    let pattern = topic_pattern(topic.clone(), prefix)?;
    if !publish && !subscribe {
        return Err(format!(
            "the permission on {namespace}/{topic} grants nothing: allow publish, subscribe or both"
        ));
    }
    Ok(Rule {
        namespace,
        topic: pattern,
        publish,
        subscribe,
    })
}

/// `topic` exactly, or with `prefix` every topic starting with it (the
/// empty prefix: every topic); a non-empty one must be a valid topic name.
pub fn topic_pattern(topic: String, prefix: bool) -> Result<TopicPattern, String> {
    if !(prefix && topic.is_empty()) {
        corebus_net::validate_topic(topic.as_bytes()).map_err(|err| err.to_string())?;
    }
    Ok(if prefix {
        TopicPattern::Prefix(topic)
    } else {
        TopicPattern::Exact(topic)
    })
}

/// A pattern as `(topic, prefix)`, the way files, tokens and commands spell it.
pub fn pattern_parts(pattern: &TopicPattern) -> (&str, bool) {
    match pattern {
        TopicPattern::Exact(topic) => (topic, false),
        TopicPattern::Prefix(topic) => (topic, true),
    }
}

/// A rule as a token's `perm` entry.
pub(crate) fn rule_json(rule: &Rule) -> Value {
    let (topic, prefix) = pattern_parts(&rule.topic);
    json!({
        "ns": rule.namespace,
        "topic": topic,
        "prefix": prefix,
        "pub": rule.publish,
        "sub": rule.subscribe,
    })
}

/// A token's `perm` claim: an array of `{ns, topic, prefix, pub, sub}`.
pub(crate) fn parse_perm(perm: &Value) -> Result<Vec<Rule>, String> {
    let Value::Array(entries) = perm else {
        return Err("`perm` is not an array".into());
    };
    let mut rules = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(format!("perm[{index}] is not an object"));
        };
        if let Some(unknown) = entry
            .keys()
            .find(|key| !["ns", "topic", "prefix", "pub", "sub"].contains(&key.as_str()))
        {
            return Err(format!(
                "perm[{index}]: unknown field `{unknown}` (known: ns, topic, prefix, pub, sub)"
            ));
        }
        let text = |field: &str| match entry.get(field) {
            Some(Value::String(text)) => Ok(text.clone()),
            _ => Err(format!("perm[{index}].{field} must be a string")),
        };
        let flag = |field: &str| match entry.get(field) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(_) => Err(format!("perm[{index}].{field} must be true or false")),
        };
        let rule = make_rule(
            text("ns")?,
            text("topic")?,
            flag("prefix")?,
            flag("pub")?,
            flag("sub")?,
        )
        .map_err(|reason| format!("perm[{index}]: {reason}"))?;
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_check_their_topic_except_the_empty_prefix() {
        assert!(topic_pattern(String::new(), true).is_ok(), "every topic");
        assert!(
            topic_pattern(String::new(), false).is_err(),
            "no topic is empty"
        );
        assert!(
            topic_pattern("eu\u{1}".into(), true).is_err(),
            "a prefix is a name"
        );
        assert!(topic_pattern("eu\u{1}".into(), false).is_err());
        assert_eq!(
            topic_pattern("eu/".into(), true),
            Ok(TopicPattern::Prefix("eu/".into()))
        );
    }

    #[test]
    fn rules_are_spelled_as_tokens_spell_them() {
        let exact = make_rule("orders".into(), "eu/1".into(), false, true, false).expect("valid");
        assert_eq!(pattern_parts(&exact.topic), ("eu/1", false));
        assert_eq!(
            rule_json(&exact),
            json!({ "ns": "orders", "topic": "eu/1", "prefix": false, "pub": true, "sub": false })
        );
        let prefix = make_rule("orders".into(), "eu/".into(), true, false, true).expect("valid");
        assert_eq!(pattern_parts(&prefix.topic), ("eu/", true));
    }
}
