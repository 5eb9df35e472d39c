//! Collectives: one trait, and a bucketed ring all-reduce over TCP (the CPU and CI backend).
//!
//! # The ring
//! Rank `r` sends to rank `r+1` and receives from rank `r−1` (mod W) over two TCP connections
//! made per quorum. Each bucket of the flat buffer is cut into W chunks; W−1 reduce-scatter
//! steps leave rank `r` with the full sum of chunk `r+1`, W−1 all-gather steps spread the sums.
//! A dedicated sender thread writes while the caller reads, so neither side can block the
//! other on full socket buffers, and the next bucket's first chunk is on the wire while the
//! previous one is still being reduced. The order in which each chunk is summed is fixed by the
//! ring, so a given world size reproduces bit-identical sums.
//!
//! Every read and write has the configured timeout: a peer that vanishes or freezes becomes an
//! error naming it, never a hang.
//!
//! Nothing on the ring announces a length: the handshake is a fixed 16 bytes (`ELFR`, quorum
//! id, rank) plus its proof of the quorum's key, checked before any tensor byte is read, and
//! every chunk's size follows from the receiver's own buffer and the world size. A peer cannot
//! make a rank allocate or read more than its own gradient.
//!
//! The phase boundaries of an all-reduce (before each reduce-scatter and all-gather exchange,
//! after the last) are where the crash tests strike (`ELF_FAILPOINT_RING`): a peer lost there
//! leaves some survivors with the full sum and others without it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A collective failure, naming the peer.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// The next rank could not be dialled before the timeout.
    #[error("cannot reach {peer}: {source}")]
    Unreachable {
        /// The peer.
        peer: String,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },
    /// The previous rank did not dial in before the timeout.
    #[error("{peer} did not connect within {ms} ms")]
    NoDialIn {
        /// The peer.
        peer: String,
        /// The timeout.
        ms: u128,
    },
    /// The handshake with a peer failed.
    #[error("{peer}: handshake failed: {source}")]
    Handshake {
        /// The peer.
        peer: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A peer closed its connection mid-collective.
    #[error("{peer} closed the connection during all-reduce")]
    Closed {
        /// The peer.
        peer: String,
    },
    /// A peer sent nothing for the collective timeout.
    #[error("{peer} sent nothing before the collective timeout during all-reduce")]
    Timeout {
        /// The peer.
        peer: String,
    },
    /// Another IO error talking to a peer.
    #[error("{peer}: {source} during all-reduce")]
    Io {
        /// The peer.
        peer: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the ring's sockets or threads failed.
    #[error("ring setup: {0}")]
    Setup(#[source] std::io::Error),
}

impl CollectiveError {
    fn read(peer: &str, e: std::io::Error) -> Self {
        let peer = peer.to_string();
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Self::Closed { peer },
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Self::Timeout { peer },
            _ => Self::Io { peer, source: e },
        }
    }
}

/// What one all-reduce cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Bytes this rank sent.
    pub bytes_sent: u64,
    /// Wall time.
    pub seconds: f64,
}

/// A group of ranks that sum buffers together.
pub trait Collective: Send + std::fmt::Debug {
    /// Returns this process's rank.
    fn rank(&self) -> usize;
    /// Returns the number of ranks.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    ///
    /// # Errors
    /// A peer that closed, reset or went silent past the timeout.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<Traffic, CollectiveError>;
    /// Sums a few f64 values over ranks in rank order (identical bits on every rank).
    ///
    /// # Errors
    /// As [`Collective::all_reduce_sum`].
    fn all_reduce_sum_f64(&mut self, v: &mut [f64]) -> Result<(), CollectiveError>;
    /// Arms a test fault at a phase boundary of the next all-reduces (`None` disarms).
    fn arm(&mut self, _fault: Option<elf_shared::failpoint::RingFault>) {}
}

/// The trivial group of one.
#[derive(Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<Traffic, CollectiveError> {
        Ok(Traffic::default())
    }
    fn all_reduce_sum_f64(&mut self, _v: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }
}

const MAGIC: &[u8; 4] = b"ELFR";

/// What the caller hands the sender thread.
#[derive(Debug)]
enum Outgoing {
    /// Bytes to write to the next rank.
    Bytes(Vec<u8>),
    /// Answers once everything before it was written.
    Flushed(std::sync::mpsc::Sender<()>),
}

