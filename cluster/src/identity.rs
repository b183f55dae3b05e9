//! Who a node is: its cluster address (the node id), which process of that
//! address (the generation), where its clients connect, and whether it is on
//! its way out.

use std::net::SocketAddr;

/// One incarnation of a node, as the members gossip it.
///
/// foca keys members by [`NodeIdentity::addr`]: two identities with the same
/// address are the same node, and the one with the higher generation wins.
/// A restarted process reads a later clock, so it replaces the one that ran
/// before it even if nobody noticed that one die.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The cluster address: where the node gossips, and its id.
    pub addr: SocketAddr,
    /// Which process of this address: start time in Unix milliseconds, then a
    /// counter bumped each time it rejoins after being declared down.
    pub generation: Generation,
    /// Where the node's clients connect (its native listener).
    pub client: SocketAddr,
    /// A planned leave is under way: route around it.
    pub leaving: bool,
}

/// A process's start time, and how many times it rejoined since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation {
    /// Unix milliseconds when the process started.
    pub started_ms: u64,
    /// Rejoins after being declared down.
    pub bump: u32,
}

impl NodeIdentity {
    /// What a node knows of a seed before hearing from it: its address only.
    pub fn seed(addr: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            addr,
            generation: Generation {
                started_ms: 0,
                bump: 0,
            },
            client: addr,
            leaving: false,
        }
    }

    /// The same node, marked as leaving (a new identity, so that it wins
    /// over the one gossiped so far).
    pub fn leaving(&self) -> NodeIdentity {
        NodeIdentity {
            generation: self.generation.bumped(),
            leaving: true,
            ..self.clone()
        }
    }
}

impl Generation {
    fn bumped(self) -> Generation {
        Generation {
            bump: self.bump.wrapping_add(1),
            ..self
        }
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    /// After being declared down by mistake (a pause, a partition), the node
    /// rejoins as a new generation of itself.
    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation.bumped(),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn node(started_ms: u64, bump: u32) -> NodeIdentity {
        NodeIdentity {
            addr: "127.0.0.2:7500".parse().unwrap(),
            generation: Generation { started_ms, bump },
            client: "127.0.0.2:7400".parse().unwrap(),
            leaving: false,
        }
    }

    #[test]
    fn a_later_process_or_a_rejoin_wins_its_address() {
        let old = node(1_000, 0);
        let restarted = node(2_000, 0);
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let rejoined = old.renew().unwrap();
        assert!(rejoined.win_addr_conflict(&old));
        assert!(
            restarted.win_addr_conflict(&rejoined),
            "a restart beats any rejoin"
        );
        assert_eq!(rejoined.addr(), old.addr());
        let leaving = old.leaving();
        assert!(leaving.leaving && leaving.win_addr_conflict(&old));
    }
}
