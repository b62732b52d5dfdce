//! Merkle trees over a class's entities, without I/O.
//!
//! Shape: a fixed tree of fanout 32 and depth 4 above 2^20 buckets. A key's
//! bucket is the first 20 bits of BLAKE3(key). A bucket's digest combines
//! its entries' hashes order-independently — their sum modulo 2^256, with
//! their count folded in — so one write changes one bucket by subtracting
//! the old entry hash and adding the new, and then one path of inner nodes.
//! An inner node's digest is keyed BLAKE3 over its 32 children's digests
//! (their first 16 bytes). An empty subtree's digest is all zeros, so empty
//! buckets cost nothing.
//!
//! The entry hash is BLAKE3 (keyed by a domain string) over the class, the
//! key and the entity's encoded replicated state. The sum of 256-bit keyed
//! BLAKE3 hashes is an additive multiset hash: two different sets of entries
//! sum equal by chance with odds about 2^-256 (unlike XOR of weak hashes,
//! where equal entries cancel and small changes compensate). It guards
//! against accident — bugs, lost writes, corruption — not against someone
//! who chooses thousands of entries to make a bucket collide on purpose
//! (generalised-birthday attacks on additive hashes); the entry key would
//! have to be secret for that.
//!
//! Between regions, digests travel truncated to [`FINGERPRINT_BYTES`] (12)
//! bytes: a differing subtree passes a comparison as equal with probability
//! 2^-96.
//!
//! Memory: inner levels are dense (32 + 1,024 + 32,768 digests and counts,
//! about 1.4 MiB per class in use). Buckets are kept in a map while few are
//! in use (about 64 bytes each), and in one 40 MiB array (2^20 × 40 bytes)
//! once a quarter of them are — from about 300,000 entities on. So a class
//! costs about 64 bytes per entity up to ~300,000 entities and ~42 MiB from
//! there on: 42 MiB for one million entities, and the same for ten million.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// Children per inner node.
pub const FANOUT: usize = 32;
/// Bits of BLAKE3(key) that choose a child at each level.
pub const FANOUT_BITS: u32 = 5;
/// Inner levels above the buckets (the root is level 0).
pub const DEPTH: u32 = 4;
/// Bits of BLAKE3(key) that choose the bucket.
pub const BUCKET_BITS: u32 = FANOUT_BITS * DEPTH;
/// Number of buckets.
pub const BUCKETS: u32 = 1 << BUCKET_BITS;
/// Bytes of a digest sent between regions.
pub const FINGERPRINT_BYTES: usize = 12;

/// A full digest.
pub type Digest = [u8; 32];
/// A truncated digest, as exchanged.
pub type Fingerprint = [u8; FINGERPRINT_BYTES];

const ZERO: Digest = [0; 32];

/// Truncates a digest to a fingerprint.
pub fn fingerprint(d: &Digest) -> Fingerprint {
    let mut f = [0u8; FINGERPRINT_BYTES];
    f.copy_from_slice(&d[..FINGERPRINT_BYTES]);
    f
}

/// The bucket of a key: the first [`BUCKET_BITS`] bits of BLAKE3(key).
pub fn bucket_of(key: &str) -> u32 {
    let h = blake3::hash(key.as_bytes());
    u32::from_be_bytes([
        h.as_bytes()[0],
        h.as_bytes()[1],
        h.as_bytes()[2],
        h.as_bytes()[3],
    ]) >> (32 - BUCKET_BITS)
}

/// The 4-byte prefix of BLAKE3(key) that orders the store by bucket.
pub fn key_prefix(key: &str) -> [u8; 4] {
    let h = blake3::hash(key.as_bytes());
    [
        h.as_bytes()[0],
        h.as_bytes()[1],
        h.as_bytes()[2],
        h.as_bytes()[3],
    ]
}

/// Keys of the hashes, derived once from their domain strings.
static ENTRY_KEY: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key("parallax 2026 merkle entry v1", b""));
static NODE_KEY: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key("parallax 2026 merkle node v1", b""));

