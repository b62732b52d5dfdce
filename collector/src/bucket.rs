//! Tables in a bucket of an S3-compatible object store: the same layout
//! as in a folder (`<prefix>/<table>/region=<r>/date=<d>/hour=<h>/*.parquet`),
//! written with single PUTs (a reader sees a whole file or none).
//!
//! A bucket has no atomic rename, so compaction publishes the way the
//! folder's directory swap cannot be copied: it writes a marker
//! `_replaced-<new file>.json` naming the files the new one replaces, then
//! the new file, then deletes the replaced files and the marker. A listing
//! through [`Replaced`] (the web app's, and the collector's own) hides
//! every file a marker names once the marker's new file exists, so at
//! every step a reader sees the old files or the new one, never both or
//! neither. A marker whose new file never appeared (a crash before its
//! PUT) hides nothing and is removed by the next maintenance pass, which
//! also finishes the deletes of one that crashed after.

use std::collections::BTreeSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parallax_core::config::S3Config;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::Error;
use crate::files::{self, FileOptions};

/// Marker names: `_replaced-<new file's name>.json`.
const MARKER: &str = "_replaced-";

fn io(what: &str, at: &str, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("cannot {what} {at}: {e}"))
}

/// The key of a path under the bucket (`requests/region=x/...`).
fn key(p: &FsPath) -> Path {
    Path::from(p.to_string_lossy().as_ref())
}

/// A bucket the tables live in, with a runtime of its own for the
/// collector's blocking threads to wait on.
pub struct Bucket {
    url: String,
    bucket: String,
    prefix: String,
    store: Arc<dyn ObjectStore>,
    io: Io,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

impl Bucket {
    /// The bucket `s3://<bucket>/<prefix>`, reached as `s3` says (fields
    /// left out come from the AWS environment variables).
    pub fn open(bucket: &str, prefix: &str, s3: &S3Config) -> Result<Bucket, Error> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &s3.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            b = b.with_region(region);
        }
        if s3.allow_http {
            b = b.with_allow_http(true);
        }
        if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let url = format!("s3://{bucket}/{prefix}");
        let store = b.build().map_err(|e| {
            Error::Io(format!(
                "cannot open {url}: {e}. Fix: check [collector.s3] and the AWS_* environment variables"
            ))
        })?;
        Ok(Bucket {
            url,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            store: Arc::new(store),
            io: Io::new()?,
        })
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `s3://<bucket>`: the URL the store is registered under for queries.
    pub fn store_url(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// The root every table's path starts from: the prefix.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(&self.prefix)
    }

    /// The store as readers must see it: replaced files hidden.
    pub fn reader(&self) -> Arc<dyn ObjectStore> {
        Arc::new(Replaced(Arc::clone(&self.store)))
    }

    /// Writes a batch (sorted by `ts`) as a new file in `dir`, in one PUT.
    pub fn write_file(
        &self,
        dir: &FsPath,
        batch: &RecordBatch,
        first_ts_us: u64,
        opts: &FileOptions,
    ) -> Result<(PathBuf, u64), Error> {
        let path = dir.join(files::file_name(first_ts_us));
        let bytes = files::encode(batch, opts).map_err(|e| io("encode", &self.at(&path), e))?;
        let size = bytes.len() as u64;
        let (store, k) = (Arc::clone(&self.store), key(&path));
        self.io
            .run(async move { store.put(&k, PutPayload::from(bytes)).await })
            .map_err(|e| io("write", &self.at(&path), e))?;
        Ok((path, size))
    }