/// A TCP ring.
#[derive(Debug)]
pub struct Ring {
    rank: usize,
    world: usize,
    prev: TcpStream,
    prev_name: String,
    next_name: String,
    tx: Option<SyncSender<Outgoing>>,
    sender: Option<JoinHandle<()>>,
    send_error: Arc<Mutex<Option<CollectiveError>>>,
    bucket: usize,
    scratch: Vec<f32>,
    aborter: Aborter,
    /// A test fault and the phase boundaries passed since it was armed.
    fault: Option<(elf_shared::failpoint::RingFault, usize)>,
}

/// Aborts a ring from another thread: shuts its sockets down, so a rank blocked on a frozen
/// peer returns an error at once instead of at the collective timeout.
#[derive(Debug, Clone)]
pub struct Aborter(Arc<Vec<TcpStream>>);

impl Aborter {
    /// Shuts both of the ring's connections down (idempotent).
    pub fn abort(&self) {
        for s in self.0.iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn peer(rank: usize, addr: &str) -> String {
    format!("peer rank {rank} ({addr})")
}

impl Ring {
    /// Connects rank `rank` of `peers` (collective addresses in rank order) for quorum `quorum`:
    /// dials the next rank and accepts the previous one on `listener`. Each dialer proves the
    /// quorum's `key` ([`crate::peer_auth`]); an inbound connection that cannot is dropped
    /// before any tensor byte is read.
    ///
    /// # Errors
    /// A peer that cannot be reached or does not dial in before `timeout`.
    pub fn connect(
        listener: &TcpListener,
        peers: &[String],
        rank: usize,
        quorum: u64,
        key: &[u8],
        timeout: Duration,
        bucket_bytes: usize,
    ) -> Result<Self, CollectiveError> {
        let world = peers.len();
        assert!(world >= 2 && rank < world, "a ring needs two or more ranks");
        let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
        let next_name = peer(next, &peers[next]);
        let prev_name = peer(prev, &peers[prev]);
        let deadline = Instant::now() + timeout;
        // Dial the next rank (retrying: it may not have bound yet).
        let mut out = loop {
            match TcpStream::connect(&peers[next]) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "dialling {next_name}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(CollectiveError::Unreachable {
                        peer: next_name,
                        source,
                    });
                }
            }
        };
        let mut hello = Vec::with_capacity(16);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&quorum.to_le_bytes());
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        out.write_all(&hello)
            .and_then(|()| crate::peer_auth::prove(&mut out, key, &hello))
            .map_err(|source| CollectiveError::Handshake {
                peer: next_name.clone(),
                source,
            })?;
        // Accept the previous rank; ignore anything else (stale dialers of an old quorum).
        listener
            .set_nonblocking(true)
            .map_err(CollectiveError::Setup)?;
        let inbound = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(CollectiveError::Setup)?;
                    s.set_read_timeout(Some(timeout))
                        .map_err(CollectiveError::Setup)?;
                    let mut h = [0u8; 16];
                    if s.read_exact(&mut h).is_ok()
                        && &h[..4] == MAGIC
                        && u64::from_le_bytes(h[4..12].try_into().expect("8")) == quorum
                        && u32::from_le_bytes(h[12..16].try_into().expect("4")) as usize == prev
                    {
                        if crate::peer_auth::verify(&mut s, key, &h) {
                            break s;
                        }
                        tracing::warn!(
                            quorum,
                            "dropped a ring connection claiming to be {prev_name} that could not prove the quorum's key"
                        );
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(CollectiveError::NoDialIn {
                        peer: prev_name,
                        ms: timeout.as_millis(),
                    });
                }
                Err(source) => {
                    return Err(CollectiveError::Io {
                        peer: prev_name,
                        source,
                    });
                }
            }
        };
        for s in [&out, &inbound] {
            s.set_nodelay(true).map_err(CollectiveError::Setup)?;
            s.set_read_timeout(Some(timeout))
                .map_err(CollectiveError::Setup)?;
            s.set_write_timeout(Some(timeout))
                .map_err(CollectiveError::Setup)?;
        }
        let clones = [&out, &inbound]
            .iter()
            .map(|s| s.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CollectiveError::Setup)?;
        let aborter = Aborter(Arc::new(clones));
        let (tx, rx): (SyncSender<Outgoing>, Receiver<Outgoing>) = sync_channel(4);
        let send_error = Arc::new(Mutex::new(None));
        let err = send_error.clone();
        let name = next_name.clone();
        let sender = std::thread::Builder::new()
            .name("elf-ring-send".into())
            .spawn(move || {
                for msg in rx {
                    let msg = match msg {
                        Outgoing::Bytes(b) => b,
                        Outgoing::Flushed(ack) => {
                            let _ = ack.send(());
                            continue;
                        }
                    };
                    if let Err(source) = out.write_all(&msg) {
                        *err.lock().expect("error lock") =
                            Some(CollectiveError::Io { peer: name, source });
                        return;
                    }
                }
            })
            .map_err(CollectiveError::Setup)?;
        Ok(Self {
            rank,
            world,
            prev: inbound,
            prev_name,
            next_name,
            tx: Some(tx),
            sender: Some(sender),
            send_error,
            bucket: (bucket_bytes / 4).max(world),
            scratch: vec![],
            aborter,
            fault: None,
        })
    }

    fn send(&self, bytes: Vec<u8>) -> Result<(), CollectiveError> {
        if let Some(e) = self.send_error.lock().expect("error lock").take() {
            return Err(e);
        }
        self.tx
            .as_ref()
            .expect("sender alive")
            .send(Outgoing::Bytes(bytes))
            .map_err(|_| CollectiveError::Closed {
                peer: self.next_name.clone(),
            })
    }

    /// Marks a phase boundary: strikes an armed test fault when its boundary is reached, once
    /// everything sent before it is on the wire (a peer lost *between* two phases).
    fn boundary(&mut self) {
        let Some((fault, passed)) = self.fault.as_mut() else {
            return;
        };
        let strike = (*passed == fault.boundary).then_some(*fault);
        *passed += 1;
        if let Some(fault) = strike {
            let (ack, done) = std::sync::mpsc::channel();
            if let Some(tx) = &self.tx
                && tx.send(Outgoing::Flushed(ack)).is_ok()
            {
                let _ = done.recv();
            }
            fault.strike();
        }
    }

    /// Reads `n` floats from the previous rank into the scratch buffer.
    fn recv(&mut self, n: usize) -> Result<&[f32], CollectiveError> {
        self.scratch.resize(n, 0.0);
        // Little-endian on the wire; every target we build for is little-endian.
        self.prev
            .read_exact(bytemuck::cast_slice_mut(&mut self.scratch))
            .map_err(|e| CollectiveError::read(&self.prev_name, e))?;
        Ok(&self.scratch)
    }
}

