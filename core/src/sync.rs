//! Comparing two regions' Merkle trees, and anti-entropy.
//!
//! [`diff_classes`] walks two trees level by level: one round trip for the
//! roots (and the roots' children) of every class, then one per level for
//! every differing node of that level at once, then one for the entries of
//! the differing buckets. Subtrees with few entries come back as entry lists
//! at once instead of being descended. So the round trips are bounded by the
//! depth (at most 5), and the bytes grow with the number of differences, not
//! with the number of entities.
//!
//! The two sides are [`TreeSource`]s: this region's own tree or another
//! region over the peer transport (both supplied by the node, which this
//! module does not know), or (in the auditor) a region over HTTP.
//! [`anti_entropy`] takes two [`Replica`]s, tree sources that also take
//! repairs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::merkle::{self, DEPTH, FINGERPRINT_BYTES, MerkleTree, NodeId};
use crate::protocol::{
    ClassRoot, NodeBody, RepairItem, ReplicationState, TreeEntry, TreeRequest, TreeResponse,
};

/// What a region's tree answers are made of.
pub trait TreeData {
    /// Whether the class is declared.
    fn has_class(&self, class: &str) -> bool;
    /// The error for an undeclared class.
    fn class_error(&self, class: &str) -> Error;
    /// Runs `f` on a class's tree.
    fn with_tree<T>(&self, class: &str, f: impl FnOnce(&mut MerkleTree) -> T) -> T;
    /// The entries under a node, with the fingerprints of their entry hashes.
    fn entries(&self, class: &str, node: NodeId) -> Result<Vec<TreeEntry>>;
    /// The stored versions of keys.
    fn versions(&self, class: &str, keys: &[String]) -> Result<Vec<Option<Entity>>>;
    /// Replication watermarks.
    fn state(&self) -> ReplicationState;
}

/// Most entries one tree answer may carry.
pub const MAX_TREE_ENTRIES: u64 = 1_000_000;

/// Packs children fingerprints into one byte string.
fn pack(children: &[(merkle::Fingerprint, u64)]) -> Vec<u8> {
    children
        .iter()
        .flat_map(|(fp, _)| fp.iter().copied())
        .collect()
}

/// Answers a tree question from `data`.
pub fn answer(data: &impl TreeData, req: TreeRequest) -> Result<TreeResponse> {
    let check_class = |class: &str| {
        if data.has_class(class) {
            Ok(())
        } else {
            Err(data.class_error(class))
        }
    };
    let check_node = |node: &NodeId, inner: bool| -> Result<()> {
        let max_level = if inner { DEPTH - 1 } else { DEPTH };
        if node.level > max_level
            || u64::from(node.index) >= 1u64 << (merkle::FANOUT_BITS * node.level)
        {
            return Err(Error::BadRequest(format!(
                "tree node {node:?} does not exist (levels 0..={max_level}, {} children per node)",
                merkle::FANOUT
            )));
        }
        Ok(())
    };
    match req {
        TreeRequest::Roots { classes } => {
            let mut out = Vec::with_capacity(classes.len());
            for class in classes {
                check_class(&class)?;
                out.push(data.with_tree(&class, |t| ClassRoot {
                    root: merkle::fingerprint(&t.root()).to_vec(),
                    count: t.len(),
                    children: pack(&t.children(NodeId::ROOT)),
                    class: class.clone(),
                }));
            }
            Ok(TreeResponse::Roots(out))
        }
        TreeRequest::Children {
            class,
            nodes,
            small,
        } => {
            check_class(&class)?;
            let mut out = Vec::with_capacity(nodes.len());
            for node in nodes {
                check_node(&node, true)?;
                let (count, children) = data.with_tree(&class, |t| {
                    let count = t.count(node);
                    (
                        count,
                        if count > small {
                            Some(t.children(node))
                        } else {
                            None
                        },
                    )
                });
                out.push(match children {
                    Some(c) => NodeBody::Children(pack(&c)),
                    None if count == 0 => NodeBody::Entries(Vec::new()),
                    None => NodeBody::Entries(data.entries(&class, node)?),
                });
            }
            Ok(TreeResponse::Nodes(out))
        }
        TreeRequest::Entries { class, nodes } => {
            check_class(&class)?;
            let mut out = Vec::with_capacity(nodes.len());
            for node in nodes {
                check_node(&node, false)?;
                let count = data.with_tree(&class, |t| t.count(node));
                if count > MAX_TREE_ENTRIES {
                    return Err(Error::BadRequest(format!(
                        "tree node {node:?} of `{class}` holds {count} entries, more than {MAX_TREE_ENTRIES} in one answer; ask for its children"
                    )));
                }
                out.push(NodeBody::Entries(data.entries(&class, node)?));
            }
            Ok(TreeResponse::Nodes(out))
        }
        TreeRequest::Versions { class, keys } => {
            check_class(&class)?;
            Ok(TreeResponse::Versions(data.versions(&class, &keys)?))
        }
        TreeRequest::Applied => Ok(TreeResponse::Applied(data.state())),
    }
}

