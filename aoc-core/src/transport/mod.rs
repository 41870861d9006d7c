//! How replicas reach each other.
//!
//! A [`Transport`] carries raft messages from one member to another. It
//! must never block the caller: a slow or dead peer's messages are dropped
//! (raft retransmits). The receiving side hands each message to its node
//! with [`crate::Node::step`]. [`tcp::TcpTransport`] is the real one (the
//! HA channel); [`LocalNetwork`] connects nodes inside one process (tests,
//! demos).
//! Snapshot messages travel in chunks ([`split_snapshot`], [`Reassembler`]).

mod chunk;
pub mod tcp;
pub mod tls;

pub use crate::proto::SnapshotChunk;
use chunk::split;
pub use chunk::{split as split_snapshot, Reassembler};

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use raft::eraftpb::Message;

use crate::node::Node;

pub use crate::proto::Notice;

/// Sends raft messages and notices to peers (see the module docs).
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` to member `msg.to`, best effort, without blocking.
    fn send(&self, msg: Message);
    /// Sends a notice (a member-to-member message that is not raft's) to
    /// member `notice.to`, best effort, without blocking.
    fn send_notice(&self, notice: Notice);
    /// The members changed (a membership change was applied, or the node
    /// started): `ids` are every member (this one included), `directory`
    /// the addresses of those added by membership changes. A transport
    /// that addresses members by id alone ignores it (the default).
    fn members_changed(&self, ids: &[u64], directory: &[crate::Member]) {
        let _ = (ids, directory);
    }
}

/// The receiving end of a member on a [`LocalNetwork`].
trait Inbox: Send + Sync {
    fn deliver(&self, msg: Message);
    fn deliver_notice(&self, notice: Notice);
}

impl<S: crate::state::StateMachine> Inbox for Node<S> {
    fn deliver(&self, msg: Message) {
        self.step(msg);
    }
    fn deliver_notice(&self, notice: Notice) {
        self.notice(notice);
    }
}

#[derive(Default)]
struct Net {
    members: HashMap<u64, Arc<dyn Inbox>>,
    cut: BTreeSet<(u64, u64)>,
    /// Snapshot streams being received, per receiving member.
    streams: HashMap<u64, Arc<parking_lot::Mutex<Reassembler>>>,
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
        LocalTransport {
            net: self.clone(),
            peers: Arc::new(RwLock::new(None)),
        }
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

/// Snapshot chunks on the local network (small, to exercise streaming).
const LOCAL_CHUNK_BYTES: usize = 16 * 1024;

/// The sending side of a [`LocalNetwork`]. Snapshot messages go through
/// the same chunked streaming as on a real network. Like the TCP
/// transport, it reaches only the members it was last told of
/// ([`Transport::members_changed`]; every member until then).
#[derive(Clone, Debug)]
pub struct LocalTransport {
    net: LocalNetwork,
    peers: Arc<RwLock<Option<BTreeSet<u64>>>>,
}

impl LocalTransport {
    fn reaches(&self, to: u64) -> bool {
        self.peers.read().as_ref().is_none_or(|p| p.contains(&to))
    }
}

impl Transport for LocalTransport {
    fn members_changed(&self, ids: &[u64], _directory: &[crate::Member]) {
        *self.peers.write() = Some(ids.iter().copied().collect());
    }

    fn send_notice(&self, notice: Notice) {
        if !self.reaches(notice.to) {
            return;
        }
        let inbox = {
            let net = self.net.net.read();
            if net.cut.contains(&(notice.from, notice.to)) {
                return;
            }
            net.members.get(&notice.to).cloned()
        };
        if let Some(inbox) = inbox {
            inbox.deliver_notice(notice);
        }
    }

    fn send(&self, msg: Message) {
        let to = msg.to;
        if !self.reaches(to) {
            return;
        }
        let (inbox, stream) = {
            let mut net = self.net.net.write();
            if net.cut.contains(&(msg.from, to)) {
                return;
            }
            let stream = net
                .streams
                .entry(to)
                .or_insert_with(|| Arc::new(parking_lot::Mutex::new(Reassembler::new(u64::MAX))))
                .clone();
            (net.members.get(&to).cloned(), stream)
        };
        let Some(inbox) = inbox else { return };
        match split(&msg, LOCAL_CHUNK_BYTES) {
            None => inbox.deliver(msg),
            Some(chunks) => {
                let mut stream = stream.lock();
                for c in chunks {
                    match stream.push(c) {
                        Ok(Some(whole)) => inbox.deliver(whole),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(to, error = %e, "snapshot stream broken");
                            return;
                        }
                    }
                }
            }
        }
    }
}