fn to_bytes(x: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(x).to_vec()
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<Traffic, CollectiveError> {
        let t0 = Instant::now();
        let (w, r) = (self.world, self.rank);
        let mut sent = 0u64;
        let mut start = 0;
        while start < buf.len() {
            let end = (start + self.bucket).min(buf.len());
            let b = &mut buf[start..end];
            let len = b.len();
            let chunk = |i: usize| (i * len / w)..((i + 1) * len / w);
            for k in 0..w - 1 {
                self.boundary();
                let (si, ri) = ((r + w - k) % w, (r + 2 * w - k - 1) % w);
                let bytes = to_bytes(&b[chunk(si)]);
                sent += bytes.len() as u64;
                self.send(bytes)?;
                let rr = chunk(ri);
                let incoming = self.recv(rr.len())?;
                for (dst, x) in b[rr].iter_mut().zip(incoming) {
                    *dst += x;
                }
            }
            for k in 0..w - 1 {
                self.boundary();
                let (si, ri) = ((r + 1 + w - k) % w, (r + w - k) % w);
                let bytes = to_bytes(&b[chunk(si)]);
                sent += bytes.len() as u64;
                self.send(bytes)?;
                let rr = chunk(ri);
                let incoming = self.recv(rr.len())?;
                b[rr].copy_from_slice(incoming);
            }
            start = end;
        }
        self.boundary();
        Ok(Traffic {
            bytes_sent: sent,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    fn all_reduce_sum_f64(&mut self, v: &mut [f64]) -> Result<(), CollectiveError> {
        let (w, r, n) = (self.world, self.rank, v.len());
        let mut all = vec![vec![0f64; n]; w];
        all[r].copy_from_slice(v);
        // Pass every rank's values around the ring, then sum in rank order.
        let mut holding = r;
        for _ in 0..w - 1 {
            self.boundary();
            let mut msg = Vec::with_capacity(n * 8);
            for x in &all[holding] {
                msg.extend_from_slice(&x.to_le_bytes());
            }
            self.send(msg)?;
            holding = (holding + w - 1) % w;
            let incoming: Vec<u8> = bytemuck::cast_slice(self.recv(n * 2)?).to_vec();
            for (dst, c) in all[holding].iter_mut().zip(incoming.chunks_exact(8)) {
                *dst = f64::from_le_bytes(c.try_into().expect("8"));
            }
        }
        for (i, x) in v.iter_mut().enumerate() {
            *x = all.iter().map(|a| a[i]).sum();
        }
        self.boundary();
        Ok(())
    }

    fn arm(&mut self, fault: Option<elf_shared::failpoint::RingFault>) {
        self.fault = fault.map(|f| (f, 0));
    }
}

impl Ring {
    /// A handle that aborts this ring from another thread.
    pub fn aborter(&self) -> Aborter {
        self.aborter.clone()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(n: usize, bucket: usize) -> Vec<Ring> {
        ring_on(&bind(n), bucket)
    }

    fn bind(n: usize) -> Vec<TcpListener> {
        (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect()
    }

    fn addrs(listeners: &[TcpListener]) -> Vec<String> {
        listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect()
    }

    /// Connects a ring of quorum 7 (key `k`) on `listeners`, one thread per rank.
    fn ring_on(listeners: &[TcpListener], bucket: usize) -> Vec<Ring> {
        let peers = addrs(listeners);
        std::thread::scope(|s| {
            let hs: Vec<_> = listeners
                .iter()
                .enumerate()
                .map(|(r, l)| {
                    let peers = peers.clone();
                    s.spawn(move || {
                        Ring::connect(l, &peers, r, 7, b"k", Duration::from_secs(5), bucket)
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// A dialer that claims to be rank 1 of quorum 7 (all of it visible in `/status`) but
    /// cannot prove the quorum's key, or proves an old quorum's, is dropped before a tensor
    /// byte is read; the real rank 1 is then accepted and the sum is the true one.
    #[test]
    fn a_forged_or_stale_ring_dialer_is_dropped_before_any_tensor_byte() {
        let listeners = bind(2);
        let peers = addrs(&listeners);
        for (quorum, key) in [(7u64, &b"wrong"[..]), (6, b"k")] {
            let mut forged = std::net::TcpStream::connect(&peers[0]).unwrap();
            let mut hello = MAGIC.to_vec();
            hello.extend_from_slice(&quorum.to_le_bytes());
            hello.extend_from_slice(&1u32.to_le_bytes());
            forged.write_all(&hello).unwrap();
            crate::peer_auth::prove(&mut forged, key, &hello).unwrap();
            // Attacker bytes where the gradients would be.
            let _ = forged.write_all(&vec![0x7f; 4096]);
            std::mem::forget(forged);
        }
        let mut rings = ring_on(&listeners, 64);
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = rings
                .iter_mut()
                .enumerate()
                .map(|(r, ring)| {
                    s.spawn(move || {
                        let mut v = vec![r as f32 + 1.0; 100];
                        ring.all_reduce_sum(&mut v).unwrap();
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(sums.iter().all(|v| v.iter().all(|x| *x == 3.0)), "{sums:?}");
    }

    #[test]
    fn ring_sums_equal_the_serial_sum_for_several_world_sizes() {
        for (n, bucket) in [(2usize, 64usize), (3, 40), (4, 4096)] {
            let len = 1001;
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|r| {
                    (0..len)
                        .map(|i| (i * (r + 1)) as f32 * 0.5 - r as f32)
                        .collect()
                })
                .collect();
            let expected: Vec<f32> = (0..len)
                .map(|i| inputs.iter().map(|v| v[i]).sum())
                .collect();
            let rings = ring_of(n, bucket);
            let outs: Vec<(Vec<f32>, [f64; 2])> = std::thread::scope(|s| {
                let hs: Vec<_> = rings
                    .into_iter()
                    .zip(inputs.clone())
                    .map(|(mut ring, mut buf)| {
                        s.spawn(move || {
                            let t = ring.all_reduce_sum(&mut buf).unwrap();
                            assert!(t.bytes_sent > 0);
                            let mut v = [ring.rank() as f64, 1.0];
                            ring.all_reduce_sum_f64(&mut v).unwrap();
                            (buf, v)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (buf, v) in &outs {
                for (a, b) in buf.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                        "n={n}: {a} vs {b}"
                    );
                }
                assert_eq!(*v, [(0..n).sum::<usize>() as f64, n as f64]);
            }
            // Every rank holds bit-identical sums.
            assert!(outs.windows(2).all(|p| p[0].0 == p[1].0), "n={n}");
        }
    }

    #[test]
    fn a_vanished_peer_is_an_error_naming_it_not_a_hang() {
        let mut rings = ring_of(3, 1024);
        let dead = rings.pop().unwrap();
        drop(dead);
        let t0 = Instant::now();
        let mut r0 = rings.remove(0);
        let mut buf = vec![1.0f32; 10_000];
        let e = r0.all_reduce_sum(&mut buf).unwrap_err().to_string();
        assert!(e.contains("peer rank 2"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