    /// The finished Parquet files of `dir`, replaced ones left out. A
    /// compaction a crash interrupted is finished (or undone) on the way.
    pub fn parquet_files(&self, dir: &FsPath) -> Result<Vec<PathBuf>, Error> {
        let listed = self.list(dir)?;
        let markers = listed.objects.iter().any(|o| is_marker(&o.location));
        let files = visible(&self.store, &self.io, listed.objects.clone())?;
        if markers {
            self.recover(dir, &listed.objects)?;
        }
        let mut out: Vec<PathBuf> = files
            .into_iter()
            .filter(|o| is_parquet(&o.location))
            .map(|o| PathBuf::from(o.location.as_ref()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Reads every row of some files.
    pub fn read_files(&self, paths: &[PathBuf]) -> Result<Vec<RecordBatch>, Error> {
        let mut out = Vec::new();
        for p in paths {
            let (store, k) = (Arc::clone(&self.store), key(p));
            let bytes = self
                .io
                .run(async move { store.get(&k).await?.bytes().await })
                .map_err(|e| io("read", &self.at(p), e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| io("read", &self.at(p), e))?;
            for batch in reader {
                out.push(batch.map_err(|e| io("read", &self.at(p), e))?);
            }
        }
        Ok(out)
    }

    /// Sub-"directories" of `dir` named `<key>=<value>`, as (value, path).
    pub fn partitions(&self, dir: &FsPath, name: &str) -> Result<Vec<(String, PathBuf)>, Error> {
        let prefix = format!("{name}=");
        let mut out: Vec<(String, PathBuf)> = self
            .list(dir)?
            .common_prefixes
            .into_iter()
            .filter_map(|p| {
                let value = p.filename()?.strip_prefix(&prefix)?.to_owned();
                Some((value, PathBuf::from(p.as_ref())))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Whether anything is stored under `dir`.
    pub fn exists(&self, dir: &FsPath) -> Result<bool, Error> {
        let l = self.list(dir)?;
        Ok(!l.objects.is_empty() || !l.common_prefixes.is_empty())
    }

    /// Makes `batch` the only file of the partition `dir`, replacing what
    /// it holds now (see the module's description).
    pub fn swap_in(
        &self,
        dir: &FsPath,
        batch: &RecordBatch,
        opts: &FileOptions,
    ) -> Result<(), Error> {
        let old = self.parquet_files(dir)?;
        let first_ts = files::first_ts(batch);
        let name = files::file_name(first_ts);
        let bytes = files::encode(batch, opts).map_err(|e| io("encode", &self.at(dir), e))?;
        let names: Vec<String> = old
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let marker = key(&dir.join(format!("{MARKER}{name}.json")));
        let new = key(&dir.join(&name));
        let manifest = serde_json::to_vec(&names).expect("names serialise");
        let store = Arc::clone(&self.store);
        let doomed: Vec<Path> = old.iter().map(|p| key(p)).collect();
        self.io
            .run(async move {
                store.put(&marker, PutPayload::from(manifest)).await?;
                store.put(&new, PutPayload::from(bytes)).await?;
                for d in &doomed {
                    store.delete(d).await?;
                }
                store.delete(&marker).await
            })
            .map_err(|e| io("swap in the new file for", &self.at(dir), e))
    }

    /// Deletes everything under `dir`.
    pub fn remove(&self, dir: &FsPath) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        let prefix = key(dir);
        self.io
            .run(async move {
                let all: Vec<Path> = store
                    .list(Some(&prefix))
                    .map_ok(|o| o.location)
                    .try_collect()
                    .await?;
                for p in &all {
                    store.delete(p).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| io("remove", &self.at(dir), e))
    }

    /// Finishes what a crash left in `dir` (as `listed`): for every marker,
    /// deletes the files it replaced if its new file exists, then the marker.
    fn recover(&self, dir: &FsPath, listed: &[ObjectMeta]) -> Result<(), Error> {
        let present: BTreeSet<String> = names(listed);
        for m in listed.iter().filter(|o| is_marker(&o.location)) {
            let replaced = if present.contains(new_of(&m.location)) {
                read_marker(&self.store, &self.io, &m.location)?
            } else {
                Vec::new()
            };
            let store = Arc::clone(&self.store);
            let marker = m.location.clone();
            let doomed: Vec<Path> = replaced
                .iter()
                .filter(|n| present.contains(n.as_str()))
                .map(|n| key(&dir.join(n)))
                .collect();
            self.io
                .run(async move {
                    for d in &doomed {
                        store.delete(d).await?;
                    }
                    store.delete(&marker).await
                })
                .map_err(|e| io("finish the compaction of", &self.at(dir), e))?;
        }
        Ok(())
    }

    fn list(&self, dir: &FsPath) -> Result<ListResult, Error> {
        let (store, k) = (Arc::clone(&self.store), key(dir));
        self.io
            .run(async move { store.list_with_delimiter(Some(&k)).await })
            .map_err(|e| io("list", &self.at(dir), e))
    }

    fn at(&self, p: &FsPath) -> String {
        format!("s3://{}/{}", self.bucket, p.display())
    }
}

/// Where `config` puts the tables: their root (a folder, or the key
/// prefix in the bucket) and the bucket if they are in one.
pub fn locate(
    config: &parallax_core::config::CollectorConfig,
    data_dir: &FsPath,
) -> Result<(PathBuf, Option<Arc<Bucket>>), Error> {
    use parallax_core::config::TablesAt;
    match config
        .tables_at(data_dir)
        .map_err(|e| Error::Io(e.to_string()))?
    {
        TablesAt::Dir(dir) => Ok((dir, None)),
        TablesAt::Bucket { bucket, prefix } => {
            let b = Bucket::open(&bucket, &prefix, &config.s3)?;
            Ok((b.root(), Some(Arc::new(b))))
        }
    }
}

fn is_parquet(p: &Path) -> bool {
    p.filename()
        .is_some_and(|n| n.ends_with(".parquet") && !n.starts_with('.'))
}

fn is_marker(p: &Path) -> bool {
    p.filename()
        .is_some_and(|n| n.starts_with(MARKER) && n.ends_with(".json"))
}

/// The new file's name a marker names.
fn new_of(marker: &Path) -> &str {
    let n = marker.filename().unwrap_or_default();
    n.strip_prefix(MARKER)
        .and_then(|n| n.strip_suffix(".json"))
        .unwrap_or_default()
}

fn names(objects: &[ObjectMeta]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_owned))
        .collect()
}

fn read_marker(store: &Arc<dyn ObjectStore>, io: &Io, marker: &Path) -> Result<Vec<String>, Error> {
    let (store, m) = (Arc::clone(store), marker.clone());
    let bytes = io
        .run(async move { store.get(&m).await?.bytes().await })
        .map_err(|e| Error::Io(format!("cannot read {marker}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Io(format!("cannot read {marker}: {e}")))
}

/// What a listing of one directory's objects shows a reader: the files a
/// marker names hidden once the marker's new file is there.
fn visible(
    store: &Arc<dyn ObjectStore>,
    io: &Io,
    objects: Vec<ObjectMeta>,
) -> Result<Vec<ObjectMeta>, Error> {
    if !objects.iter().any(|o| is_marker(&o.location)) {
        return Ok(objects);
    }
    let present = names(&objects);
    let mut hidden = BTreeSet::new();
    for m in objects.iter().filter(|o| is_marker(&o.location)) {
        if present.contains(new_of(&m.location)) {
            hidden.extend(read_marker(store, io, &m.location)?);
        }
    }
    Ok(objects
        .into_iter()
        .filter(|o| !o.location.filename().is_some_and(|n| hidden.contains(n)))
        .collect())
}

/// An object store whose listings hide the files a compaction replaced
/// (see the module's description); everything else passes through.
#[derive(Debug)]
pub struct Replaced(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replaced({})", self.0)
    }
}

impl Replaced {
    /// `objects` (of any directories) with each directory's replaced files hidden.
    async fn filter(&self, objects: Vec<ObjectMeta>) -> object_store::Result<Vec<ObjectMeta>> {
        let mut hidden: BTreeSet<Path> = BTreeSet::new();
        let present: BTreeSet<&Path> = objects.iter().map(|o| &o.location).collect();
        for m in objects.iter().filter(|o| is_marker(&o.location)) {
            let dir: Path = m
                .location
                .parts()
                .take(m.location.parts().count() - 1)
                .collect();
            if !present.contains(&dir.clone().join(new_of(&m.location))) {
                continue;
            }
            let bytes = self.0.get(&m.location).await?.bytes().await?;
            let names: Vec<String> =
                serde_json::from_slice(&bytes).map_err(|e| object_store::Error::Generic {
                    store: "parallax",
                    source: Box::new(e),
                })?;
            hidden.extend(names.iter().map(|n| dir.clone().join(n.as_str())));
        }
        Ok(objects
            .into_iter()
            .filter(|o| !hidden.contains(&o.location))
            .collect())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Replaced {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let me = Replaced(Arc::clone(&self.0));
        let all = self.0.list(prefix);
        let listed = async move {
            let objects: Vec<ObjectMeta> = all.try_collect().await?;
            let shown = me.filter(objects).await?;
            Ok::<_, object_store::Error>(futures::stream::iter(shown.into_iter().map(Ok)))
        };
        Box::pin(futures::stream::once(listed).try_flatten())
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut l = self.0.list_with_delimiter(prefix).await?;
        l.objects = self.filter(l.objects).await?;
        Ok(l)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// A runtime of the bucket's own: the collector's writers are blocking
/// threads, which wait here for the store's futures.
struct Io(Option<tokio::runtime::Runtime>);

impl Io {
    fn new() -> Result<Io, Error> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("parallax-bucket")
            .enable_all()
            .build()
            .map(|rt| Io(Some(rt)))
            .map_err(|e| Error::Io(format!("cannot start the bucket's I/O thread: {e}")))
    }

    /// Runs `f` on the bucket's runtime and waits for it (from any thread).
    fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.0
            .as_ref()
            .expect("runtime until drop")
            .spawn(async move {
                let _ = tx.send(f.await);
            });
        rx.recv().expect("the bucket's I/O thread answers")
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn a_listing_shows_the_old_files_or_the_new_one_at_every_step_of_a_swap() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = Replaced(Arc::clone(&inner));
        let dir = Path::from("t/region=a/date=2026-12-04/hour=1");
        let put = |name: &str, body: Vec<u8>| {
            let (s, p) = (Arc::clone(&inner), dir.clone().join(name));
            async move { s.put(&p, PutPayload::from(body)).await.unwrap() }
        };
        let del = |name: &str| {
            let (s, p) = (Arc::clone(&inner), dir.clone().join(name));
            async move { s.delete(&p).await.unwrap() }
        };
        let shown = || async {
            let mut a: Vec<String> = store
                .list_with_delimiter(Some(&dir))
                .await
                .unwrap()
                .objects
                .into_iter()
                .filter(|o| is_parquet(&o.location))
                .map(|o| o.location.filename().unwrap().to_owned())
                .collect();
            let mut b: Vec<String> = store
                .list(Some(&Path::from("t")))
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .into_iter()
                .filter(|o| is_parquet(&o.location))
                .map(|o| o.location.filename().unwrap().to_owned())
                .collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "both listings agree");
            a
        };
        let old = vec!["1-1-1.parquet".to_owned(), "2-1-2.parquet".to_owned()];
        put(&old[0], vec![1]).await;
        put(&old[1], vec![2]).await;
        assert_eq!(shown().await, old);
        put(
            "_replaced-1-1-9.parquet.json",
            serde_json::to_vec(&old).unwrap(),
        )
        .await;
        assert_eq!(
            shown().await,
            old,
            "a marker without its file hides nothing"
        );
        put("1-1-9.parquet", vec![3]).await;
        assert_eq!(
            shown().await,
            ["1-1-9.parquet"],
            "the new file replaces the old"
        );
        del(&old[0]).await;
        assert_eq!(shown().await, ["1-1-9.parquet"]);
        del(&old[1]).await;
        del("_replaced-1-1-9.parquet.json").await;
        assert_eq!(shown().await, ["1-1-9.parquet"]);
        // A late file after the swap is not named by the marker.
        put(
            "_replaced-1-1-9.parquet.json",
            serde_json::to_vec(&old).unwrap(),
        )
        .await;
        put("3-1-10.parquet", vec![4]).await;
        assert_eq!(shown().await, ["1-1-9.parquet", "3-1-10.parquet"]);
    }
}
