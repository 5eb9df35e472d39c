//! Copying the whole training state from a live worker to one joining a running run, over a
//! direct TCP connection to the joiner's collective listener (no object store round trip).
//!
//! Wire: `ELFS`, step (u64 LE), optimiser step count (u64), index JSON length (u64) and the
//! JSON (the flat state's tensor index), element count (u64), then the f32 elements (LE).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use elf_shared::manifest::TensorEntry;

const MAGIC: &[u8; 4] = b"ELFS";

/// A state copy that failed, naming the other side.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The joiner could not be reached before the timeout.
    #[error("joiner {addr}: cannot connect: {source}")]
    Connect {
        /// The joiner's address.
        addr: String,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },
    /// IO with the other side failed.
    #[error("{side} {addr}: {source}")]
    Io {
        /// `joiner` or `donor`.
        side: &'static str,
        /// Its address.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// No donor connected before the timeout.
    #[error("no donor connected within {ms} ms")]
    NoDonor {
        /// The timeout.
        ms: u128,
    },
    /// The donor sent another step's state.
    #[error("donor {addr} sent the state of step {got}, expected {want}")]
    WrongStep {
        /// The donor.
        addr: String,
        /// The step sent.
        got: u64,
        /// The step expected.
        want: u64,
    },
    /// The donor's tensor index does not parse.
    #[error("donor {addr}: bad tensor index: {source}")]
    BadIndex {
        /// The donor.
        addr: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The donor announced a state that is not this model's (checked before it is read).
    #[error("donor {addr}: {message}; the stream was closed before any tensor byte was read")]
    NotThisModel {
        /// The donor.
        addr: String,
        /// What differs.
        message: String,
    },
    /// Setting up the listener failed.
    #[error("state copy setup: {0}")]
    Setup(#[source] std::io::Error),
}

/// A received state (laid out by the joiner's own index, which the donor's had to equal).
#[derive(Debug)]
pub struct State {
    /// The flat state.
    pub data: Vec<f32>,
    /// Optimiser steps taken.
    pub optimizer_count: u64,
}

/// Sends the state after step `step - 1` to the joiner listening at `addr`.
///
/// # Errors
/// A joiner that cannot be reached or stops reading (naming it).
pub fn send(
    addr: &str,
    step: u64,
    key: &[u8],
    tensors: &[TensorEntry],
    data: &[f32],
    optimizer_count: u64,
    timeout: Duration,
) -> Result<(), TransferError> {
    let deadline = Instant::now() + timeout;
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(source) => {
                return Err(TransferError::Connect {
                    addr: addr.into(),
                    source,
                });
            }
        }
    };
    let io = |source: std::io::Error| TransferError::Io {
        side: "joiner",
        addr: addr.into(),
        source,
    };
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let index = serde_json::to_vec(tensors).expect("index serialises");
    let mut hello = Vec::with_capacity(12);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&step.to_le_bytes());
    s.write_all(&hello).map_err(io)?;
    crate::peer_auth::prove(&mut s, key, &hello).map_err(io)?;
    let mut head = Vec::with_capacity(24 + index.len());
    head.extend_from_slice(&optimizer_count.to_le_bytes());
    head.extend_from_slice(&(index.len() as u64).to_le_bytes());
    head.extend_from_slice(&index);
    head.extend_from_slice(&(data.len() as u64).to_le_bytes());
    s.write_all(&head).map_err(io)?;
    s.write_all(bytemuck::cast_slice(data)).map_err(io)?;
    s.flush().map_err(io)?;
    // Wait for the joiner to close: everything was read.
    let _ = s.read(&mut [0u8; 1]);
    Ok(())
}

