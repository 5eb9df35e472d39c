//! `elf bench allreduce`: ring all-reduce bus bandwidth over loopback between worker processes,
//! against the raw loopback TCP throughput between two of the same processes, in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use super::RingPeerArgs;
use crate::out;

pub fn bench_allreduce(workers: usize, mib: usize, reps: usize) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    anyhow::ensure!(workers >= 2, "--workers must be at least 2");
    let exe = std::env::current_exe()?;
    let mut procs = vec![];
    let mut addrs = vec![];
    for r in 0..workers {
        let mut child = Command::new(&exe)
            .args([
                "bench",
                "ring-peer",
                "--rank",
                &r.to_string(),
                "--mib",
                &mib.to_string(),
                "--reps",
                &reps.to_string(),
            ])
            .env("RAYON_NUM_THREADS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).context("ring peer did not report its addresses")?;
        addrs.push(v);
        procs.push((child, out));
    }
    let peers: Vec<&str> = addrs
        .iter()
        .map(|a| a["ring"].as_str().unwrap_or_default())
        .collect();
    let msg = serde_json::json!({"peers": peers, "raw_peer": addrs[1]["raw"]}).to_string();
    for (c, _) in &mut procs {
        writeln!(c.stdin.as_mut().expect("piped"), "{msg}")?;
    }
    let (mut ring_s, mut raw_s, mut duplex_s) = (0f64, 0f64, 0f64);
    for (mut c, mut out) in procs {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("ring peer reported {line:?}"))?;
        ring_s = ring_s.max(v["seconds"].as_f64().unwrap_or(0.0));
        raw_s = raw_s.max(v["raw_seconds"].as_f64().unwrap_or(0.0));
        duplex_s = duplex_s.max(v["duplex_seconds"].as_f64().unwrap_or(0.0));
        c.wait()?;
    }
    let bytes = (mib << 20) as f64;
    let w = workers as f64;
    let busbw = bytes * 2.0 * (w - 1.0) / w / (ring_s / reps as f64);
    let raw = bytes / raw_s;
    let duplex = bytes / duplex_s;
    out::line(format!(
        "bench allreduce workers={workers} size={mib} MiB: ring bus bandwidth {:.2} GB/s; raw loopback TCP between two of the processes {:.2} GB/s one way, {:.2} GB/s per direction full duplex; ratio ring/raw = {:.2} (target >= 0.7), ring/duplex = {:.2}",
        busbw / 1e9,
        raw / 1e9,
        duplex / 1e9,
        busbw / raw,
        busbw / duplex
    ));
    Ok(())
}

pub fn ring_peer(a: RingPeerArgs) -> anyhow::Result<()> {
    use elf_worker::collective::{Collective, Ring};
    use std::io::{BufRead, Read, Write};
    let ring_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let raw_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    out::line(
        serde_json::json!({"ring": ring_l.local_addr()?.to_string(), "raw": raw_l.local_addr()?.to_string()}),
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)?;
    let peers: Vec<String> = v["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    let bytes = a.mib << 20;
    // Raw TCP between ranks 0 and 1, before the ring exists.
    let mut raw_seconds = 0.0;
    let chunk = vec![7u8; 1 << 20];
    if a.rank == 0 {
        let mut s = std::net::TcpStream::connect(v["raw_peer"].as_str().context("raw_peer")?)?;
        s.set_nodelay(true)?;
        let t0 = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        raw_seconds = t0.elapsed().as_secs_f64();
    } else if a.rank == 1 {
        let (mut s, _) = raw_l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < bytes {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "raw sender closed early");
            got += n;
        }
        s.write_all(&[1])?;
    }
    // Full duplex between the same two processes: both directions at once, as a ring link is
    // used; the per-direction rate is the fair anchor when the ranks share the cores.
    let mut duplex_seconds = 0.0;
    if a.rank < 2 {
        let s = if a.rank == 0 {
            std::net::TcpStream::connect(v["raw_peer"].as_str().context("raw_peer")?)?
        } else {
            raw_l.accept()?.0
        };
        s.set_nodelay(true)?;
        let mut w = s.try_clone()?;
        let mut r = s;
        let t0 = Instant::now();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![7u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                w.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < bytes {
            let n = r.read(&mut buf)?;
            anyhow::ensure!(n > 0, "duplex peer closed early");
            got += n;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("duplex writer panicked"))??;
        duplex_seconds = t0.elapsed().as_secs_f64();
    }
    let mut ring = Ring::connect(
        &ring_l,
        &peers,
        a.rank,
        1,
        b"bench",
        std::time::Duration::from_secs(60),
        4 << 20,
    )?;
    let mut buf = vec![1.0f32; bytes / 4];
    ring.all_reduce_sum(&mut buf)?;
    let t0 = Instant::now();
    for _ in 0..a.reps {
        ring.all_reduce_sum(&mut buf)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    out::line(
        serde_json::json!({"rank": a.rank, "seconds": seconds, "raw_seconds": raw_seconds, "duplex_seconds": duplex_seconds}),
    );
    Ok(())
}