/// The hash of one entry: class, key and encoded replicated state.
pub fn entry_hash(class: &str, key: &str, state: &[u8]) -> Digest {
    // Lengths make the encoding unambiguous; class names are at most 63
    // bytes and keys at most 64 KiB, so two bytes each suffice.
    let len = 4 + class.len() + key.len() + state.len();
    if len <= 256 {
        // One chunk: hash it in one call from the stack.
        let mut buf = [0u8; 256];
        let mut at = 0;
        for part in [
            &(class.len() as u16).to_le_bytes()[..],
            class.as_bytes(),
            &(key.len() as u16).to_le_bytes(),
            key.as_bytes(),
            state,
        ] {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        return *blake3::keyed_hash(&ENTRY_KEY, &buf[..at]).as_bytes();
    }
    let mut h = blake3::Hasher::new_keyed(&ENTRY_KEY);
    h.update(&(class.len() as u16).to_le_bytes());
    h.update(class.as_bytes());
    h.update(&(key.len() as u16).to_le_bytes());
    h.update(key.as_bytes());
    h.update(state);
    *h.finalize().as_bytes()
}

/// The bucket index at `level` (0..=DEPTH) containing bucket `bucket`.
pub fn ancestor(bucket: u32, level: u32) -> u32 {
    bucket >> (FANOUT_BITS * (DEPTH - level))
}

/// An identifier of a node: its level (0 = root, [`DEPTH`] = bucket) and
/// its index within the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// Level, 0 (root) to [`DEPTH`] (buckets).
    pub level: u32,
    /// Index within the level.
    pub index: u32,
}

impl NodeId {
    /// The root.
    pub const ROOT: NodeId = NodeId { level: 0, index: 0 };

    /// The `i`th child.
    pub fn child(self, i: usize) -> NodeId {
        NodeId {
            level: self.level + 1,
            index: (self.index << FANOUT_BITS) | i as u32,
        }
    }

    /// The range of buckets under this node.
    pub fn buckets(self) -> std::ops::Range<u32> {
        let shift = FANOUT_BITS * (DEPTH - self.level);
        (self.index << shift)..((self.index + 1) << shift)
    }
}

/// A bucket: the sum of its entry hashes (mod 2^256) and their count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    sum: [u64; 4],
    count: u64,
}

impl Bucket {
    fn add(&mut self, h: &Digest) {
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let x = u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let s = u128::from(*limb) + u128::from(x) + carry;
            *limb = s as u64;
            carry = s >> 64;
        }
        self.count += 1;
    }

    fn sub(&mut self, h: &Digest) {
        let mut borrow = 0i128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let x = u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let d = i128::from(*limb) - i128::from(x) - borrow;
            borrow = i128::from(d < 0);
            *limb = (d + (borrow << 64)) as u64;
        }
        self.count = self.count.saturating_sub(1);
    }

    /// The bucket's digest: the sum with the count folded in,
    /// `sum + count * G (mod 2^256)`, G a fixed odd constant. No hashing:
    /// the sum of 256-bit keyed BLAKE3 hashes already binds the set.
    fn digest(&self) -> Digest {
        let mut out = [0u8; 32];
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter().enumerate() {
            let g = COUNT_MIX[i];
            let m = u128::from(self.count) * u128::from(g);
            let s = u128::from(*limb) + (m & u128::from(u64::MAX)) + carry;
            out[i * 8..i * 8 + 8].copy_from_slice(&(s as u64).to_le_bytes());
            carry = (s >> 64) + (m >> 64);
        }
        out
    }
}

/// The odd constant that folds a bucket's count into its digest.
const COUNT_MIX: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xBF58_476D_1CE4_E5B9,
    0x94D0_49BB_1331_11EB,
    0x2545_F491_4F6C_DD1D,
];

/// Bucket ids are already uniformly random bits: hash them as they are.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = u64::from(i);
    }
}

/// A class with this many buckets in use keeps them in one array rather
/// than a map (smaller and faster once most buckets are in use).
const DENSE_FROM: usize = (BUCKETS / 4) as usize;

/// Entries sorted together while building.
const BUILD_RUN: usize = 1 << 16;

/// The buckets in use.
#[derive(Clone, Debug)]
enum Buckets {
    Sparse(HashMap<u32, Bucket, BuildHasherDefault<IdHasher>>),
    Dense(Vec<Bucket>),
}

impl Buckets {
    fn get(&self, bucket: u32) -> Option<&Bucket> {
        match self {
            Buckets::Sparse(m) => m.get(&bucket),
            Buckets::Dense(v) => v.get(bucket as usize).filter(|b| b.count > 0),
        }
    }

    fn get_or_insert(&mut self, bucket: u32) -> &mut Bucket {
        if let Buckets::Sparse(m) = self
            && m.len() >= DENSE_FROM
        {
            let mut v = vec![Bucket::default(); BUCKETS as usize];
            for (i, b) in m.drain() {
                v[i as usize] = b;
            }
            *self = Buckets::Dense(v);
        }
        match self {
            Buckets::Sparse(m) => m.entry(bucket).or_default(),
            Buckets::Dense(v) => &mut v[bucket as usize],
        }
    }