/// Receives the state for step `step` on `listener` (ignoring stray connections). `expected`
/// is this model's own index: every announced length is checked against it before anything of
/// that length is allocated or read.
///
/// # Errors
/// No donor within `timeout`, or a truncated or mismatched stream.
pub fn receive(
    listener: &TcpListener,
    step: u64,
    key: &[u8],
    expected: &[TensorEntry],
    timeout: Duration,
) -> Result<State, TransferError> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(TransferError::Setup)?;
    loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).map_err(TransferError::Setup)?;
                s.set_read_timeout(Some(timeout))
                    .map_err(TransferError::Setup)?;
                let mut magic = [0u8; 4];
                if s.read_exact(&mut magic).is_err() || &magic != MAGIC {
                    continue; // a stale ring dialer
                }
                let addr = peer.to_string();
                let io = |source: std::io::Error| TransferError::Io {
                    side: "donor",
                    addr: addr.clone(),
                    source,
                };
                let u = |s: &mut TcpStream| -> Result<u64, TransferError> {
                    let mut b = [0u8; 8];
                    s.read_exact(&mut b).map_err(io)?;
                    Ok(u64::from_le_bytes(b))
                };
                let got = u(&mut s)?;
                if got != step {
                    return Err(TransferError::WrongStep {
                        addr,
                        got,
                        want: step,
                    });
                }
                let mut hello = Vec::with_capacity(12);
                hello.extend_from_slice(MAGIC);
                hello.extend_from_slice(&got.to_le_bytes());
                if !crate::peer_auth::verify(&mut s, key, &hello) {
                    tracing::warn!(%addr, "dropped a state copy that could not prove the copy's key");
                    continue;
                }
                let (optimizer_count, n) = elf_shared::frames::read_state_head(&mut s, expected)
                    .map_err(|e| match e {
                        elf_shared::frames::HeadError::Io(source) => io(source),
                        elf_shared::frames::HeadError::BadIndex(source) => {
                            TransferError::BadIndex {
                                addr: addr.clone(),
                                source,
                            }
                        }
                        elf_shared::frames::HeadError::NotThisModel(message) => {
                            TransferError::NotThisModel {
                                addr: addr.clone(),
                                message,
                            }
                        }
                    })?;
                let mut data = vec![0f32; n as usize];
                s.read_exact(bytemuck::cast_slice_mut(&mut data))
                    .map_err(io)?;
                return Ok(State {
                    data,
                    optimizer_count,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(TransferError::NoDonor {
                    ms: timeout.as_millis(),
                });
            }
            Err(e) => return Err(TransferError::Setup(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_a_wrong_step_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tensors = vec![TensorEntry {
            name: "params/w".into(),
            shape: vec![2, 3],
            offset: 0,
        }];
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let (t2, d2) = (tensors.clone(), data.clone());
        let a = addr.clone();
        let h = std::thread::spawn(move || send(&a, 7, b"k", &t2, &d2, 3, Duration::from_secs(5)));
        let st = receive(&l, 7, b"k", &tensors, Duration::from_secs(5)).unwrap();
        h.join().unwrap().unwrap();
        assert_eq!((st.data, st.optimizer_count), (data.clone(), 3));
        let (t3, d3, a3) = (tensors.clone(), data.clone(), addr.clone());
        let h = std::thread::spawn(move || send(&a3, 8, b"k", &t3, &d3, 3, Duration::from_secs(5)));
        let e = receive(&l, 7, b"k", &tensors, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 8, expected 7"), "{e}");
        let _ = h.join();
        // A sender without the copy's key is dropped unread: the joiner waits on for the
        // donor (here: until its timeout).
        let t4 = tensors.clone();
        let h = std::thread::spawn(move || {
            send(&addr, 7, b"forged", &t4, &data, 3, Duration::from_secs(5))
        });
        let e = receive(&l, 7, b"k", &tensors, Duration::from_millis(1500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no donor") || e.contains("within"), "{e}");
        let _ = h.join();
    }

    /// A donor holding the copy's key that announces a huge or foreign state is refused
    /// before anything of the announced size is allocated or read.
    #[test]
    fn announced_sizes_are_checked_against_the_model_before_any_allocation() {
        let tensors = vec![TensorEntry {
            name: "params/w".into(),
            shape: vec![2, 3],
            offset: 0,
        }];
        let index = serde_json::to_vec(&tensors).unwrap();
        let cases: [(u64, Vec<u8>, u64, &str); 3] = [
            (
                1 << 62,
                index.clone(),
                6,
                "announced a 4611686018427387904-byte tensor index",
            ),
            (
                index.len() as u64,
                index.clone(),
                1 << 62,
                "announced 4611686018427387904 elements",
            ),
            (
                index.len() as u64,
                index
                    .iter()
                    .map(|&b| if b == b'w' { b'v' } else { b })
                    .collect(),
                6,
                "not this model's",
            ),
        ];
        for (len, index, n, says) in cases {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let h = std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut hello = MAGIC.to_vec();
                hello.extend_from_slice(&7u64.to_le_bytes());
                s.write_all(&hello).unwrap();
                crate::peer_auth::prove(&mut s, b"k", &hello).unwrap();
                let mut head = 3u64.to_le_bytes().to_vec();
                head.extend_from_slice(&len.to_le_bytes());
                if len < 1 << 20 {
                    head.extend_from_slice(&index);
                    head.extend_from_slice(&n.to_le_bytes());
                }
                let _ = s.write_all(&head);
                let _ = s.read(&mut [0u8; 1]);
            });
            let e = receive(&l, 7, b"k", &tensors, Duration::from_secs(5))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(says) && e.contains("before any tensor byte"),
                "{e}"
            );
            h.join().unwrap();
        }
    }
}
