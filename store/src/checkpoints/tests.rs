//! Retention and discovery on `memory://` stores, including one whose requests fail for a
//! while: an uncertain answer must never delete a committed checkpoint or pick an older one.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use super::*;
use elf_shared::manifest::ShardEntry;

/// An in-memory store whose next read (`get`, `head`, `list`) after `pass` successful ones
/// fails once when armed: a store having a bad moment at any chosen request.
#[derive(Debug, Default)]
struct Flaky {
    inner: InMemory,
    armed: std::sync::atomic::AtomicBool,
    pass: AtomicUsize,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    /// Fails the request after the next `pass` ones.
    fn arm(&self, pass: usize) {
        self.pass.store(pass, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn fail(&self) -> Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let pass = self.pass.load(Ordering::SeqCst);
        if pass > 0 {
            self.pass.store(pass - 1, Ordering::SeqCst);
            return Ok(());
        }
        self.armed.store(false, Ordering::SeqCst);
        Err(object_store::Error::Generic {
            store: "Flaky",
            source: "503 slow down".into(),
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.fail()?;
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.fail()?;
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.fail()?;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, o).await
    }
}

fn manifest(step: u64, shard: &[u8]) -> Manifest {
    Manifest {
        format: 1,
        step,
        next_step: step + 1,
        optimizer_count: step + 1,
        config_hash: "h".into(),
        config_yaml: String::new(),
        world_size: 1,
        numel: 0,
        tensors: vec![],
        shards: vec![ShardEntry {
            file: "shard-00000-of-00001.safetensors".into(),
            sha256: hex::encode(Sha256::digest(shard)),
            size: shard.len() as u64,
            start: 0,
            len: 0,
        }],
        seed: 0,
        metrics: serde_json::Value::Null,
        eval: serde_json::Value::Null,
    }
}

/// A checkpoint root holding committed steps `committed` (in order, `latest` on the last) and
/// shard-only (uncommitted) folders `partial`, in `store` (`None`: the `memory://` store).
fn root(
    store: Option<Arc<dyn ObjectStore>>,
    name: &str,
    committed: &[u64],
    partial: &[u64],
) -> Location {
    let url = format!("memory://{name}");
    let root = match store {
        Some(s) => Location::in_store(s, name, &url),
        None => Location::parse(&url).unwrap(),
    };
    for &s in committed.iter().chain(partial) {
        let shard = format!("state of step {s}").into_bytes();
        let dir = root.join(&step_dir(s));
        dir.join("shard-00000-of-00001.safetensors")
            .put(shard.clone())
            .unwrap();
        if committed.contains(&s) {
            commit(&root, &manifest(s, &shard)).unwrap();
        }
    }
    root
}

#[test]
fn retention_keeps_the_newest_and_latest_and_drops_old_partials_only() {
    // 9 is a save still uploading (newer than every commit): it must stay.
    let r = root(None, "keep", &[1, 3, 5, 7], &[2, 9]);
    assert_eq!(retain(&r, 2).unwrap(), [1, 2, 3]);
    assert_eq!(list_steps(&r).unwrap(), [5, 7, 9]);
    assert_eq!(latest(&r).unwrap(), Some(7));
}

#[test]
fn retention_on_a_failing_store_deletes_nothing_committed() {
    let flaky = Arc::new(Flaky::default());
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let r = root(Some(store), "flaky", &[1, 2, 3, 4, 5], &[]);
    // Retention asks 7 questions (latest, the listing, 5 manifests) before deleting: a failure
    // at any of them must stop it with nothing deleted.
    for pass in 0..7 {
        flaky.arm(pass);
        let got = retain(&r, 2);
        flaky.armed.store(false, Ordering::SeqCst);
        assert!(
            got.is_err(),
            "retention went on past failed request {pass}: {got:?}"
        );
        assert_eq!(list_steps(&r).unwrap(), [1, 2, 3, 4, 5], "request {pass}");
    }
    // The store is back: retention does its job.
    assert_eq!(retain(&r, 2).unwrap(), [1, 2, 3]);
    assert_eq!(list_steps(&r).unwrap(), [4, 5]);
}

#[test]
fn a_store_error_while_finding_the_newest_checkpoint_is_an_error_not_an_older_step() {
    let flaky = Arc::new(Flaky::default());
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let r = root(Some(store), "newest", &[1, 2], &[]);
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 2);
    // Listing, step 2's manifest (head + get), its shard (head + get): a failure anywhere is an
    // error, never step 1.
    for pass in 0..5 {
        flaky.arm(pass);
        let got = newest_valid(&r);
        flaky.armed.store(false, Ordering::SeqCst);
        match got {
            Err(e) => assert!(e.to_string().contains("503 slow down"), "{e}"),
            Ok(found) => panic!(
                "request {pass} failed but discovery answered step {:?}",
                found.map(|(_, m)| m.step)
            ),
        }
    }
    // A damaged step (a certain answer) is skipped for the previous one.
    r.join(&step_dir(2))
        .join("shard-00000-of-00001.safetensors")
        .put(b"flipped".to_vec())
        .unwrap();
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 1);
}

#[test]
fn exists_and_latest_report_errors_instead_of_absence() {
    let flaky = Arc::new(Flaky::default());
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let r = root(Some(store), "honest", &[4], &[]);
    assert!(r.join("latest").exists().unwrap());
    assert!(!r.join("nothing").exists().unwrap());
    assert_eq!(latest(&r.join("nowhere")).unwrap(), None);
    flaky.arm(0);
    assert!(r.join("latest").exists().is_err());
    flaky.arm(0);
    assert!(latest(&r).is_err());
    flaky.arm(0);
    assert!(folder_at(&r).is_err());
    assert_eq!(
        folder_at(&r).unwrap().display(),
        "memory://honest/step-000000004"
    );
}

#[test]
fn a_malformed_latest_is_an_error_naming_it() {
    let r = root(None, "bad", &[1], &[]);
    r.join("latest").put(b"garbage".to_vec()).unwrap();
    let e = latest(&r).unwrap_err().to_string();
    assert!(
        e.contains("memory://bad/latest") && e.contains("garbage"),
        "{e}"
    );
}
