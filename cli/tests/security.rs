//! The authenticated control plane, with certificates made here (`rcgen`): mutual TLS with
//! roles from the client certificate, a join token over TLS, and the refusal to listen beyond
//! loopback without either.

use std::path::Path;

use elf_e2e::{Elf, Proc, T, serial};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

const ELF: Elf = Elf(env!("CARGO_BIN_EXE_elf"));

/// A CA and the certificates it signs, written as `--tls-dir` folders.
struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca_pem = p.self_signed(&key).unwrap().pem();
        Self {
            ca_params: p,
            ca_key: key,
            ca_pem,
        }
    }

    /// Writes `dir/{ca.crt,tls.crt,tls.key}`: a certificate for `names` with subject OU `ou`
    /// (none: `""`), expired when `expired`.
    fn issue(&self, dir: &Path, ou: &str, expired: bool, trust: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "elf");
        if !ou.is_empty() {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        if expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), trust).unwrap();
    }
}

fn coordinator(dir: &Path, security: &[&str]) -> (Proc, String) {
    let mut args = vec!["--workers", "1", "--set", "train.max_steps=3"];
    args.extend_from_slice(security);
    let mut c = ELF.coordinator("coordinator", dir, &args, &[]);
    let ready = c.wait_event("ready", T);
    let addr = ready["addr"].as_str().unwrap().to_string();
    (c, format!("https://{addr}"))
}

fn worker(url: &str, id: &str, role: &str, security: &[&str]) -> Proc {
    let mut args = vec!["--role", role, "--connect-timeout-s", "3"];
    args.extend_from_slice(security);
    ELF.worker_with(id, url, id, &args, &[("RAYON_NUM_THREADS", "1")])
}

/// Expects `w` to exit non-zero with `wants` in its log, never admitted by `c`.
fn refused(w: &mut Proc, c: &Proc, wants: &str, what: &str) {
    let s = w.wait_exit(T);
    assert!(!s.success(), "{what}: admitted\n{}", w.logs());
    assert!(
        w.logs().contains(wants),
        "{what}: {}\n{}",
        w.logs(),
        c.logs()
    );
    assert!(
        !c.logs()
            .contains(&format!("worker registered worker_id={}", w.name)),
        "{what}: registered\n{}",
        c.logs()
    );
}

#[test]
fn mutual_tls_admits_a_worker_with_a_valid_certificate_of_its_role_and_nothing_else() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (pki, other) = (Pki::new("run CA"), Pki::new("another CA"));
    let d = |n: &str| tmp.path().join(n).display().to_string();
    pki.issue(&tmp.path().join("server"), "", false, &pki.ca_pem);
    pki.issue(&tmp.path().join("train"), "train", false, &pki.ca_pem);
    pki.issue(&tmp.path().join("eval"), "eval", false, &pki.ca_pem);
    pki.issue(&tmp.path().join("expired"), "train", true, &pki.ca_pem);
    other.issue(&tmp.path().join("foreign"), "train", false, &pki.ca_pem);
    std::fs::create_dir_all(tmp.path().join("nocert")).unwrap();
    std::fs::write(tmp.path().join("nocert/ca.crt"), &pki.ca_pem).unwrap();
    let run = tmp.path().join("run");
    let server = d("server");
    let (mut c, url) = coordinator(&run, &["--security", "mtls", "--tls-dir", &server]);

    let mtls = |dir: &str| {
        vec![
            "--security".to_string(),
            "mtls".into(),
            "--tls-dir".into(),
            dir.to_string(),
        ]
    };
    let cases: [(&str, &str, Vec<String>, &str); 5] = [
        (
            "nocert",
            "train",
            mtls(&d("nocert")),
            "not admitted by the coordinator",
        ),
        (
            "foreign",
            "train",
            mtls(&d("foreign")),
            "not admitted by the coordinator",
        ),
        (
            "expired",
            "train",
            mtls(&d("expired")),
            "not admitted by the coordinator",
        ),
        (
            "wrongrole",
            "train",
            mtls(&d("eval")),
            "may not make this call",
        ),
        (
            "plaintext",
            "train",
            vec!["--insecure".into()],
            "not admitted by the coordinator",
        ),
    ];
    for (id, role, sec, wants) in cases {
        let sec: Vec<&str> = sec.iter().map(String::as_str).collect();
        let u = if id == "plaintext" {
            url.replace("https://", "http://")
        } else {
            url.clone()
        };
        let mut w = worker(&u, id, role, &sec);
        refused(&mut w, &c, wants, id);
    }
    let train = d("train");
    let mut w = worker(
        &url,
        "w0",
        "train",
        &["--security", "mtls", "--tls-dir", &train],
    );
    assert!(w.wait_exit(T).success(), "{}\n{}", w.logs(), c.logs());
    c.expect_success(T);
}

#[test]
fn a_join_token_over_tls_admits_the_right_token_only() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new("run CA");
    pki.issue(&tmp.path().join("server"), "", false, &pki.ca_pem);
    std::fs::create_dir_all(tmp.path().join("client")).unwrap();
    std::fs::write(tmp.path().join("client/ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(tmp.path().join("token"), "correct horse\n").unwrap();
    std::fs::write(tmp.path().join("wrong"), "battery staple\n").unwrap();
    let d = |n: &str| tmp.path().join(n).display().to_string();
    let (server, client, token, wrong) = (d("server"), d("client"), d("token"), d("wrong"));
    let run = tmp.path().join("run");
    let sec = [
        "--security",
        "token",
        "--token-file",
        &token,
        "--tls-dir",
        &server,
    ];
    let (mut c, url) = coordinator(&run, &sec);
    let mut w = worker(
        &url,
        "wrong",
        "train",
        &[
            "--security",
            "token",
            "--token-file",
            &wrong,
            "--tls-dir",
            &client,
        ],
    );
    refused(&mut w, &c, "missing or wrong join token", "wrong token");
    let mut w = worker(
        &url,
        "notoken",
        "train",
        &["--security", "mtls", "--tls-dir", &client],
    );
    refused(&mut w, &c, "missing or wrong join token", "no token");
    let mut w = worker(
        &url,
        "w0",
        "train",
        &[
            "--security",
            "token",
            "--token-file",
            &token,
            "--tls-dir",
            &client,
        ],
    );
    assert!(w.wait_exit(T).success(), "{}\n{}", w.logs(), c.logs());
    c.expect_success(T);
}

#[test]
fn listening_beyond_loopback_without_authentication_exits_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().display().to_string();
    let o = std::process::Command::new(ELF.0)
        .args(["coordinator", "--config", &ELF.tiny(), "--run", &run])
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--listen 0.0.0.0:0 listens beyond loopback"),
        "{err}"
    );
    let o = std::process::Command::new(ELF.0)
        .args([
            "worker",
            "--coordinator",
            "http://127.0.0.1:1",
            "--collective",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--collective 0.0.0.0:0 listens beyond loopback"),
        "{err}"
    );
}
