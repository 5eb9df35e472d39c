//! Who may talk to the coordinator: the security mode both processes take from their flags,
//! TLS for the gRPC channel, the join token, and the role a client certificate carries.
//!
//! Modes (`--security`):
//! * `mtls`: TLS both ways; the client presents a certificate signed by the run's CA, whose
//!   subject Organizational Unit is its role (`train`, `eval` or `admin`); a call outside the
//!   role is refused.
//! * `token`: a join token (read from `--token-file`) sent as `authorization: Bearer ...` and
//!   compared in constant time; off loopback only over TLS (the server's certificate and the
//!   CA from `--tls-dir`).
//! * `insecure`: plaintext and no credentials (`--insecure` says the same).
//!
//! With no mode given, a process that listens only on loopback runs `insecure` (the laptop
//! default, no setup); one that listens beyond loopback refuses to start, naming the flag.
//! `--tls-dir` holds `ca.crt` and, where the process presents one, `tls.crt` and `tls.key`
//! (the layout of cert-manager's and `kubernetes.io/tls` Secrets).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A security setting that cannot be used, naming the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// An unknown `--security` value.
    #[error("--security {0}: use mtls, token or insecure")]
    Mode(String),
    /// A mode without the file it needs.
    #[error("--security {mode} needs {flag}")]
    Missing {
        /// The mode.
        mode: &'static str,
        /// The missing flag.
        flag: &'static str,
    },
    /// A file that cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An empty token file.
    #[error("{0}: the join token is empty")]
    EmptyToken(PathBuf),
    /// A listener beyond loopback without authentication.
    #[error(
        "{flag} {addr} listens beyond loopback without authentication: pass --security mtls (with --tls-dir) or --security token (with --token-file and --tls-dir), or --insecure to accept it"
    )]
    Unauthenticated {
        /// The flag of the listener.
        flag: &'static str,
        /// Its address.
        addr: String,
    },
    /// Token mode beyond loopback without TLS.
    #[error(
        "{flag} {addr}: --security token beyond loopback needs TLS (--tls-dir with tls.crt, tls.key and ca.crt)"
    )]
    TokenWithoutTls {
        /// The flag of the listener.
        flag: &'static str,
        /// Its address.
        addr: String,
    },
}

/// PEM files from `--tls-dir`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `ca.crt`: the run's CA.
    pub ca: Vec<u8>,
    /// `tls.crt` and `tls.key`, when present.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads `dir/ca.crt` and, when both exist, `dir/tls.crt` and `dir/tls.key`.
    ///
    /// # Errors
    /// A missing `ca.crt`, or a file that cannot be read.
    pub fn read(dir: &Path) -> Result<Self, SecurityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SecurityError::Read { path, source })
        };
        let ca = read("ca.crt")?;
        let identity = if dir.join("tls.crt").exists() || dir.join("tls.key").exists() {
            Some((read("tls.crt")?, read("tls.key")?))
        } else {
            None
        };
        Ok(Self { ca, identity })
    }
}

/// How a process authenticates its gRPC channel.
#[derive(Debug, Clone, Default)]
pub enum Security {
    /// Plaintext, no credentials.
    #[default]
    Insecure,
    /// A join token, over TLS when `tls` is set.
    Token {
        /// The token.
        token: String,
        /// TLS files.
        tls: Option<TlsFiles>,
    },
    /// Mutual TLS; roles from the client certificates.
    Mtls(TlsFiles),
}

/// The security flags, as both processes take them.
#[derive(Debug, Clone, Default)]
pub struct SecurityFlags {
    /// `--security`.
    pub mode: Option<String>,
    /// `--insecure`.
    pub insecure: bool,
    /// `--tls-dir`.
    pub tls_dir: Option<PathBuf>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
}

