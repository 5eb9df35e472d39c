//! `elf bench status`: what the status page costs the coordinator at one refresh per second,
//! with every bounded list of the page full (1024 curve points, 300 timeline entries, 100
//! evaluations, 64 workers, 50 departed). Three figures: the copy the driver makes (the only
//! time the state is held), the JSON serialisation (on the HTTP task), and a whole `/status`
//! round trip over loopback through the coordinator's HTTP server. The anchor is one core:
//! the ratio is the share of a core one open page takes (target: a few percent).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::out;
use elf_coordinator::board::{
    Board, Departed, Evaluated, Facts, HISTORY_POINTS, Point, RunView, TIMELINE_ENTRIES,
};
use elf_shared::messages::{
    EvalResult, Losses, QuorumStatus, RunStatus, StepTimings, WorkerStatus,
};

/// A board with every list full, and the model's status of a 64-worker run.
fn full_board() -> (Board, RunStatus) {
    let t0 = Instant::now();
    let facts = Facts {
        run: RunView {
            location: "s3://bucket/runs/owt-elf-b".into(),
            model: "ELF-B".into(),
            ..RunView::default()
        },
        samples_per_step: 512,
        tokens_per_step: 512 * 1024,
        flops_per_token: Some(1.05e9),
        peak_flops: Some(9.89e14),
    };
    let mut b = Board::new(facts, t0, 1.7e9);
    for s in 0..HISTORY_POINTS as u64 * 2 - 1 {
        let loss = 3.0 / (1.0 + s as f64).sqrt();
        let p = Point {
            step: s,
            loss,
            ce_loss: loss * 0.3,
            l2_loss: loss * 0.7,
            lr: 1e-3,
            grad_norm: 0.5,
        };
        b.committed(t0, p, 64, 0.4);
    }
    for i in 0..TIMELINE_ENTRIES {
        b.note(
            t0,
            1.7e9,
            i as u64,
            "quorum",
            format!("quorum {i} formed with 64 workers (worker-0, ..., worker-63) (peer_lost)"),
        );
    }
    for i in 0..100 {
        b.evaluated(Evaluated {
            step: i * 1000,
            seconds: 120.0,
            results: vec![EvalResult {
                run: "uncond_sde_32".into(),
                ppl: Some(40.0),
                mean_entropy: Some(5.1),
                ..EvalResult::default()
            }],
        });
    }
    for i in 0..50 {
        b.departed(Departed {
            worker: format!("worker-{i}"),
            how: "evicted",
            cause: "heartbeat_timeout",
            reason: format!("worker worker-{i} missed heartbeats for more than 10000 ms"),
            step: i,
            at_unix: 1.7e9,
        });
    }
    let workers = (0..64)
        .map(|i| WorkerStatus {
            id: format!("worker-{i}"),
            device: "cuda:0".into(),
            collective_addr: format!("10.0.0.{i}:29500"),
            role: "train".into(),
            heartbeat_age_seconds: 0.3,
            last_step: Some(2047),
            rank: Some(i),
            last_timings: Some(StepTimings {
                data_seconds: 0.01,
                compute_seconds: 0.3,
                allreduce_seconds: 0.08,
                allreduce_bytes: 1 << 30,
                step_seconds: 0.4,
            }),
            straggler_ratio: Some(1.0),
            straggler: false,
        })
        .collect();
    let status = RunStatus {
        run_id: "elf-0123456789ab".into(),
        config_hash: "0123456789abcdef".repeat(4),
        phase: "running".into(),
        state: "training".into(),
        state_reason: "step 2048 of 100000 in quorum 7 (64 workers)".into(),
        step: 2048,
        total_steps: 100_000,
        quorum: Some(QuorumStatus {
            id: 7,
            world_size: 64,
            members: (0..64).map(|i| format!("worker-{i}")).collect(),
        }),
        workers,
        last_losses: Losses {
            loss: 0.1,
            ce_loss: 0.03,
            l2_loss: 0.07,
        },
        ..RunStatus::default()
    };
    (b, status)
}

/// Median of `reps` timings of `f`, in seconds.
fn median_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// One `GET path` over a fresh loopback connection (as the page's fetch makes it); returns the
/// body's length.
fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<usize> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = vec![];
    s.read_to_end(&mut resp)?;
    anyhow::ensure!(resp.starts_with(b"HTTP/1.1 200"), "GET {path}: not 200");
    Ok(resp.len())
}

/// Runs the benchmark.
pub fn bench_status(reps: usize) -> anyhow::Result<()> {
    let (board, status) = full_board();
    let now = Instant::now();
    let pending = || {
        (
            vec![2000u64],
            vec![1000u64],
            vec![(900u64, "eval-0".to_string())],
        )
    };
    let copy = median_of(reps, || {
        std::hint::black_box(board.page(now, 1.7e9, status.clone(), 100_000, pending()));
    });
    let page = board.page(now, 1.7e9, status.clone(), 100_000, pending());
    let json = serde_json::to_string(&page)?;
    let ser = median_of(reps, || {
        std::hint::black_box(serde_json::to_string(&page).expect("serialises"));
    });
    // The coordinator's own HTTP server, with the board behind a lock standing in for the
    // driver: the handler copies, releases, then serialises, as `/status` does.
    let shared = Arc::new(Mutex::new((board, status)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let s2 = shared.clone();
    rt.spawn(elf_protocol::http::serve(listener, move |path| {
        let s = s2.clone();
        async move {
            if path == "/" {
                return (
                    200,
                    "text/html; charset=utf-8",
                    elf_coordinator::STATUS_PAGE.to_string(),
                );
            }
            let page = {
                let g = s.lock().expect("not poisoned");
                g.0.page(Instant::now(), 1.7e9, g.1.clone(), 100_000, pending())
            };
            (
                200,
                "application/json",
                serde_json::to_string(&page).expect("serialises"),
            )
        }
    }));
    std::thread::sleep(Duration::from_millis(50));
    let html = get(addr, "/")?;
    let round = median_of(reps, || {
        get(addr, "/status").expect("the server answers");
    });
    let share = round; // one /status per second
    out::line(format!(
        "status page, every list full (64 workers, {HISTORY_POINTS} curve points, {TIMELINE_ENTRIES} timeline entries):"
    ));
    out::line(format!(
        "  /status document {:.0} KiB, page {:.0} KiB",
        json.len() as f64 / 1024.0,
        html as f64 / 1024.0
    ));
    out::line(format!(
        "  driver copy (the only time the state is held): {:.1} us",
        copy * 1e6
    ));
    out::line(format!(
        "  JSON serialisation (HTTP task): {:.1} us",
        ser * 1e6
    ));
    out::line(format!(
        "  /status round trip over loopback (copy, serialise, HTTP, client): {:.2} ms",
        round * 1e3
    ));
    out::line(format!(
        "  at one refresh per second: {:.2}% of one core (anchor: one core; ratio {:.4}, target <= 0.03)",
        share * 100.0,
        share
    ));
    Ok(())
}
