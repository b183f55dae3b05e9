//! The pattern subscriptions a shard must serve as an owner: a trie over
//! topic segments, one per namespace.
//!
//! A pattern (`orders/*`, `orders/>`) cannot be hashed to one owner, so every
//! shard registers the interest of every pattern subscribed to anywhere in the
//! broker, and matches each topic it sequences against all of them. A walk of
//! the trie costs one hash lookup per segment of the topic per branch that
//! can still match (the literal segment, and `*`), whatever the number of
//! patterns registered: a scan of 10,000 patterns per publish would cost 10,000
//! comparisons.

use rustc_hash::FxHashMap;

/// Values (who wants the messages) registered under patterns.
#[derive(Debug)]
pub struct PatternTrie<V> {
    namespaces: FxHashMap<Box<[u8]>, Node<V>>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    /// Literal next segments.
    children: FxHashMap<Box<[u8]>, Node<V>>,
    /// The next segment is `*`.
    star: Option<Box<Node<V>>>,
    /// Patterns that end here: they match a topic with no more segments.
    here: Vec<V>,
    /// Patterns whose next (and last) segment is `>`: they match a topic
    /// with one or more segments left.
    rest: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: FxHashMap::default(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<V> Default for PatternTrie<V> {
    fn default() -> Self {
        PatternTrie {
            namespaces: FxHashMap::default(),
            len: 0,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<V: Copy + PartialEq> PatternTrie<V> {
    /// Whether nothing is registered (the publish path's only cost then).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Registrations held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Registers `value` under `pattern` of `namespace`; false (and no
    /// change) when it is there already.
    pub fn insert(&mut self, namespace: &[u8], pattern: &[u8], value: V) -> bool {
        let mut node = self.namespaces.entry(namespace.into()).or_default();
        let mut segments = pattern.split(|b| *b == b'/').peekable();
        while let Some(segment) = segments.next() {
            if segment == b">" && segments.peek().is_none() {
                return push_new(&mut node.rest, value, &mut self.len);
            }
            node = if segment == b"*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.children.entry(segment.into()).or_default()
            };
        }
        push_new(&mut node.here, value, &mut self.len)
    }

    /// Removes the values under `pattern` of `namespace` that `unwanted`
    /// picks, and the trie's nodes they leave empty; returns how many.
    pub fn remove_if(
        &mut self,
        namespace: &[u8],
        pattern: &[u8],
        unwanted: impl Fn(&V) -> bool,
    ) -> usize {
        let Some(root) = self.namespaces.get_mut(namespace) else {
            return 0;
        };
        let segments: Vec<&[u8]> = pattern.split(|b| *b == b'/').collect();
        let removed = remove_in(root, &segments, &unwanted);
        if root.is_empty() {
            self.namespaces.remove(namespace);
        }
        self.len -= removed;
        removed
    }

    /// Calls `found` with every value whose pattern matches `topic` of
    /// `namespace` (once per registration).
    pub fn matches(&self, namespace: &[u8], topic: &[u8], found: &mut impl FnMut(V)) {
        if let Some(root) = self.namespaces.get(namespace) {
            walk(root, topic.split(is_slash as fn(&u8) -> bool), found);
        }
    }
}

fn push_new<V: PartialEq>(values: &mut Vec<V>, value: V, len: &mut usize) -> bool {
    if values.contains(&value) {
        return false;
    }
    values.push(value);
    *len += 1;
    true
}

fn is_slash(byte: &u8) -> bool {
    *byte == b'/'
}

/// The topic's remaining segments, as an iterator that is cloned where the
/// walk branches (no allocation per publish).
type Segments<'a> = std::slice::Split<'a, u8, fn(&u8) -> bool>;

fn walk<V: Copy>(node: &Node<V>, mut topic: Segments<'_>, found: &mut impl FnMut(V)) {
    let Some(first) = topic.next() else {
        node.here.iter().for_each(|value| found(*value));
        return;
    };
    node.rest.iter().for_each(|value| found(*value));
    if let Some(child) = node.children.get(first) {
        walk(child, topic.clone(), found);
    }
    if let Some(star) = &node.star {
        walk(star, topic, found);
    }
}

fn remove_in<V>(node: &mut Node<V>, pattern: &[&[u8]], unwanted: &impl Fn(&V) -> bool) -> usize {
    let before = |values: &Vec<V>| values.len();
    match pattern {
        [] => {
            let had = before(&node.here);
            node.here.retain(|value| !unwanted(value));
            had - node.here.len()
        }
        [last] if *last == b">" => {
            let had = before(&node.rest);
            node.rest.retain(|value| !unwanted(value));
            had - node.rest.len()
        }
        [first, rest @ ..] if *first == b"*" => {
            let Some(star) = node.star.as_deref_mut() else {
                return 0;
            };
            let removed = remove_in(star, rest, unwanted);
            if star.is_empty() {
                node.star = None;
            }
            removed
        }
        [first, rest @ ..] => {
            let Some(child) = node.children.get_mut(*first) else {
                return 0;
            };
            let removed = remove_in(child, rest, unwanted);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(trie: &PatternTrie<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.matches(b"ns", topic.as_bytes(), &mut |value| out.push(value));
        out.sort_unstable();
        out
    }

    /// The trie answers exactly what `pattern_matches` says, pattern by
    /// pattern, for every topic of a set that exercises each rule.
    #[test]
    fn the_trie_agrees_with_the_grammar() {
        let patterns = [
            "orders/*",
            "orders/>",
            "*/created",
            "*/*/x",
            ">",
            "*",
            "orders/eu",
            "orders/eu/>",
            "a/*/c/>",
            "orders/eu*",
        ];
        let topics = [
            "orders",
            "orders/eu",
            "orders/eu/1",
            "eu/created",
            "a/b/x",
            "a/b/c",
            "a/b/c/d",
            "one",
            "orders/eu*",
            "x/y/z/w/v/u/t/s/r/q/p/o/n/m/l/k/j/i",
        ];
        let mut trie = PatternTrie::default();
        for (value, pattern) in patterns.iter().enumerate() {
            assert!(trie.insert(b"ns", pattern.as_bytes(), value as u32));
        }
        assert_eq!(trie.len(), patterns.len());
        for topic in topics {
            let expected: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| corebus_net::pattern_matches(p.as_bytes(), topic.as_bytes()))
                .map(|(value, _)| value as u32)
                .collect();
            assert_eq!(found(&trie, topic), expected, "topic {topic}");
        }
        let mut other = Vec::new();
        trie.matches(b"other", b"orders/eu", &mut |value| other.push(value));
        assert!(other.is_empty(), "namespaces are apart");
    }

    #[test]
    fn values_are_registered_once_and_removal_prunes_the_trie() {
        let mut trie = PatternTrie::default();
        assert!(trie.insert(b"ns", b"orders/*/x", 1u32));
        assert!(!trie.insert(b"ns", b"orders/*/x", 1), "already there");
        assert!(trie.insert(b"ns", b"orders/*/x", 2));
        assert!(trie.insert(b"ns", b"orders/>", 3));
        assert_eq!(found(&trie, "orders/a/x"), vec![1, 2, 3]);
        assert_eq!(trie.remove_if(b"ns", b"orders/*/x", |v| *v == 1), 1);
        assert_eq!(found(&trie, "orders/a/x"), vec![2, 3]);
        assert_eq!(trie.remove_if(b"ns", b"orders/*/x", |_| true), 1);
        assert_eq!(trie.remove_if(b"ns", b"orders/>", |_| true), 1);
        assert_eq!(trie.remove_if(b"ns", b"nothing/here", |_| true), 0);
        assert!(trie.is_empty());
        assert!(trie.namespaces.is_empty(), "no empty node is left behind");
    }

    /// Ten thousand patterns that a topic does not match cost its walk
    /// nothing: the walk visits the nodes on the topic's own path only.
    #[test]
    fn a_walk_visits_only_the_branches_a_topic_can_take() {
        let mut trie = PatternTrie::default();
        for i in 0..10_000u32 {
            assert!(trie.insert(b"ns", format!("idle/{i}/*").as_bytes(), i));
        }
        assert!(trie.insert(b"ns", b"orders/*", 10_000));
        assert_eq!(found(&trie, "orders/eu"), vec![10_000]);
        assert_eq!(found(&trie, "idle/42/x"), vec![42]);
        let root = &trie.namespaces[&b"ns"[..]];
        assert_eq!(root.children.len(), 2, "two first segments: idle, orders");
    }
}