impl Security {
    /// Builds the setting from the flags; `None` when no mode was given (the caller decides
    /// from its listen addresses, see [`Security::for_listeners`]).
    ///
    /// # Errors
    /// An unknown mode, a missing flag, or a file that cannot be read.
    pub fn from_flags(f: &SecurityFlags) -> Result<Option<Self>, SecurityError> {
        let mode = match (&f.mode, f.insecure) {
            (Some(m), _) => m.as_str(),
            (None, true) => "insecure",
            (None, false) => return Ok(None),
        };
        let tls = f.tls_dir.as_deref().map(TlsFiles::read).transpose()?;
        Ok(Some(match mode {
            "insecure" => Self::Insecure,
            "mtls" => Self::Mtls(tls.ok_or(SecurityError::Missing {
                mode: "mtls",
                flag: "--tls-dir",
            })?),
            "token" => {
                let path = f.token_file.clone().ok_or(SecurityError::Missing {
                    mode: "token",
                    flag: "--token-file",
                })?;
                let token = std::fs::read_to_string(&path)
                    .map_err(|source| SecurityError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string();
                if token.is_empty() {
                    return Err(SecurityError::EmptyToken(path));
                }
                Self::Token { token, tls }
            }
            other => return Err(SecurityError::Mode(other.to_string())),
        }))
    }

    /// The setting of a server listening on `listeners` (`(flag, addr)`): the flags' mode,
    /// checked against the addresses, or `insecure` when every one is loopback.
    ///
    /// # Errors
    /// As [`Security::from_flags`]; a listener beyond loopback without authentication, or in
    /// token mode without TLS.
    pub fn for_listeners(
        f: &SecurityFlags,
        listeners: &[(&'static str, &str)],
    ) -> Result<Self, SecurityError> {
        let chosen = Self::from_flags(f)?;
        for &(flag, addr) in listeners {
            if is_loopback(addr) {
                continue;
            }
            let err = || SecurityError::Unauthenticated {
                flag,
                addr: addr.to_string(),
            };
            match &chosen {
                None => return Err(err()),
                Some(Self::Token { tls, .. })
                    if tls.as_ref().is_none_or(|t| t.identity.is_none()) =>
                {
                    return Err(SecurityError::TokenWithoutTls {
                        flag,
                        addr: addr.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(chosen.unwrap_or(Self::Insecure))
    }

    /// The server's TLS config (`None`: plaintext).
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        install_crypto();
        let (files, client_auth) = match self {
            Self::Insecure => return None,
            Self::Token { tls, .. } => (tls.as_ref()?, false),
            Self::Mtls(files) => (files, true),
        };
        let (cert, key) = files.identity.clone()?;
        let mut c = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if client_auth {
            c = c.client_ca_root(Certificate::from_pem(files.ca.clone()));
        }
        Some(c)
    }

    /// The client's TLS config for a server named `domain` (`None`: plaintext).
    pub fn client_tls(&self, domain: &str) -> Option<ClientTlsConfig> {
        install_crypto();
        let files = match self {
            Self::Insecure => return None,
            Self::Token { tls, .. } => tls.as_ref()?,
            Self::Mtls(files) => files,
        };
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(files.ca.clone()))
            .domain_name(domain);
        if let (Self::Mtls(_), Some((cert, key))) = (self, &files.identity) {
            c = c.identity(Identity::from_pem(cert.clone(), key.clone()));
        }
        Some(c)
    }

    /// The join token clients send and servers expect.
    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Token { token, .. } => Some(token),
            _ => None,
        }
    }

    /// Returns true in mutual-TLS mode (roles come from client certificates).
    pub fn is_mtls(&self) -> bool {
        matches!(self, Self::Mtls(_))
    }

    /// Returns the mode's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Insecure => "insecure",
            Self::Token { .. } => "token",
            Self::Mtls(_) => "mtls",
        }
    }
}

/// Selects rustls's process-wide crypto provider (ring), once: the build links two (object
/// storage's HTTP client brings the other), and rustls will not guess.
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Returns the host of `host:port` (`[v6]:port` unbracketed), parsed as an IP when it is one.
fn host_of(addr: &str) -> Result<std::net::IpAddr, &str> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.parse().map_err(|_| host)
}

/// Returns true for a `host:port` on a loopback IP or `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    match host_of(addr) {
        Ok(ip) => ip.is_loopback(),
        Err(name) => name.eq_ignore_ascii_case("localhost"),
    }
}

/// Returns true for a `host:port` only its own host can reach: a loopback or unspecified IP,
/// `localhost`, or no host (any other name is trusted: only DNS can tell).
pub fn only_this_host(addr: &str) -> bool {
    match host_of(addr) {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(name) => name.is_empty() || name.eq_ignore_ascii_case("localhost"),
    }
}

/// The metadata key of the join token.
pub const AUTHORIZATION: &str = "authorization";

/// Returns true when `header` is `Bearer <expected>` (compared in constant time).
pub fn token_matches(expected: &str, header: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(got) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    got.len() == expected.len() && bool::from(got.as_bytes().ct_eq(expected.as_bytes()))
}

/// A role a client certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A training worker.
    Train,
    /// An eval worker.
    Eval,
    /// An operator (status only).
    Admin,
}

/// Returns the role of a DER client certificate: its subject's Organizational Unit.
pub fn cert_role(der: &[u8]) -> Option<CertRole> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ou = cert
        .subject()
        .iter_organizational_unit()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    match ou.as_str() {
        "train" => Some(CertRole::Train),
        "eval" => Some(CertRole::Eval),
        "admin" => Some(CertRole::Admin),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_whole_and_as_bearer() {
        assert!(token_matches("s3cret", Some("Bearer s3cret")));
        assert!(!token_matches("s3cret", Some("Bearer s3cre")));
        assert!(!token_matches("s3cret", Some("Bearer s3cret2")));
        assert!(!token_matches("s3cret", Some("s3cret")));
        assert!(!token_matches("s3cret", None));
    }

    #[test]
    fn a_listener_beyond_loopback_needs_authentication_or_insecure() {
        let none = SecurityFlags::default();
        assert!(matches!(
            Security::for_listeners(&none, &[("--listen", "127.0.0.1:0")]),
            Ok(Security::Insecure)
        ));
        let e = Security::for_listeners(&none, &[("--listen", "0.0.0.0:50051")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--listen 0.0.0.0:50051 listens beyond loopback"),
            "{e}"
        );
        let insecure = SecurityFlags {
            insecure: true,
            ..Default::default()
        };
        assert!(Security::for_listeners(&insecure, &[("--listen", "0.0.0.0:1")]).is_ok());
        let dir = std::env::temp_dir().join(format!("elf-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "abc\n").unwrap();
        let token = SecurityFlags {
            mode: Some("token".into()),
            token_file: Some(dir.join("token")),
            ..Default::default()
        };
        let e = Security::for_listeners(&token, &[("--listen", "10.0.0.1:1")]).unwrap_err();
        assert!(e.to_string().contains("needs TLS"), "{e}");
        let s = Security::for_listeners(&token, &[("--listen", "127.0.0.1:1")]).unwrap();
        assert_eq!(s.token(), Some("abc"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_certificates_role_is_its_organizational_unit() {
        for (ou, role) in [
            ("train", Some(CertRole::Train)),
            ("eval", Some(CertRole::Eval)),
            ("admin", Some(CertRole::Admin)),
            ("other", None),
        ] {
            let mut p = rcgen::CertificateParams::new(vec!["w0".into()]).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, ou);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            assert_eq!(cert_role(cert.der()), role, "{ou}");
        }
    }
}