/// Something that answers tree questions: a region.
pub trait TreeSource: Send + Sync {
    /// The region's name.
    fn name(&self) -> &str;
    /// Asks; answers with the bytes that crossed the network (0 when local).
    fn ask(&self, req: TreeRequest) -> BoxFuture<'_, Result<(TreeResponse, u64)>>;
}

/// A region anti-entropy reads trees and versions from and hands merged
/// versions to: this region's own store, or another region over the wire.
pub trait Replica: TreeSource {
    /// Merges versions into the region through their class's policy.
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>>;
}

/// Tuning of a diff.
#[derive(Clone, Copy, Debug)]
pub struct DiffOptions {
    /// Subtrees with at most this many entries are sent as entries.
    pub small: u64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions { small: 8 }
    }
}

/// The keys in which two regions' copies of a class differ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassDiff {
    /// Class.
    pub class: String,
    /// Entries on each side.
    pub entries: (u64, u64),
    /// Keys whose entries differ (or exist on one side only).
    pub keys: BTreeSet<String>,
    /// Round trips taken (the roots' round trip is shared by all classes).
    pub round_trips: u32,
    /// Bytes exchanged with remote sides.
    pub bytes: u64,
}

fn unpack(packed: &[u8]) -> Vec<&[u8]> {
    packed.chunks(FINGERPRINT_BYTES).collect()
}

fn differing_children(a: &[u8], b: &[u8]) -> Vec<usize> {
    let (a, b) = (unpack(a), unpack(b));
    (0..merkle::FANOUT)
        .filter(|&i| a.get(i) != b.get(i))
        .collect()
}

fn compare_entries(a: &[TreeEntry], b: &[TreeEntry], out: &mut BTreeSet<String>) {
    let am: BTreeMap<&str, &[u8]> = a
        .iter()
        .map(|e| (e.key.as_str(), e.fp.as_slice()))
        .collect();
    let bm: BTreeMap<&str, &[u8]> = b
        .iter()
        .map(|e| (e.key.as_str(), e.fp.as_slice()))
        .collect();
    for k in am.keys().chain(bm.keys()) {
        if am.get(k) != bm.get(k) {
            out.insert((*k).to_owned());
        }
    }
}

async fn ask(
    src: &dyn TreeSource,
    req: Option<TreeRequest>,
) -> Result<Option<(TreeResponse, u64)>> {
    match req {
        Some(r) => src.ask(r).await.map(Some),
        None => Ok(None),
    }
}

async fn both(
    a: &dyn TreeSource,
    b: &dyn TreeSource,
    req: TreeRequest,
) -> Result<(TreeResponse, TreeResponse, u64)> {
    let (ra, rb) = futures::join!(a.ask(req.clone()), b.ask(req));
    let ((ra, ba), (rb, bb)) = (ra?, rb?);
    Ok((ra, rb, ba + bb))
}

fn nodes(r: TreeResponse, n: usize, who: &str) -> Result<Vec<NodeBody>> {
    match r {
        TreeResponse::Nodes(v) if v.len() == n => Ok(v),
        other => Err(Error::Internal(format!(
            "region {who} answered with {other:?} where {n} nodes were expected"
        ))),
    }
}

