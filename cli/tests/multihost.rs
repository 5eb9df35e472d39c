//! Several hosts on one machine: a coordinator, workers and an S3 endpoint (moto), each in its
//! own network namespace with its own address and its own private directory (the others'
//! directories are hidden from it), joined by one bridge (`elf_e2e::netns`). Object storage is
//! the only medium they share; the workers run with the flags `deploy/` gives them
//! (`--collective 0.0.0.0:7000`, `POD_IP`, a fixed `--worker-id`). Traffic goes only to the
//! namespaces the test made.

use std::time::{Duration, Instant};

use elf_e2e::{Elf, FT, Net, Proc, T, assert_same_run, lines, repo_root, serial};

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

const BUCKET_DATA: &str = "s3://elf-test/data/train.jsonl";

/// The S3 endpoint on host `s3`, with the tiny corpus uploaded.
struct Store {
    _server: std::process::Child,
    endpoint: String,
}

impl Store {
    fn start(net: &Net) -> Self {
        use std::io::BufRead;
        let h = net.host("s3");
        let script = repo_root().join("e2e/fixtures/s3_server.py");
        let mut server = h
            .command("python3")
            .arg(&script)
            .args(["9000", &h.addr().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto");
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "9000", "moto did not start: {line:?}");
        let store = Self {
            _server: server,
            endpoint: format!("http://{}:9000", h.addr()),
        };
        let data = repo_root().join("data/text/train.jsonl");
        store.copy(net, "put", &data.display().to_string(), BUCKET_DATA);
        store
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Runs the copy script on host `s3` (`put FILE URL` or `get URL DIR`).
    fn copy(&self, net: &Net, verb: &str, a: &str, b: &str) {
        let script = repo_root().join("e2e/fixtures/s3_copy.py");
        let o = net
            .host("s3")
            .command("python3")
            .arg(&script)
            .args([&self.endpoint, verb, a, b])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Downloads everything under `url` into a local folder.
    fn fetch(&self, net: &Net, url: &str, into: &std::path::Path) {
        // Host `s3` writes into its own directory; the test then moves it out.
        let staging = net.host("s3").dir().join("fetch");
        let _ = std::fs::remove_dir_all(&staging);
        self.copy(net, "get", url, &staging.display().to_string());
        let _ = std::fs::remove_dir_all(into);
        std::fs::rename(&staging, into).unwrap();
    }
}

/// The run's credentials as `deploy/` mounts them (Secrets): a CA, the coordinator's server
/// certificate for its address, and a join token; outside every host's private directory.
struct Creds {
    _dir: tempfile::TempDir,
    server: String,
    client: String,
    token: String,
}

impl Creds {
    fn new(coordinator_ip: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![coordinator_ip.to_string()])
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        let (server, client) = (dir.path().join("server"), dir.path().join("client"));
        for d in [&server, &client] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("ca.crt"), &ca_pem).unwrap();
        }
        std::fs::write(server.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(server.join("tls.key"), key.serialize_pem()).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a join token made by the test\n").unwrap();
        let s = |p: &std::path::Path| p.display().to_string();
        Self {
            server: s(&server),
            client: s(&client),
            token: s(&token),
            _dir: dir,
        }
    }

    /// The flags of a process (`server`: the coordinator's).
    fn flags(&self, server: bool) -> Vec<String> {
        let tls = if server { &self.server } else { &self.client };
        [
            "--security",
            "token",
            "--token-file",
            &self.token,
            "--tls-dir",
            tls,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// `elf coordinator` on `host`, with the run on S3 and its cache in `cache`; `security`:
/// its flags (default `--insecure`).
fn coordinator(
    net: &Net,
    store: &Store,
    host: &str,
    run: &str,
    cache: &str,
    extra: &[&str],
    security: Option<&Creds>,
) -> Proc {
    let mut c = net.host(host).command(ELF.0);
    c.args(["coordinator", "--config", &ELF.tiny(), "--run", run])
        .args(["--cache-dir", cache])
        .args(["--listen", "0.0.0.0:50051", "--http", "0.0.0.0:8080"])
        .args(security.map_or_else(|| vec!["--insecure".to_string()], |c| c.flags(true)))
        .args(["--set", &format!("data_path={BUCKET_DATA}")])
        .args(extra)
        .envs(store.env());
    Proc::start(&format!("coordinator@{host}"), c)
}

/// `elf worker` on `host` as `deploy/` starts it.
fn worker(
    net: &Net,
    store: &Store,
    host: &str,
    id: &str,
    coordinator: &str,
    security: Option<&Creds>,
) -> Proc {
    let h = net.host(host);
    let mut c = h.command(ELF.0);
    c.args(["worker", "--coordinator", coordinator, "--worker-id", id])
        .args(["--collective", "0.0.0.0:7000", "--http", "0.0.0.0:8081"])
        .args(security.map_or_else(|| vec!["--insecure".to_string()], |c| c.flags(false)))
        .args(["--threads", "1", "--connect-timeout-s", "60"])
        .args(["--reconnect-timeout-s", "120"])
        .env("POD_IP", h.addr().to_string())
        .env("ELF_FAILPOINT_STEP_DELAY_MS", "150")
        .envs(store.env());
    Proc::start(&format!("{id}@{host}"), c)
}

/// The TCP ports `host` listens on beyond loopback (from `ss`, inside its namespace).
fn open_ports(net: &Net, host: &str) -> Vec<u16> {
    let out = net.host(host).sh("ss -ltnH").unwrap();
    let mut ports: Vec<u16> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| !a.starts_with("127.") && !a.starts_with("[::1]"))
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn wait_step(p: &mut Proc, at_least: u64) -> u64 {
    loop {
        let s = p.wait_next("step", T)["step"].as_u64().unwrap();
        if s >= at_least {
            return s;
        }
    }
}

#[test]
fn a_run_across_hosts_survives_a_cut_link_a_replaced_worker_and_a_moved_coordinator() {
    let _serial = serial();
    let Some(net) = Net::for_test(&["s3", "coord", "w0", "w1", "w2", "w1new"]) else {
        return;
    };
    let steps = 40u64;
    let max = format!("train.max_steps={steps}");
    let mut args: Vec<&str> = FT.to_vec();
    args.extend(["--set", &max, "--set", "checkpoint.interval_steps=4"]);
    args.extend(["--set", "eval.at_end=true", "--set", "eval.num_samples=2"]);
    // The same run, uninterrupted, on loopback, for the final comparison.
    let reference = tempfile::tempdir().unwrap();
    ELF.cluster(reference.path(), 1, steps, &args).finish();
    args.extend(["--workers", "3"]);

    let store = Store::start(&net);
    let run = "s3://elf-test/runs/multihost";
    // Token over TLS, as deploy/'s base: the coordinator's certificate names its address.
    let creds = Creds::new(&net.host("coord").addr().to_string());
    let sec = Some(&creds);
    let url = format!("https://{}:50051", net.host("coord").addr());
    let cache1 = net
        .host("coord")
        .dir()
        .join("cache-1")
        .display()
        .to_string();
    let mut coord = coordinator(&net, &store, "coord", run, &cache1, &args, sec);
    coord.wait_event("ready", T);
    let mut workers: Vec<Proc> = ["w0", "w1", "w2"]
        .iter()
        .map(|h| worker(&net, &store, h, h, &url, sec))
        .collect();

    wait_step(&mut coord, 4);
    // Nothing listens beyond loopback but the authenticated ones (gRPC: TLS and the join
    // token, refused without them in security.rs; the ring: the quorum key) and the read-only
    // HTTP endpoints (probes, /metrics, /status).
    assert_eq!(open_ports(&net, "coord"), [8080, 50051], "coordinator");
    for h in ["w0", "w1", "w2"] {
        assert_eq!(open_ports(&net, h), [7000, 8081], "worker {h}");
    }
    // w2's link goes down: the survivors commit within the heartbeat timeout plus 10 s.
    net.link_down("w2").unwrap();
    let cut = Instant::now();
    let at_cut = coord.wait_next("step", T)["step"].as_u64().unwrap();
    wait_step(&mut coord, at_cut + 2);
    assert!(
        cut.elapsed() < Duration::from_secs(3 + 10),
        "the survivors took {:?}\n{}",
        cut.elapsed(),
        coord.logs()
    );
    // It comes back and rejoins as a standby by itself.
    net.link_up("w2").unwrap();
    let joined = coord.wait_next("joined", T);
    assert_eq!(joined["worker_id"], "w2", "{joined}");

    // w1's process is lost; a replacement with the same id starts on a fresh host.
    workers[1].kill();
    let mut replacement = worker(&net, &store, "w1new", "w1", &url, sec);
    let joined = coord.wait_next("joined", T);
    assert_eq!(joined["worker_id"], "w1", "{joined}");

    // The coordinator is killed after a checkpoint and restarted with an empty cache: it
    // resumes from the store, and the workers reconnect.
    coord.wait_next("checkpoint", T);
    coord.kill();
    let cache2 = net
        .host("coord")
        .dir()
        .join("cache-2")
        .display()
        .to_string();
    std::fs::remove_dir_all(&cache1).unwrap();
    let mut coord = coordinator(&net, &store, "coord", run, &cache2, &args, sec);
    let ready = coord.wait_event("ready", T);
    assert!(ready["start_step"].as_u64().unwrap() > 0, "{ready}");
    for w in workers.iter_mut().chain([&mut replacement]) {
        if w.name.starts_with("w1@w1") {
            continue; // the killed one
        }
        let s = w.wait_exit(T);
        assert!(
            s.success(),
            "{} failed\n{}\n{}",
            w.name,
            w.logs(),
            coord.logs()
        );
    }
    coord.expect_success(T);

    // Everything is in the run URL, and no host's own disk holds the run.
    let got = tempfile::tempdir().unwrap();
    let out = got.path().join("run");
    store.fetch(&net, run, &out);
    for f in [
        "final.safetensors",
        "final-ema.safetensors",
        "samples.txt",
        "config.yaml",
        "metrics/train.jsonl",
        "checkpoints/latest",
    ] {
        assert!(out.join(f).exists(), "{f} is not in the run URL");
    }
    let evals: Vec<_> = std::fs::read_dir(out.join("eval")).unwrap().collect();
    assert!(!evals.is_empty(), "no eval generations in the run URL");
    for h in ["w0", "w1", "w2", "w1new"] {
        let left: Vec<_> = std::fs::read_dir(net.host(h).dir()).unwrap().collect();
        assert!(left.is_empty(), "host {h} wrote to its own disk: {left:?}");
    }
    let train = lines(&out.join("metrics/train.jsonl"));
    assert_eq!(
        train.len() as u64,
        steps,
        "every step, once, across coordinators"
    );
    // Within the tolerance of assert_same_run: losses 1e-5 relative, parameters 1e-4 of the
    // largest magnitude (world sizes 3, 2 and 1 sum the gradients in other orders).
    assert_same_run(&out, reference.path(), "multi-host run");
}

#[test]
fn misconfigured_hosts_fail_fast_with_one_clear_error() {
    let _serial = serial();
    let Some(net) = Net::for_test(&["s3", "coord", "w0"]) else {
        return;
    };
    let store = Store::start(&net);
    let url = format!("http://{}:50051", net.host("coord").addr());
    let cache = net.host("coord").dir().join("cache").display().to_string();
    let one = ["--workers", "1", "--set", "train.max_steps=4"];
    let expect_refusal = |coord: &mut Proc, w: &mut Proc, what: &str, wants: &str| {
        let s = w.wait_exit(T);
        assert_eq!(s.code(), Some(3), "{what}: worker\n{}", w.logs());
        assert!(w.logs().contains(wants), "{what}: {}", w.logs());
        let s = coord.wait_exit(T);
        assert_eq!(s.code(), Some(3), "{what}: coordinator\n{}", coord.logs());
        assert!(coord.logs().contains(wants), "{what}: {}", coord.logs());
    };

    // A run location on the coordinator's own disk.
    let local_run = net.host("coord").dir().join("run").display().to_string();
    let mut c = coordinator(&net, &store, "coord", &local_run, &cache, &one, None);
    c.wait_event("ready", T);
    let mut w = worker(&net, &store, "w0", "w0", &url, None);
    expect_refusal(&mut c, &mut w, "local run", "the run location");

    // A data path on the coordinator's own disk.
    let data = net.host("coord").dir().join("train.jsonl");
    std::fs::copy(repo_root().join("data/text/train.jsonl"), &data).unwrap();
    let set_data = format!("data_path={}", data.display());
    let mut args = one.to_vec();
    args.extend(["--set", &set_data]);
    let mut c = coordinator(
        &net,
        &store,
        "coord",
        "s3://elf-test/runs/bad-data",
        &cache,
        &args,
        None,
    );
    c.wait_event("ready", T);
    let mut w = worker(&net, &store, "w0", "w0", &url, None);
    expect_refusal(&mut c, &mut w, "local data", "data_path");

    // No reachable checkpoint URL.
    let ckpt = format!(
        "checkpoint.url={}",
        net.host("coord").dir().join("ckpt").display()
    );
    let mut args = one.to_vec();
    args.extend(["--set", &ckpt]);
    let mut c = coordinator(
        &net,
        &store,
        "coord",
        "s3://elf-test/runs/bad-ckpt",
        &cache,
        &args,
        None,
    );
    c.wait_event("ready", T);
    let mut w = worker(&net, &store, "w0", "w0", &url, None);
    expect_refusal(&mut c, &mut w, "local checkpoints", "checkpoint.url");

    // Loopback and unspecified advertise addresses are refused at registration.
    let mut c = coordinator(
        &net,
        &store,
        "coord",
        "s3://elf-test/runs/bad-addr",
        &cache,
        &one,
        None,
    );
    c.wait_event("ready", T);
    for (collective, pod_ip) in [("127.0.0.1:7000", true), ("0.0.0.0:7000", false)] {
        let h = net.host("w0");
        let mut cmd = h.command(ELF.0);
        cmd.args(["worker", "--coordinator", &url, "--worker-id", "w0"])
            .args(["--collective", collective, "--insecure"])
            .envs(store.env());
        if pod_ip {
            cmd.env("POD_IP", h.addr().to_string());
        }
        let mut w = Proc::start("w0", cmd);
        let s = w.wait_exit(T);
        assert_eq!(s.code(), Some(3), "{collective}: {}", w.logs());
        assert!(
            w.logs().contains("--advertise"),
            "{collective}: {}",
            w.logs()
        );
    }
    c.kill();
}

/// `elf bench allreduce --hosts`: the ring across capped links runs and prints its ratio
/// against the link rate measured in the same run (the figure itself is in BENCHMARKS.md).
#[test]
fn the_allreduce_bench_runs_across_hosts_with_capped_links() {
    let _serial = serial();
    if std::env::var("ELF_SKIP_NETNS").is_ok_and(|v| v == "1") && Net::unavailable().is_some() {
        return;
    }
    let o = std::process::Command::new(ELF.0)
        .args(["bench", "allreduce", "--hosts", "2", "--link-gbit", "1"])
        .args(["--mib", "8", "--reps", "1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("ratio ring/link = "), "{out}");
}
