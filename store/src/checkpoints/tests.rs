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
        // The digest of no parameters.
        param_digest: hex::encode(Sha256::digest(b"")),
        manifest_sha256: String::new(),
    }
}

/// A safetensors file of f32 tensors `(name, shape, values)` with a metadata note (so that
/// empty shards of different steps differ).
fn safetensors(note: &str, tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "note": note }));
    let mut data = Vec::new();
    for (name, shape, v) in tensors {
        let at = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, data.len()]}),
        );
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
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
        let shard = safetensors(&format!("state of step {s}"), &[]);
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

/// A committed one-rank checkpoint of a real little state (`params/w` [2, 2], `ema/w` [2, 2])
/// at `step` under `root`; returns its folder.
fn real_checkpoint(root: &Location, step: u64, params: [f32; 4]) -> Location {
    use elf_shared::manifest::TensorEntry;
    let shard = safetensors(
        "",
        &[
            ("params/w", &[2, 2], &params),
            ("ema/w", &[2, 2], &[0.5; 4]),
        ],
    );
    let dir = root.join(&step_dir(step));
    dir.join("shard-00000-of-00001.safetensors")
        .put(shard.clone())
        .unwrap();
    let mut m = manifest(step, &shard);
    m.numel = 8;
    m.shards[0].len = 8;
    m.tensors = vec![
        TensorEntry {
            name: "params/w".into(),
            shape: vec![2, 2],
            offset: 0,
        },
        TensorEntry {
            name: "ema/w".into(),
            shape: vec![2, 2],
            offset: 4,
        },
    ];
    let bytes: Vec<u8> = params.iter().flat_map(|x| x.to_le_bytes()).collect();
    m.param_digest = hex::encode(Sha256::digest(&bytes));
    commit(root, &m).unwrap();
    dir
}

/// Edits the committed manifest of `dir` as JSON (the way a person with an editor would).
fn edit_manifest(dir: &Location, edit: impl Fn(&mut serde_json::Value)) {
    let loc = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&loc.read_all().unwrap()).unwrap();
    edit(&mut v);
    loc.put(serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_verified_checkpoint_passes_and_every_kind_of_damage_falls_back_naming_the_file() {
    let r = Location::parse("memory://verified").unwrap();
    real_checkpoint(&r, 1, [1.0, 2.0, 3.0, 4.0]);
    let d2 = real_checkpoint(&r, 2, [1.5, 2.0, 3.0, 4.0]);
    let m = read_manifest(&d2).unwrap();
    assert_eq!(m.format, 2);
    verify(&d2, &m).unwrap();
    let pristine = d2.join("manifest.json").read_all().unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let damage: Vec<(&str, Edit, &str)> = vec![
        (
            "one digit of a tensor offset",
            Box::new(|v| v["tensors"][1]["offset"] = 5.into()),
            "manifest_sha256",
        ),
        (
            "the step inside its folder",
            Box::new(|v| {
                v["step"] = 3.into();
                v["next_step"] = 4.into();
            }),
            "manifest_sha256",
        ),
        (
            "a numel of 10^15, hash recomputed",
            Box::new(|v| v["numel"] = 1_000_000_000_000_000u64.into()),
            "numel",
        ),
    ];
    for (what, edit, says) in damage {
        d2.join("manifest.json").put(pristine.clone()).unwrap();
        edit_manifest(&d2, |v| edit(v));
        if what.contains("recomputed") {
            // A careful forger recomputes the hash: the index checks still refuse it.
            let mut m: Manifest =
                serde_json::from_slice(&d2.join("manifest.json").read_all().unwrap()).unwrap();
            m.manifest_sha256 = m.own_hash();
            d2.join("manifest.json")
                .put(serde_json::to_vec(&m).unwrap())
                .unwrap();
        }
        let e = read_manifest(&d2).unwrap_err();
        assert!(e.is_damage(), "{what}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("memory://verified/step-000000002/manifest.json") && text.contains(says),
            "{what}: {text}"
        );
        assert_eq!(
            newest_valid(&r).unwrap().unwrap().1.step,
            1,
            "{what}: falls back to the previous valid step"
        );
    }
    // The step of a manifest copied into another step's folder.
    d2.join("manifest.json").put(pristine.clone()).unwrap();
    let d3 = r.join(&step_dir(3));
    d3.join("manifest.json").put(pristine.clone()).unwrap();
    let e = read_manifest(&d3).unwrap_err().to_string();
    assert!(e.contains("folder of step 3"), "{e}");
    d3.delete_all().unwrap();
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 2);
}

#[test]
fn a_non_finite_or_foreign_state_does_not_verify() {
    let r = Location::parse("memory://finite").unwrap();
    real_checkpoint(&r, 1, [1.0, 2.0, 3.0, 4.0]);
    let d = real_checkpoint(&r, 2, [1.0, f32::NAN, 3.0, 4.0]);
    let m = read_manifest(&d).unwrap();
    let e = verify(&d, &m).unwrap_err().to_string();
    assert!(
        e.contains("shard-00000-of-00001.safetensors")
            && e.contains("element 1 (tensor params/w) of step 2 is NaN"),
        "{e}"
    );
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 1);
    // Shards whose hashes match a manifest whose recorded digest is another state's.
    let d = real_checkpoint(&r, 3, [9.0, 2.0, 3.0, 4.0]);
    let mut m = read_manifest(&d).unwrap();
    m.param_digest = hex::encode(Sha256::digest(b"another state"));
    write_manifest(&r, &m).unwrap();
    let e = verify(&d, &read_manifest(&d).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("hash to") && e.contains("recorded"), "{e}");
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 1);
}

#[test]
fn a_commit_whose_shards_are_not_in_the_store_as_reported_writes_nothing() {
    let r = Location::parse("memory://reported").unwrap();
    real_checkpoint(&r, 1, [1.0, 2.0, 3.0, 4.0]);
    let d2 = r.join(&step_dir(2));
    let shard = safetensors("step 2", &[]);
    d2.join("shard-00000-of-00001.safetensors")
        .put(shard.clone())
        .unwrap();
    // A rank reports a size (and hash) of a file that is not what the store holds.
    let mut m = manifest(2, &shard);
    m.shards[0].size += 8;
    let e = commit(&r, &m).unwrap_err().to_string();
    assert!(
        e.contains("step-000000002/manifest.json") && e.contains("its rank reported"),
        "{e}"
    );
    // A shard that is not there at all.
    let mut m = manifest(3, &shard);
    m.shards[0].file = "shard-00000-of-00001.safetensors".into();
    assert!(commit(&r, &m).is_err());
    assert!(!d2.join("manifest.json").exists().unwrap());
    assert_eq!(latest(&r).unwrap(), Some(1));
    assert_eq!(retain(&r, 1).unwrap(), Vec::<u64>::new());
    assert_eq!(newest_valid(&r).unwrap().unwrap().1.step, 1);
}
