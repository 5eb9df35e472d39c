//! `elf bench allreduce`: ring all-reduce bus bandwidth over loopback between worker processes,
//! against the raw loopback TCP throughput between two of the same processes, in the same run;
//! with `--hosts N --link-gbit G`, each process on a host of its own (network namespaces whose
//! links tc caps at G), against the raw TCP rate through one capped link, in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use super::RingPeerArgs;
use crate::out;

pub fn bench_allreduce(workers: usize, mib: usize, reps: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let (ring_s, raw_s, duplex_s) =
        run_peers(workers, mib, reps, &|_| Command::new(&exe), &|_| {
            "127.0.0.1".into()
        })?;
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

/// `--hosts N --link-gbit G`: each rank on a host of its own (a network namespace), every link
/// capped at G by tc; the anchor is the raw TCP rate through one capped link, measured in the
/// same run.
pub fn bench_allreduce_hosts(
    hosts: usize,
    link_gbit: f64,
    mib: usize,
    reps: usize,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..hosts).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Some(why) = elf_e2e::Net::unavailable() {
        anyhow::bail!("--hosts needs network namespaces: {why}");
    }
    let net = elf_e2e::Net::new(&refs).context("cannot create the hosts")?;
    for n in &names {
        net.limit_rate(n, link_gbit)
            .with_context(|| format!("cannot cap host {n}'s link"))?;
    }
    let exe = std::env::current_exe()?;
    let (ring_s, raw_s, duplex_s) = run_peers(
        hosts,
        mib,
        reps,
        &|r| net.host(&names[r]).command(&exe),
        &|r| net.host(&names[r]).addr().to_string(),
    )?;
    let bytes = (mib << 20) as f64;
    let w = hosts as f64;
    let busbw = bytes * 2.0 * (w - 1.0) / w / (ring_s / reps as f64);
    let raw = bytes / raw_s;
    let duplex = bytes / duplex_s;
    let link = link_gbit * 1e9 / 8.0;
    out::line(format!(
        "bench allreduce hosts={hosts} link={link_gbit} Gbit/s size={mib} MiB: ring bus bandwidth {:.1} MB/s; raw TCP through one capped link {:.1} MB/s one way, {:.1} MB/s per direction full duplex (nominal {:.1} MB/s); ratio ring/link = {:.2} (target >= 0.8), ring/duplex = {:.2}",
        busbw / 1e6,
        raw / 1e6,
        duplex / 1e6,
        link / 1e6,
        busbw / raw,
        busbw / duplex
    ));
    Ok(())
}

/// Starts `n` ring peers (`command(r)` makes rank r's process, bound at `bind(r)`), runs the
/// raw, duplex and ring measurements, and returns the slowest rank's seconds of each.
fn run_peers(
    n: usize,
    mib: usize,
    reps: usize,
    command: &dyn Fn(usize) -> Command,
    bind: &dyn Fn(usize) -> String,
) -> anyhow::Result<(f64, f64, f64)> {
    use std::io::{BufRead, BufReader, Write};
    anyhow::ensure!(n >= 2, "a ring needs at least 2 processes");
    let mut procs = vec![];
    let mut addrs = vec![];
    for r in 0..n {
        let mut child = command(r)
            .args([
                "bench",
                "ring-peer",
                "--bind",
                &bind(r),
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
    Ok((ring_s, raw_s, duplex_s))
}

pub fn ring_peer(a: RingPeerArgs) -> anyhow::Result<()> {
    use elf_worker::collective::{Collective, Ring};
    use std::io::{BufRead, Read, Write};
    let ring_l = std::net::TcpListener::bind((a.bind.as_str(), 0))?;
    let raw_l = std::net::TcpListener::bind((a.bind.as_str(), 0))?;
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
