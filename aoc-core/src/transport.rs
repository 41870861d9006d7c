//! How replicas reach each other.
//!
//! A [`Transport`] carries raft messages from one member to another. It
//! must never block the caller: a slow or dead peer's messages are dropped
//! (raft retransmits). The receiving side hands each message to its node
//! with [`crate::Node::step`]. The TCP transport lives with the binaries;
//! [`LocalNetwork`] connects nodes inside one process (tests, demos).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use raft::eraftpb::Message;

use crate::node::Node;

/// Sends raft messages to peers (see the module docs).
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` to member `msg.to`, best effort, without blocking.
    fn send(&self, msg: Message);
}

/// The receiving end of a member on a [`LocalNetwork`].
trait Inbox: Send + Sync {
    fn deliver(&self, msg: Message);
}

impl<S: crate::state::StateMachine> Inbox for Node<S> {
    fn deliver(&self, msg: Message) {
        self.step(msg);
    }
}

#[derive(Default)]
struct Net {
    members: HashMap<u64, Arc<dyn Inbox>>,
    cut: BTreeSet<(u64, u64)>,
}

/// An in-process network of nodes, with links that can be cut.
///
/// ```
/// use aoc_core::transport::LocalNetwork;
/// let net = LocalNetwork::new();
/// net.isolate(3, &[1, 2]);
/// net.heal();
/// ```
#[derive(Clone, Default)]
pub struct LocalNetwork {
    net: Arc<RwLock<Net>>,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = self.net.read();
        let mut ids: Vec<_> = net.members.keys().collect();
        ids.sort();
        f.debug_struct("LocalNetwork")
            .field("members", &ids)
            .finish()
    }
}

impl LocalNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport a member uses to send on this network.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport { net: self.clone() }
    }

    /// Attaches (or re-attaches, after a restart) member `id`'s node.
    pub fn attach<S: crate::state::StateMachine>(&self, id: u64, node: Node<S>) {
        self.net.write().members.insert(id, Arc::new(node));
    }

    /// Detaches member `id`: messages to it are dropped.
    pub fn detach(&self, id: u64) {
        self.net.write().members.remove(&id);
    }

    /// Cuts member `id` off from `others`, both ways.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        let mut net = self.net.write();
        for &o in others {
            net.cut.insert((id, o));
            net.cut.insert((o, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.net.write().cut.clear();
    }
}

/// The sending side of a [`LocalNetwork`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    net: LocalNetwork,
}

impl Transport for LocalTransport {
    fn send(&self, msg: Message) {
        let inbox = {
            let net = self.net.net.read();
            if net.cut.contains(&(msg.from, msg.to)) {
                return;
            }
            net.members.get(&msg.to).cloned()
        };
        if let Some(inbox) = inbox {
            inbox.deliver(msg);
        }
    }
}