    fn remove(&mut self, bucket: u32) {
        match self {
            Buckets::Sparse(m) => {
                m.remove(&bucket);
            }
            Buckets::Dense(v) => v[bucket as usize] = Bucket::default(),
        }
    }

    fn counts(&self) -> Vec<(u32, u64)> {
        match self {
            Buckets::Sparse(m) => m.iter().map(|(i, b)| (*i, b.count)).collect(),
            Buckets::Dense(v) => v
                .iter()
                .enumerate()
                .filter(|(_, b)| b.count > 0)
                .map(|(i, b)| (i as u32, b.count))
                .collect(),
        }
    }
}

/// The Merkle tree of one class.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    buckets: Buckets,
    /// Per inner level (0..DEPTH): digests, counts, dirty flags.
    digests: Vec<Vec<Digest>>,
    counts: Vec<Vec<u64>>,
    dirty: Vec<Vec<bool>>,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree::new()
    }
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> MerkleTree {
        let sizes: Vec<usize> = (0..DEPTH).map(|l| 1usize << (FANOUT_BITS * l)).collect();
        MerkleTree {
            buckets: Buckets::Sparse(HashMap::default()),
            digests: sizes.iter().map(|n| vec![ZERO; *n]).collect(),
            counts: sizes.iter().map(|n| vec![0; *n]).collect(),
            dirty: sizes.iter().map(|n| vec![false; *n]).collect(),
        }
    }

    /// Replaces entry `old` by `new` (either may be absent) in `bucket`.
    pub fn update(&mut self, bucket: u32, old: Option<&Digest>, new: Option<&Digest>) {
        if old == new {
            return;
        }
        let b = self.buckets.get_or_insert(bucket);
        if let Some(o) = old {
            b.sub(o);
        }
        if let Some(n) = new {
            b.add(n);
        }
        let delta: i64 = i64::from(new.is_some()) - i64::from(old.is_some());
        if b.count == 0 {
            self.buckets.remove(bucket);
        }
        for level in 0..DEPTH {
            let i = ancestor(bucket, level) as usize;
            self.dirty[level as usize][i] = true;
            let c = &mut self.counts[level as usize][i];
            *c = c.saturating_add_signed(delta);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.counts[0][0]
    }

    /// Whether the tree holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries under a node.
    pub fn count(&self, node: NodeId) -> u64 {
        if node.level == DEPTH {
            self.buckets.get(node.index).map_or(0, |b| b.count)
        } else {
            self.counts[node.level as usize][node.index as usize]
        }
    }

    /// The digest of a node (recomputing dirty inner nodes).
    pub fn digest(&mut self, node: NodeId) -> Digest {
        if node.level == DEPTH {
            return self.buckets.get(node.index).map_or(ZERO, Bucket::digest);
        }
        let (l, i) = (node.level as usize, node.index as usize);
        if self.dirty[l][i] {
            let d = if self.counts[l][i] == 0 {
                ZERO
            } else {
                // Children enter with their first 16 bytes: half the
                // hashing, and still 2^-128 odds of a chance collision.
                let mut input = [0u8; FANOUT * 16];
                for c in 0..FANOUT {
                    input[c * 16..c * 16 + 16].copy_from_slice(&self.digest(node.child(c))[..16]);
                }
                *blake3::keyed_hash(&NODE_KEY, &input).as_bytes()
            };
            self.digests[l][i] = d;
            self.dirty[l][i] = false;
        }
        self.digests[l][i]
    }

    /// The root digest.
    pub fn root(&mut self) -> Digest {
        self.digest(NodeId::ROOT)
    }

    /// The fingerprints of a node's children, and their entry counts.
    pub fn children(&mut self, node: NodeId) -> Vec<(Fingerprint, u64)> {
        assert!(node.level < DEPTH, "buckets have no children");
        (0..FANOUT)
            .map(|c| {
                let child = node.child(c);
                (fingerprint(&self.digest(child)), self.count(child))
            })
            .collect()
    }

    /// Builds a tree from entries (bucket, entry hash) all at once.
    pub fn build(entries: impl IntoIterator<Item = (u32, Digest)>) -> MerkleTree {
        let entries = entries.into_iter();
        let mut t = MerkleTree::new();
        if entries.size_hint().0 >= DENSE_FROM {
            t.buckets = Buckets::Dense(vec![Bucket::default(); BUCKETS as usize]);
        }
        // Add in runs sorted by bucket: neighbouring buckets share cache
        // lines and the hardware prefetches ahead.
        let mut run: Vec<(u32, Digest)> = Vec::with_capacity(BUILD_RUN);
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            run.clear();
            run.extend(entries.by_ref().take(BUILD_RUN));
            run.sort_unstable_by_key(|(b, _)| *b);
            for (bucket, h) in &run {
                t.buckets.get_or_insert(*bucket).add(h);
            }
        }
        for (bucket, count) in t.buckets.counts() {
            for level in 0..DEPTH {
                let i = ancestor(bucket, level) as usize;
                t.counts[level as usize][i] += count;
                t.dirty[level as usize][i] = true;
            }
        }
        t.root();
        t
    }

    /// Approximate memory held (bytes).
    pub fn memory_bytes(&self) -> usize {
        let inner: usize = self.digests.iter().map(|l| l.len() * (32 + 8 + 1)).sum();
        inner
            + match &self.buckets {
                Buckets::Sparse(m) => m.capacity() * (std::mem::size_of::<(u32, Bucket)>() + 8),
                Buckets::Dense(v) => v.len() * std::mem::size_of::<Bucket>(),
            }
    }
}