/// Compares two regions' trees of `classes`; one [`ClassDiff`] per class.
pub async fn diff_classes(
    a: &dyn TreeSource,
    b: &dyn TreeSource,
    classes: &[String],
    opts: DiffOptions,
) -> Result<Vec<ClassDiff>> {
    let (ra, rb, bytes) = both(
        a,
        b,
        TreeRequest::Roots {
            classes: classes.to_vec(),
        },
    )
    .await?;
    let (TreeResponse::Roots(ra), TreeResponse::Roots(rb)) = (ra, rb) else {
        return Err(Error::Internal(
            "a region did not answer a roots question with roots".into(),
        ));
    };
    let mut out = Vec::with_capacity(classes.len());
    for (i, class) in classes.iter().enumerate() {
        let (Some(x), Some(y)) = (ra.get(i), rb.get(i)) else {
            return Err(Error::Internal(format!(
                "a region left class {class} out of its roots"
            )));
        };
        let mut diff = ClassDiff {
            class: class.clone(),
            entries: (x.count, y.count),
            round_trips: 1,
            bytes: if i == 0 { bytes } else { 0 },
            ..ClassDiff::default()
        };
        if x.root != y.root {
            let frontier = differing_children(&x.children, &y.children)
                .into_iter()
                .map(|c| NodeId::ROOT.child(c))
                .collect();
            descend(a, b, class, frontier, opts, &mut diff).await?;
        }
        out.push(diff);
    }
    Ok(out)
}

/// A node whose entries are wanted, with those already had from either side.
type Wanted = (NodeId, Option<Vec<TreeEntry>>, Option<Vec<TreeEntry>>);

/// Walks down from `frontier` (differing nodes of one level).
async fn descend(
    a: &dyn TreeSource,
    b: &dyn TreeSource,
    class: &str,
    mut frontier: Vec<NodeId>,
    opts: DiffOptions,
    diff: &mut ClassDiff,
) -> Result<()> {
    // Nodes whose entries are wanted, with the entries already had from either side.
    let mut wanted: Vec<Wanted> = Vec::new();
    while !frontier.is_empty() || !wanted.is_empty() {
        let (inner, buckets): (Vec<NodeId>, Vec<NodeId>) =
            frontier.drain(..).partition(|n| n.level < DEPTH);
        wanted.extend(buckets.into_iter().map(|n| (n, None, None)));
        let need_a: Vec<NodeId> = wanted
            .iter()
            .filter(|w| w.1.is_none())
            .map(|w| w.0)
            .collect();
        let need_b: Vec<NodeId> = wanted
            .iter()
            .filter(|w| w.2.is_none())
            .map(|w| w.0)
            .collect();
        let children_req = (!inner.is_empty()).then(|| TreeRequest::Children {
            class: class.to_owned(),
            nodes: inner.clone(),
            small: opts.small,
        });
        let entries = |nodes: Vec<NodeId>| {
            (!nodes.is_empty()).then(|| TreeRequest::Entries {
                class: class.to_owned(),
                nodes,
            })
        };
        // One round trip: every question of this round, to both sides at once.
        let (ca, cb, ea, eb) = futures::join!(
            ask(a, children_req.clone()),
            ask(b, children_req),
            ask(a, entries(need_a.clone())),
            ask(b, entries(need_b.clone()))
        );
        diff.round_trips += 1;
        let mut next = Vec::new();
        if let (Some((ca, x)), Some((cb, y))) = (ca?, cb?) {
            diff.bytes += x + y;
            let (ca, cb) = (
                nodes(ca, inner.len(), a.name())?,
                nodes(cb, inner.len(), b.name())?,
            );
            for ((node, ba), bb) in inner.iter().zip(ca).zip(cb) {
                match (ba, bb) {
                    (NodeBody::Children(x), NodeBody::Children(y)) => {
                        next.extend(
                            differing_children(&x, &y)
                                .into_iter()
                                .map(|c| node.child(c)),
                        );
                    }
                    (NodeBody::Entries(x), NodeBody::Entries(y)) => {
                        compare_entries(&x, &y, &mut diff.keys)
                    }
                    (NodeBody::Entries(x), NodeBody::Children(_)) => {
                        wanted.push((*node, Some(x), None))
                    }
                    (NodeBody::Children(_), NodeBody::Entries(y)) => {
                        wanted.push((*node, None, Some(y)))
                    }
                }
            }
        }
        for (answer, need, side_a) in [(ea?, need_a, true), (eb?, need_b, false)] {
            let Some((resp, n)) = answer else { continue };
            diff.bytes += n;
            let bodies = nodes(resp, need.len(), if side_a { a.name() } else { b.name() })?;
            for (node, body) in need.iter().zip(bodies) {
                let NodeBody::Entries(e) = body else {
                    return Err(Error::Internal(
                        "entries were asked for and children came back".into(),
                    ));
                };
                if let Some(w) = wanted.iter_mut().find(|w| w.0 == *node) {
                    if side_a { w.1 = Some(e) } else { w.2 = Some(e) }
                }
            }
        }
        wanted.retain(|(_, x, y)| match (x, y) {
            (Some(x), Some(y)) => {
                compare_entries(x, y, &mut diff.keys);
                false
            }
            _ => true,
        });
        frontier = next;
    }
    Ok(())
}

