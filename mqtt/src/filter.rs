//! Topic names and topic filters as MQTT defines them (section 4.7): which
//! filters are valid, shared subscriptions (`$share/{group}/{filter}`), and
//! which names a filter matches. This is MQTT's meaning, which the front
//! door maps onto corebus's patterns; it also serves as the reference the
//! mapping is tested against.

/// Why a topic filter is not valid (5.0 reason code 0x8F, "topic filter
/// invalid"; 3.1.1 answers the filter with 0x80 in `SUBACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An empty filter (MQTT-4.7.3-1).
    #[error("a topic filter may not be empty")]
    Empty,
    /// `#` that is not a whole last level (MQTT-4.7.1-1).
    #[error("`#` must be the last level of a topic filter, alone in it")]
    MultiLevel,
    /// `+` that is not a whole level (MQTT-4.7.1-2).
    #[error("`+` must be a whole level of a topic filter")]
    SingleLevel,
    /// `$share/` without a group name, with a group name holding `+` or
    /// `#`, or without a filter after it (MQTT-4.8.2-1 and -2).
    #[error(
        "a shared subscription is `$share/{{group}}/{{filter}}`, the group without `+`, `#` or `/`"
    )]
    Share,
}

/// A parsed topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicFilter<'a> {
    /// The group of a shared subscription (`$share/{group}/...`).
    pub share: Option<&'a str>,
    /// The filter proper (after the share prefix).
    pub filter: &'a str,
}

/// Checks `text` as a topic filter.
pub fn parse_filter(text: &str) -> Result<TopicFilter<'_>, FilterError> {
    let (share, filter) = match text.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest.split_once('/').ok_or(FilterError::Share)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(FilterError::Share);
            }
            (Some(group), filter)
        }
        None => (None, text),
    };
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::MultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::SingleLevel);
        }
    }
    Ok(TopicFilter { share, filter })
}

/// Whether `text` may be a `PUBLISH` topic name: not empty, no wildcard
/// (MQTT-4.7.3-1, MQTT-3.3.2-2).
pub fn valid_topic_name(text: &str) -> bool {
    !text.is_empty() && !text.contains(['+', '#'])
}

/// Whether the topic name `topic` matches the filter `filter` (already
/// valid, without a share prefix), with MQTT's rules: `+` is any one level
/// (an empty one too), `#` any number of trailing levels including none (so
/// `a/#` matches `a`), and a filter starting with a wildcard does not match
/// a name starting with `$` (MQTT-4.7.2-1).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = topic.split('/');
    let mut levels = filter.split('/');
    loop {
        match (levels.next(), names.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(level), Some(name)) if level == name => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_examples_match_as_they_say() {
        // Section 4.7.1.2 and 4.7.1.3.
        let matches = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            // Section 4.7.2: `$` names.
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            // Empty levels are levels.
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/", "a", false),
            ("TopicA", "TopicA", true),
            ("TopicA", "topica", false),
        ];
        for (filter, topic, expected) in matches {
            assert!(parse_filter(filter).is_ok(), "{filter}");
            assert_eq!(topic_matches(filter, topic), expected, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn invalid_filters_say_why() {
        assert_eq!(parse_filter(""), Err(FilterError::Empty));
        assert_eq!(parse_filter("sport/tennis#"), Err(FilterError::MultiLevel));
        assert_eq!(
            parse_filter("sport/tennis/#/ranking"),
            Err(FilterError::MultiLevel)
        );
        assert_eq!(parse_filter("sport+"), Err(FilterError::SingleLevel));
        assert_eq!(parse_filter("sport/+player"), Err(FilterError::SingleLevel));
        for shared in [
            "$share/",
            "$share/group",
            "$share/group/",
            "$share//a",
            "$share/g+/a",
            "$share/g#/a",
        ] {
            assert_eq!(parse_filter(shared), Err(FilterError::Share), "{shared}");
        }
    }

    #[test]
    fn shared_subscriptions_name_their_group() {
        assert_eq!(
            parse_filter("$share/workers/jobs/+"),
            Ok(TopicFilter {
                share: Some("workers"),
                filter: "jobs/+"
            })
        );
        assert_eq!(
            parse_filter("$shared/x").map(|f| f.share),
            Ok(None),
            "only `$share/` is the prefix"
        );
        assert!(valid_topic_name("/TopicA") && valid_topic_name("a//b") && valid_topic_name("a/"));
        assert!(!valid_topic_name("") && !valid_topic_name("a/+") && !valid_topic_name("#"));
    }
}