/// Indices of the children that differ between two children lists.
pub fn differing(mine: &[(Fingerprint, u64)], theirs: &[(Fingerprint, u64)]) -> Vec<usize> {
    (0..FANOUT)
        .filter(|&i| mine.get(i).map(|m| m.0) != theirs.get(i).map(|t| t.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn state(v: u32) -> Vec<u8> {
        format!("state-{v}").into_bytes()
    }

    fn model_tree(model: &BTreeMap<String, u32>) -> MerkleTree {
        MerkleTree::build(
            model
                .iter()
                .map(|(k, v)| (bucket_of(k), entry_hash("c", k, &state(*v)))),
        )
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(u16, u32),
        Delete(u16),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0u16..400, 0u32..5).prop_map(|(k, v)| Step::Put(k, v)),
                1 => (0u16..400).prop_map(Step::Delete),
            ],
            0..300,
        )
    }

    fn apply(tree: &mut MerkleTree, model: &mut BTreeMap<String, u32>, step: &Step) {
        let (key, new) = match step {
            Step::Put(k, v) => (format!("key-{k}"), Some(*v)),
            Step::Delete(k) => (format!("key-{k}"), None),
        };
        let old = model.get(&key).copied();
        let h = |v: u32| entry_hash("c", &key, &state(v));
        tree.update(bucket_of(&key), old.map(h).as_ref(), new.map(h).as_ref());
        match new {
            Some(v) => model.insert(key, v),
            None => model.remove(&key),
        };
    }

    proptest! {
        /// After any sequence of writes and deletes, the incrementally
        /// maintained root equals the root built from scratch from a BTreeMap model.
        #[test]
        fn incremental_root_equals_root_from_scratch(steps in steps()) {
            let mut tree = MerkleTree::new();
            let mut model = BTreeMap::new();
            for (n, s) in steps.iter().enumerate() {
                apply(&mut tree, &mut model, s);
                if n % 37 == 0 {
                    prop_assert_eq!(tree.root(), model_tree(&model).root());
                }
            }
            prop_assert_eq!(tree.root(), model_tree(&model).root());
            prop_assert_eq!(tree.len(), model.len() as u64);
        }
    }

    #[test]
    fn sum_and_count_separate_sets_that_xor_would_not() {
        // XOR would cancel two equal hashes; the sum does not.
        let h = entry_hash("c", "k", b"x");
        let mut twice = Bucket::default();
        twice.add(&h);
        twice.add(&h);
        assert_ne!(twice.digest(), Bucket::default().digest());
        let mut back = twice;
        back.sub(&h);
        back.sub(&h);
        assert_eq!(back, Bucket::default());
    }

    #[test]
    fn node_ids_cover_their_buckets() {
        let n = NodeId::ROOT.child(3).child(7);
        let mut r = n.buckets();
        assert_eq!(r.end - r.start, 1 << (FANOUT_BITS * 2));
        assert!(r.all(|b| ancestor(b, 2) == n.index));
        assert_eq!(NodeId::ROOT.buckets(), 0..BUCKETS);
    }
}