/// What one anti-entropy pass with one peer did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyReport {
    /// The peer.
    pub peer: String,
    /// When it finished (µs since epoch).
    pub finished_us: u64,
    /// How long it took (ms).
    pub duration_ms: u64,
    /// Per class.
    pub classes: Vec<ClassRepair>,
    /// The error that stopped it, if any.
    pub error: Option<String>,
}

/// What anti-entropy did for one class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassRepair {
    /// Class.
    pub class: String,
    /// Keys that differed.
    pub differing: u64,
    /// Versions taken from the peer and merged here.
    pub pulled: u64,
    /// Versions pushed to the peer.
    pub pushed: u64,
    /// Round trips of the diff.
    pub round_trips: u32,
    /// Bytes of the diff.
    pub bytes: u64,
}

/// Keys exchanged per request.
const CHUNK: usize = 500;

/// Compares `local`'s trees of `classes` with `remote`'s and exchanges
/// the differing entities both ways through the class's merge, at most
/// `max_keys_per_sec` keys per second.
pub async fn anti_entropy(
    local: &dyn Replica,
    remote: &dyn Replica,
    classes: &[String],
    max_keys_per_sec: u64,
    clock: &dyn Clock,
) -> Result<AntiEntropyReport> {
    let started_us = clock.now_us();
    let diffs = diff_classes(local, remote, classes, DiffOptions::default()).await?;
    let mut report = AntiEntropyReport {
        peer: remote.name().to_owned(),
        ..Default::default()
    };
    let mut budget_start = Instant::now();
    let mut budget_used = 0u64;
    for diff in diffs {
        let mut class = ClassRepair {
            class: diff.class.clone(),
            differing: diff.keys.len() as u64,
            round_trips: diff.round_trips,
            bytes: diff.bytes,
            ..ClassRepair::default()
        };
        let keys: Vec<String> = diff.keys.into_iter().collect();
        for chunk in keys.chunks(CHUNK) {
            // Rate limit: at most max_keys_per_sec keys per second.
            budget_used += chunk.len() as u64;
            let allowed =
                Duration::from_secs_f64(budget_used as f64 / max_keys_per_sec.max(1) as f64);
            if let Some(wait) = allowed.checked_sub(budget_start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            if budget_start.elapsed() > Duration::from_secs(60) {
                budget_start = Instant::now();
                budget_used = 0;
            }
            let req = TreeRequest::Versions {
                class: diff.class.clone(),
                keys: chunk.to_vec(),
            };
            let (theirs, _) = remote.ask(req.clone()).await?;
            let (mine, _) = local.ask(req).await?;
            let (TreeResponse::Versions(theirs), TreeResponse::Versions(mine)) = (theirs, mine)
            else {
                return Err(Error::Internal(
                    "versions were asked for and something else came back".into(),
                ));
            };
            let mut pull = Vec::new();
            let mut push = Vec::new();
            for ((key, t), m) in chunk.iter().zip(theirs).zip(mine) {
                let item = |entity: Entity| RepairItem {
                    class: diff.class.clone(),
                    key: key.clone(),
                    entity,
                };
                match (t, m) {
                    (Some(t), Some(m)) if t != m => {
                        pull.push(item(t));
                        push.push(item(m));
                    }
                    (Some(t), None) => pull.push(item(t)),
                    (None, Some(m)) => push.push(item(m)),
                    _ => {}
                }
            }
            class.pulled += pull.len() as u64;
            class.pushed += push.len() as u64;
            if !pull.is_empty() {
                local.repair(pull).await?;
            }
            if !push.is_empty() {
                remote.repair(push).await?;
            }
        }
        report.classes.push(class);
    }
    report.finished_us = clock.now_us();
    report.duration_ms = report.finished_us.saturating_sub(started_us) / 1_000;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// A region's copy of one class `c`: keys to stored bytes, with the
    /// tree kept up to date by every write, as the store does.
    #[derive(Debug, Default)]
    struct Copy {
        tree: Mutex<MerkleTree>,
        model: BTreeMap<String, Vec<u8>>,
    }

    impl Copy {
        fn put(&mut self, key: String, value: Option<u32>) {
            let new = value.map(|v| format!("state-{v}").into_bytes());
            let h = |b: &Vec<u8>| merkle::entry_hash("c", &key, b);
            self.tree.get_mut().unwrap().update(
                merkle::bucket_of(&key),
                self.model.get(&key).map(h).as_ref(),
                new.as_ref().map(h).as_ref(),
            );
            match new {
                Some(b) => self.model.insert(key, b),
                None => self.model.remove(&key),
            };
        }
    }

    impl TreeData for Copy {
        fn has_class(&self, class: &str) -> bool {
            class == "c"
        }
        fn class_error(&self, class: &str) -> Error {
            Error::BadRequest(format!("no class {class}"))
        }
        fn with_tree<T>(&self, _: &str, f: impl FnOnce(&mut MerkleTree) -> T) -> T {
            f(&mut self.tree.lock().unwrap())
        }
        fn entries(&self, class: &str, node: NodeId) -> Result<Vec<TreeEntry>> {
            let buckets = node.buckets();
            Ok(self
                .model
                .iter()
                .filter(|(k, _)| buckets.contains(&merkle::bucket_of(k)))
                .map(|(k, b)| TreeEntry {
                    key: k.clone(),
                    fp: merkle::fingerprint(&merkle::entry_hash(class, k, b)).to_vec(),
                })
                .collect())
        }
        fn versions(&self, _: &str, keys: &[String]) -> Result<Vec<Option<Entity>>> {
            Ok(vec![None; keys.len()])
        }
        fn state(&self) -> ReplicationState {
            ReplicationState::default()
        }
    }

    /// A region answering through the production [`answer`].
    struct Region(&'static str, Copy);

    impl TreeSource for Region {
        fn name(&self) -> &str {
            self.0
        }
        fn ask(&self, req: TreeRequest) -> BoxFuture<'_, Result<(TreeResponse, u64)>> {
            Box::pin(async move { answer(&self.1, req).map(|r| (r, 0)) })
        }
    }

    type Writes = Vec<(u16, Option<u32>)>;

    fn writes(keys: u16) -> impl Strategy<Value = Writes> {
        prop::collection::vec(
            (
                0..keys,
                prop_oneof![3 => (0u32..5).prop_map(Some), 1 => Just(None)],
            ),
            0..300,
        )
    }

    proptest! {
        /// The diff the auditor and anti-entropy run finds exactly the keys
        /// whose copies differ, for subtrees sent as entries early (the
        /// default) and for a descent to the buckets (`small: 0`).
        #[test]
        fn diff_classes_finds_exactly_the_differing_keys(
            common in writes(400),
            only_a in writes(400),
            only_b in writes(400),
            small in prop_oneof![Just(0u64), Just(8), Just(10_000)],
        ) {
            let (mut a, mut b) = (Copy::default(), Copy::default());
            for (k, v) in &common {
                a.put(format!("key-{k}"), *v);
                b.put(format!("key-{k}"), *v);
            }
            for (k, v) in &only_a {
                a.put(format!("key-{k}"), *v);
            }
            for (k, v) in &only_b {
                b.put(format!("key-{k}"), *v);
            }
            let expected: BTreeSet<String> = a.model.keys().chain(b.model.keys())
                .filter(|k| a.model.get(*k) != b.model.get(*k)).cloned().collect();
            let (a, b) = (Region("a", a), Region("b", b));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let diff = rt.block_on(diff_classes(&a, &b, &["c".to_owned()], DiffOptions { small })).unwrap();
            prop_assert_eq!(diff.len(), 1);
            prop_assert_eq!(&diff[0].keys, &expected);
            prop_assert_eq!(diff[0].entries, (a.1.model.len() as u64, b.1.model.len() as u64));
            prop_assert!(diff[0].round_trips <= DEPTH + 2, "{} round trips", diff[0].round_trips);
        }
    }
}
