//! The model's decisions, input by input, with the clock in the test's hands.

use std::time::{Duration, Instant};

use elf_shared::config::Config;
use elf_shared::ids::{QuorumId, Step, WorkerId};
use elf_shared::manifest::{ShardEntry, TensorEntry};
use elf_shared::messages::{
    Applied, Directive, EvalOutcome, EvalReport, PROTOCOL_VERSION, Registration, Role,
    ShardOutcome, ShardReport, StateIndex, StepOutcome, StepReport, StepTimings, TrainStep,
    TransferReport,
};
use elf_shared::run::RunFacts;

use super::*;

/// A run of `total` steps over 64 rows, a batch of 8 in branch shards of 2 (world sizes 1, 2
/// and 4 split it), `expected` workers.
fn settings(expected: usize, total: u64) -> Settings {
    settings_for(expected, total, 8, 2)
}

fn settings_for(expected: usize, total: u64, batch: usize, shard: usize) -> Settings {
    let mut c = Config {
        lr: Some(1.0),
        warmup_steps: 4,
        global_batch_size: batch,
        max_length: 4,
        ..Config::default()
    };
    c.train.max_steps = Some(total);
    // Only our sections' cadences, which each test sets (the reference's `save_freq` and
    // `eval_freq` have tests of their own).
    (c.save_freq, c.eval_freq) = (0.0, 0.0);
    c.train.branch_shard_size = shard;
    c.cluster.workers = expected;
    Settings {
        run: RunFacts::derive(&c, 64).unwrap(),
        heartbeat_timeout: Duration::from_secs(5),
        save_interval: 0,
        save_final: false,
        checkpoint_root: "ckpt".into(),
        stop_after: None,
        eval_every: 0,
        eval_at_end: false,
        eval_inline: true,
        save_hold: Duration::from_secs(60),
        farewell_hold: Duration::from_secs(10),
        spans_hosts: false,
        secret: "test".into(),
        skip_nonfinite: 0,
    }
}

fn member(id: &str) -> Registration {
    Registration {
        worker: id.into(),
        device: "cpu".into(),
        collective_addr: format!("127.0.0.1:{}", id.len()),
        role: Role::Train,
        protocol_version: PROTOCOL_VERSION,
    }
}

fn eval_member(id: &str) -> Registration {
    Registration {
        role: Role::Eval,
        ..member(id)
    }
}

fn w(id: &str) -> WorkerId {
    id.into()
}

/// Drives a model with a clock the test moves.
struct Sim {
    m: Model,
    t0: Instant,
    now: Instant,
}

impl Sim {
    fn new(s: Settings) -> Self {
        let t0 = Instant::now();
        Self {
            m: Model::new(s, Step(0)),
            t0,
            now: t0,
        }
    }

    fn at(&mut self, secs: u64) -> &mut Self {
        self.now = self.t0 + Duration::from_secs(secs);
        self
    }

    fn input(&mut self, i: Input) -> Output {
        self.m.handle(self.now, i)
    }

    fn register(&mut self, r: Registration) -> Reply {
        self.input(Input::Register(r)).reply
    }

    fn directive(&mut self, id: &str, after: Option<u64>) -> Directive {
        match self
            .input(Input::NextDirective {
                worker: w(id),
                after: after.map(Step),
            })
            .reply
        {
            Reply::Directive(d) => d,
            r => panic!("{r:?}"),
        }
    }

    fn train(&mut self, id: &str, after: Option<u64>) -> TrainStep {
        match self.directive(id, after) {
            Directive::Train(t) => t,
            d => panic!("{id} was not handed a step: {d:?}"),
        }
    }

    fn heartbeat(&mut self, id: &str) -> bool {
        match self.input(Input::Heartbeat(w(id))).reply {
            Reply::Pulse(p) => p.known,
            r => panic!("{r:?}"),
        }
    }

    fn tick(&mut self) -> Output {
        self.input(Input::Tick)
    }

    /// Lets the others' heartbeat timeout pass: `alive` heartbeat at 4 s, the tick at 6 s
    /// evicts everyone else (registered at 0 s); returns the tick's output.
    fn only_alive(&mut self, alive: &[&str]) -> Output {
        self.at(4);
        for id in alive {
            self.heartbeat(id);
        }
        self.at(6);
        self.tick()
    }

    /// A heartbeat from `id`, then a tick; both outputs merged.
    fn beat_and_tick(&mut self, id: &str) -> Output {
        let mut o = self.input(Input::Heartbeat(w(id)));
        let t = self.tick();
        o.reasons.extend(t.reasons);
        o.effects.extend(t.effects);
        o
    }

    fn report(&mut self, t: &TrainStep, id: &str, outcome: StepOutcome) -> Output {
        self.input(Input::ReportStep(StepReport {
            worker: w(id),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            outcome,
            timings: StepTimings::default(),
        }))
    }

    fn applied(&mut self, t: &TrainStep, id: &str, digest: &str) -> Output {
        self.report(t, id, applied(digest))
    }

    fn manifest_written(&mut self, step: u64, ok: bool) -> Output {
        self.input(Input::ManifestWritten(ManifestWritten {
            step: Step(step),
            dir: format!("ckpt/{step}"),
            commit_error: (!ok).then(|| "store down".to_string()),
            retention_error: None,
        }))
    }

    fn phase(&self) -> &Phase {
        self.m.phase()
    }

    fn status(&mut self) -> elf_shared::messages::RunStatus {
        match self.input(Input::Status).reply {
            Reply::Status(s) => *s,
            r => panic!("{r:?}"),
        }
    }

    fn ranks(&self) -> Vec<String> {
        self.m
            .quorum()
            .unwrap()
            .ranks
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }

    /// Trains `ids` through `step` (every rank reports the digest "x").
    fn commit_step(&mut self, ids: &[&str], step: u64) {
        let after = step.checked_sub(1);
        let ts: Vec<TrainStep> = ids.iter().map(|id| self.train(id, after)).collect();
        for (t, id) in ts.iter().zip(ids) {
            assert_eq!(t.step, Step(step));
            self.applied(t, id, "x");
        }
        assert_eq!(self.m.step(), Step(step + 1), "step {step} did not commit");
    }
}

fn applied(digest: &str) -> StepOutcome {
    StepOutcome::Applied(Applied {
        loss: 1.0,
        param_digest: digest.into(),
        ..Applied::default()
    })
}

fn collective_failed() -> StepOutcome {
    StepOutcome::CollectiveFailed {
        error: "peer rank 1 (127.0.0.1:1) closed the connection during all-reduce".into(),
    }
}

/// Returns the effects of `o` that `f` picks.
fn pick<'a, T>(o: &'a Output, f: impl Fn(&'a Effect) -> Option<&'a T>) -> Vec<&'a T> {
    o.effects.iter().filter_map(f).collect()
}

fn commits(o: &Output) -> Vec<&steps::Commit> {
    pick(o, |e| match e {
        Effect::RecordCommit(c) => Some(c),
        _ => None,
    })
}

fn manifests(o: &Output) -> Vec<&CompletedSave> {
    pick(o, |e| match e {
        Effect::WriteManifest(c) => Some(c),
        _ => None,
    })
}

fn finished(o: &Output) -> Option<&Outcome> {
    pick(o, |e| match e {
        Effect::Finish(x) => Some(x),
        _ => None,
    })
    .first()
    .copied()
}

fn wait_reason(d: &Directive) -> &str {
    match d {
        Directive::Wait { reason } => reason,
        d => panic!("not a wait: {d:?}"),
    }
}

#[test]
fn quorum_forms_when_expected_workers_register_ranked_by_id() {
    let mut s = Sim::new(settings(2, 3));
    s.register(member("w1"));
    let d = s.directive("w1", None);
    assert_eq!(wait_reason(&d), "waiting for 2 workers, 1 registered");
    s.register(member("w0"));
    assert_eq!(s.ranks(), ["w0", "w1"]);
    let d0 = s.train("w0", None);
    let d1 = s.train("w1", None);
    assert_eq!((d0.rank, d1.rank), (0, 1));
    assert_eq!(d0.rows.len(), 4);
    assert_eq!((d0.first_position, d1.first_position), (0, 4));
    let all: Vec<u64> = d0.rows.iter().chain(&d1.rows).copied().collect();
    assert_eq!(all, s.m.settings().run.plan.global_batch(0));
    assert_eq!(d0.lr, 0.0, "first update has lr 0 during warmup");
}

#[test]
fn a_step_commits_only_when_every_rank_reported_the_same_digest() {
    let mut s = Sim::new(settings(2, 2));
    s.register(member("a"));
    s.register(member("b"));
    let (da, db) = (s.train("a", None), s.train("b", None));
    assert!(commits(&s.applied(&da, "a", "x")).is_empty());
    assert_eq!(wait_reason(&s.directive("a", Some(0))), "step 0 in flight");
    let o = s.applied(&db, "b", "x");
    let c = commits(&o);
    assert_eq!((c[0].step, c[0].reports.len()), (Step(0), 2));
    let d = s.train("a", Some(0));
    assert_eq!(d.step, Step(1));
    assert_eq!(d.lr, 0.25);
    let db = s.train("b", Some(0));
    s.applied(&d, "a", "y");
    s.applied(&db, "b", "z");
    match s.phase() {
        Phase::Failed(why) => assert!(
            why.starts_with("replicas diverged at step 1: rank 1"),
            "{why}"
        ),
        p => panic!("{p:?}"),
    }
    assert!(matches!(s.directive("a", Some(1)), Directive::Stop { .. }));
}

#[test]
fn the_last_commit_finishes_the_run() {
    let mut s = Sim::new(settings(1, 1));
    s.register(member("solo"));
    let d = s.train("solo", None);
    assert_eq!(d.world_size, 1);
    assert_eq!(d.rows.len(), 8);
    assert_eq!(commits(&s.applied(&d, "solo", "x")).len(), 1);
    assert_eq!(s.phase(), &Phase::Done);
    assert_eq!(
        s.directive("solo", Some(0)),
        Directive::Done {
            steps: 1,
            write_outputs: true
        }
    );
}

#[test]
fn a_silent_worker_is_evicted_and_the_survivors_redo_the_step_re_sliced() {
    let mut s = Sim::new(settings(2, 5));
    s.register(member("a"));
    s.register(member("b"));
    // Step 0 handed to both; b vanishes; a's all-reduce fails.
    let (da, _db) = (s.train("a", None), s.train("b", None));
    s.report(&da, "a", collective_failed());
    assert_eq!(
        s.phase(),
        &Phase::Running,
        "a lost peer does not fail the run"
    );
    assert!(wait_reason(&s.directive("a", None)).contains("re-forming"));
    s.at(3);
    assert!(s.heartbeat("a"));
    assert!(s.tick().reasons.is_empty());
    s.at(6);
    assert_eq!(
        s.tick().reasons,
        [
            "worker b missed heartbeats for more than 5000 ms",
            "quorum 2 formed with 1 workers (a); step 0 is redone"
        ]
    );
    assert!(!s.heartbeat("b"));
    // a redoes step 0 alone, with the whole global batch.
    let d = s.train("a", None);
    assert_eq!((d.step, d.quorum, d.world_size), (Step(0), QuorumId(2), 1));
    assert_eq!(d.rows, s.m.settings().run.plan.global_batch(0));
    // b's late report of the old quorum is refused.
    let late = s.input(Input::ReportStep(StepReport {
        worker: w("b"),
        step: Step(0),
        quorum: QuorumId(1),
        rank: 1,
        outcome: applied("x"),
        timings: StepTimings::default(),
    }));
    assert!(matches!(late.reply, Reply::Refused(_)), "{late:?}");
    assert_eq!(commits(&s.applied(&d, "a", "y"))[0].step, Step(0));
}

#[test]
fn survivors_that_cannot_all_reduce_with_everyone_alive_re_form_after_the_timeout() {
    let mut s = Sim::new(settings(2, 5));
    s.register(member("a"));
    s.register(member("b"));
    let da = s.train("a", None);
    s.report(&da, "a", collective_failed());
    for t in [3, 6] {
        s.at(t);
        s.heartbeat("a");
        s.heartbeat("b");
        s.tick();
    }
    assert_eq!(s.m.quorum().unwrap().id, QuorumId(2));
    assert_eq!(s.ranks(), ["a", "b"]);
    assert!(matches!(s.directive("b", None), Directive::Train(_)));
}

#[test]
fn losing_every_training_worker_fails_the_run_naming_them() {
    let mut s = Sim::new(settings(1, 5));
    s.register(member("a"));
    s.at(6);
    let why = s.tick().reasons;
    assert_eq!(why, ["worker a missed heartbeats for more than 5000 ms"]);
    assert_eq!(
        s.phase(),
        &Phase::Failed(
            "worker a missed heartbeats for more than 5000 ms; no training worker is left at step 0"
                .into()
        )
    );
}

fn shard(id: &str, step: u64, rank: u32, world: u32) -> ShardReport {
    ShardReport {
        worker: w(id),
        step: Step(step),
        quorum: QuorumId(1),
        rank,
        world_size: world,
        outcome: ShardOutcome::Uploaded {
            entry: ShardEntry {
                file: format!("shard-{rank}"),
                sha256: "00".into(),
                size: 1,
                start: 0,
                len: 0,
            },
            index: (rank == 0).then(|| StateIndex {
                tensors: vec![TensorEntry {
                    name: "params/w".into(),
                    shape: vec![1],
                    offset: 0,
                }],
                numel: 1,
                optimizer_count: step + 1,
            }),
        },
    }
}

#[test]
fn saves_complete_when_every_shard_and_the_commit_are_in() {
    let mut f = settings(2, 4);
    f.save_interval = 2;
    f.stop_after = Some(3);
    f.save_final = true;
    assert_eq!(f.end(), 3);
    assert!(!f.saves_after(Step(0)) && f.saves_after(Step(1)) && f.saves_after(Step(2)));
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    for step in 0..2u64 {
        let (da, db) = (
            s.train("a", step.checked_sub(1)),
            s.train("b", step.checked_sub(1)),
        );
        assert_eq!(da.save_to.is_some(), step == 1);
        if step == 1 {
            assert_eq!(da.save_to.as_deref(), Some("ckpt/step-000000001"));
            // Shards may arrive before the step commits.
            assert!(manifests(&s.input(Input::ReportShard(shard("a", 1, 0, 2)))).is_empty());
            let o = s.input(Input::ReportShard(shard("b", 1, 1, 2)));
            assert!(manifests(&o).is_empty(), "not committed yet");
        }
        s.applied(&da, "a", "x");
        let o = s.applied(&db, "b", "x");
        if step == 1 {
            let saves = manifests(&o);
            assert_eq!(saves.len(), 1);
            let c = saves[0];
            assert_eq!(
                (
                    c.step,
                    c.shards.len(),
                    c.commit.step,
                    c.shards[0].file.as_str()
                ),
                (Step(1), 2, Step(1), "shard-0")
            );
            assert_eq!(c.index.optimizer_count, 2);
        }
    }
    let mut bad = shard("a", 2, 0, 2);
    bad.outcome = ShardOutcome::Failed {
        error: "store timed out".into(),
    };
    let o = s.input(Input::ReportShard(bad));
    assert_eq!(
        o.reasons,
        ["worker a could not save step 2: store timed out"]
    );
    assert!(o.effects.iter().any(|e| matches!(
        e,
        Effect::Event(Event::CheckpointFailed { reason }) if reason.contains("store timed out")
    )));
}

#[test]
fn bad_registrations_and_stale_reports_are_refused_with_reasons() {
    let mut s = Sim::new(settings(1, 3));
    let mut old = member("x");
    old.protocol_version = 0;
    match s.register(old) {
        Reply::Refused(r) => assert_eq!(
            r.to_string(),
            "worker x speaks protocol 0, the coordinator speaks 2"
        ),
        r => panic!("{r:?}"),
    }
    s.register(member("a"));
    // A late worker is admitted as a standby until a peer's state is copied to it.
    s.register(member("late"));
    assert!(!s.m.members().get(&w("late")).unwrap().synced);
    let d = s.directive("a", None);
    assert!(matches!(d, Directive::SendState { .. }), "{d:?}");
    s.input(Input::ReportTransfer(TransferReport {
        worker: w("a"),
        step: Step(0),
        sender: true,
        error: None,
    }));
    s.input(Input::ReportTransfer(TransferReport {
        worker: w("late"),
        step: Step(0),
        sender: false,
        error: Some("no donor connected within 3000 ms".into()),
    }));
    assert!(
        !s.m.members().contains(&w("late")),
        "a failed join drops the joiner"
    );
    let d = s.train("a", None);
    let mut r = StepReport {
        worker: w("a"),
        step: Step(7),
        quorum: d.quorum,
        rank: d.rank,
        outcome: applied("x"),
        timings: StepTimings::default(),
    };
    match s.input(Input::ReportStep(r.clone())).reply {
        Reply::Refused(e) => assert!(e.to_string().starts_with("stale report from a (step 7")),
        x => panic!("{x:?}"),
    }
    r.step = Step(0);
    r.outcome = StepOutcome::Failed {
        error: "peer rank 1 closed the connection".into(),
    };
    s.input(Input::ReportStep(r));
    assert_eq!(
        s.phase(),
        &Phase::Failed("worker a failed step 0: peer rank 1 closed the connection".into())
    );
}

#[test]
fn eval_jobs_follow_every_k_committed_checkpoints_and_the_last() {
    let mut f = settings(2, 6);
    (f.eval_every, f.eval_at_end) = (2, true);
    let mut s = Sim::new(f);
    for (step, ok) in [(0, true), (1, false), (2, true), (3, true), (5, true)] {
        s.manifest_written(step, ok);
    }
    // Committed: 0, 2, 3, 5 -> the 2nd (2), the 4th (5), and 5 is also the last.
    assert_eq!(s.m.evals.queued(), [Step(2), Step(5)]);
}

fn eval_done(s: &mut Sim, id: &str, step: u64) -> Output {
    s.input(Input::ReportEval(EvalReport {
        worker: w(id),
        step: Step(step),
        seconds: 1.0,
        outcome: EvalOutcome::Scored(vec![]),
    }))
}

#[test]
fn an_eval_worker_takes_jobs_and_training_never_waits_for_it() {
    let mut f = settings(2, 4);
    f.eval_every = 1;
    // Jobs wait for an eval worker (else rank 0 would take the requeued job at once).
    f.eval_inline = false;
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    s.register(eval_member("e"));
    assert_eq!(s.ranks(), ["a", "b"], "eval workers do not train");
    assert!(matches!(s.directive("e", None), Directive::Wait { .. }));
    s.commit_step(&["a", "b"], 0);
    s.manifest_written(0, true);
    assert_eq!(
        s.directive("e", None),
        Directive::Eval(EvalJob {
            step: Step(0),
            dir: "ckpt/0".into()
        })
    );
    // Training goes on while the job runs.
    s.commit_step(&["a", "b"], 1);
    assert_eq!(s.m.evals.outstanding(), 1);
    // A stale or foreign report is refused; the right one is recorded, then complete.
    assert!(matches!(eval_done(&mut s, "a", 0).reply, Reply::Refused(_)));
    let o = eval_done(&mut s, "e", 0);
    assert!(
        matches!(o.effects[..], [Effect::RecordEval { .. }]),
        "{o:?}"
    );
    assert_eq!(s.m.evals.outstanding(), 1, "outstanding until recorded");
    s.input(Input::EvalRecorded {
        worker: w("e"),
        step: Step(0),
    });
    assert_eq!(s.m.evals.outstanding(), 0);
    // A silent eval worker's job goes back to the queue.
    s.manifest_written(1, true);
    assert!(matches!(s.directive("e", None), Directive::Eval(_)));
    s.only_alive(&["a", "b"]);
    assert!(!s.m.members().has_eval_worker());
    assert_eq!(s.m.evals.queued(), [Step(1)]);
}

#[test]
fn without_an_eval_worker_rank_0_evaluates_at_a_step_boundary_only() {
    let mut f = settings(2, 3);
    (f.eval_every, f.eval_at_end, f.save_final) = (1, true, true);
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    // b was handed step 1 before the checkpoint of step 0 committed: no eval until step 1
    // is done, or a would leave b waiting in the all-reduce.
    let db = s.train("b", Some(0));
    s.manifest_written(0, true);
    let da = s.train("a", Some(0));
    assert_eq!(da.step, Step(1));
    s.applied(&da, "a", "x");
    s.applied(&db, "b", "x");
    // At the boundary: b waits, a evaluates, then step 2 goes on.
    assert!(matches!(s.directive("b", Some(1)), Directive::Wait { .. }));
    assert_eq!(
        s.directive("a", Some(1)),
        Directive::Eval(EvalJob {
            step: Step(0),
            dir: "ckpt/0".into()
        })
    );
    assert_eq!(
        wait_reason(&s.directive("b", Some(1))),
        "rank 0 is evaluating step 0"
    );
    eval_done(&mut s, "a", 0);
    s.input(Input::EvalRecorded {
        worker: w("a"),
        step: Step(0),
    });
    s.commit_step(&["a", "b"], 2);
    assert_eq!(s.phase(), &Phase::Done);
    // The run is over but its last checkpoint is still on its way: the workers are held,
    // then rank 0 evaluates it, then everyone is done.
    assert!(matches!(s.directive("a", Some(2)), Directive::Wait { .. }));
    s.input(Input::ReportShard(shard("a", 2, 0, 2)));
    let o = s.input(Input::ReportShard(shard("b", 2, 1, 2)));
    assert_eq!(manifests(&o).len(), 1);
    assert!(matches!(s.directive("b", Some(2)), Directive::Wait { .. }));
    s.manifest_written(2, true);
    assert!(matches!(s.directive("b", Some(2)), Directive::Wait { .. }));
    assert!(matches!(s.directive("a", Some(2)), Directive::Eval(j) if j.step == Step(2)));
    eval_done(&mut s, "a", 2);
    s.input(Input::EvalRecorded {
        worker: w("a"),
        step: Step(2),
    });
    assert!(matches!(s.directive("a", Some(2)), Directive::Done { .. }));
    assert!(matches!(s.directive("b", Some(2)), Directive::Done { .. }));
}

/// Three workers a, b, c (a batch of 24 in shards of 4 splits over 3, 2 or 1 of them) that
/// committed step 0 and were each handed step 1.
fn three_in_step_1(f: Settings) -> (Sim, TrainStep, TrainStep) {
    let mut s = Sim::new(f);
    for id in ["a", "b", "c"] {
        s.register(member(id));
    }
    s.commit_step(&["a", "b", "c"], 0);
    let (da, db, _dc) = (
        s.train("a", Some(0)),
        s.train("b", Some(0)),
        s.train("c", Some(0)),
    );
    (s, da, db)
}

/// The fault of issue 10: a peer dies late in the ring, after one survivor's all-reduce
/// completed. That survivor applied a correct step; the run commits it and brings the other
/// survivor to the same state by a copy, instead of stopping either of them.
#[test]
fn a_step_applied_by_some_survivors_commits_and_the_others_rejoin_by_a_copy() {
    let (mut s, da, db) = three_in_step_1(settings_for(3, 6, 24, 4));
    // c dies in the all-gather: a had everything it needed, b did not.
    assert!(commits(&s.applied(&da, "a", "x1")).is_empty());
    s.report(&db, "b", collective_failed());
    assert!(
        wait_reason(&s.directive("a", Some(1))).contains("re-forming"),
        "nothing is decided while c may still report"
    );
    let o = s.only_alive(&["a", "b"]);
    assert_eq!(
        o.reasons,
        [
            "worker c missed heartbeats for more than 5000 ms",
            "quorum 2 formed with 1 workers (a); step 1 committed by the survivors that applied it (b will receive a peer's state)"
        ]
    );
    let c = commits(&o);
    assert_eq!((c[0].step, c[0].reports.len()), (Step(1), 1));
    assert_eq!(s.phase(), &Phase::Running);
    assert_eq!(s.m.step(), Step(2));
    // b receives a's state at the boundary of step 2, then both train it.
    let Directive::SendState { step, to, key } = s.directive("a", Some(1)) else {
        panic!("a sends no state")
    };
    assert_eq!((step, to.as_str()), (Step(2), "127.0.0.1:1"));
    let Directive::ReceiveState { key: theirs, .. } = s.directive("b", Some(0)) else {
        panic!("b receives no state")
    };
    assert_eq!(key, theirs, "both sides of a copy hold its key");
    assert_ne!(
        key,
        s.m.settings().key("ring 1"),
        "a copy's key is not a ring's"
    );
    assert!(matches!(
        s.directive("b", Some(0)),
        Directive::ReceiveState { step: Step(2), .. }
    ));
    for (id, sender) in [("a", true), ("b", false)] {
        s.input(Input::ReportTransfer(TransferReport {
            worker: w(id),
            step: Step(2),
            sender,
            error: None,
        }));
    }
    assert_eq!(s.ranks(), ["a", "b"]);
    s.commit_step(&["a", "b"], 2);
}

#[test]
fn a_step_every_survivor_applied_commits_without_a_copy() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let _da = s.train("a", None);
    let db = s.train("b", None);
    // a is killed after its all-reduce finished; b applied it too.
    s.applied(&db, "b", "x");
    s.at(4);
    s.heartbeat("b");
    let o = s.tick();
    assert_eq!(
        commits(&o).len(),
        0,
        "a may still report: nothing is broken yet"
    );
    s.at(6);
    let o = s.tick();
    assert_eq!(
        o.reasons[0],
        "worker a missed heartbeats for more than 5000 ms"
    );
    assert_eq!(commits(&o)[0].step, Step(0));
    assert_eq!(s.ranks(), ["b"]);
    s.commit_step(&["b"], 1);
}

#[test]
fn survivors_that_applied_different_states_fail_the_run() {
    let mut s = Sim::new(settings(2, 6));
    for id in ["a", "b"] {
        s.register(member(id));
    }
    let (da, db) = (s.train("a", None), s.train("b", None));
    s.applied(&da, "a", "x");
    s.applied(&db, "b", "y");
    match s.phase() {
        Phase::Failed(why) => assert!(why.starts_with("replicas diverged at step 0"), "{why}"),
        p => panic!("{p:?}"),
    }
}

#[test]
fn a_broken_quorum_waits_for_every_live_member_that_was_handed_the_step() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let da = s.train("a", None);
    let db = s.train("b", None);
    s.report(&da, "a", collective_failed());
    // Past the transient timeout, but b (alive, handed the step) has not said what it did.
    s.at(6);
    s.heartbeat("a");
    s.heartbeat("b");
    assert!(s.tick().reasons.is_empty());
    assert!(s.heartbeat("b"));
    let o = s.applied(&db, "b", "x");
    assert_eq!(commits(&o)[0].step, Step(0), "b applied it: it commits");
    assert_eq!(s.ranks(), ["b"]);
    assert!(matches!(
        s.directive("a", None),
        Directive::ReceiveState { .. }
    ));
}

#[test]
fn a_broken_quorum_past_its_timeout_waits_for_reports_not_for_time() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let da = s.train("a", None);
    let _db = s.train("b", None);
    s.report(&da, "a", collective_failed());
    let wait = s.t0 + Duration::from_secs(5) + Duration::from_millis(1);
    s.at(2);
    s.heartbeat("a");
    s.heartbeat("b");
    assert_eq!(
        s.m.next_deadline(s.now),
        Some(wait),
        "the transient fault's wait"
    );
    // Past it, b (alive, handed the step) has still not reported: the next deadline is an
    // eviction, never one already past (the driver would spin on it).
    s.at(6);
    s.heartbeat("a");
    s.heartbeat("b");
    s.tick();
    let next = s.m.next_deadline(s.now).unwrap();
    assert!(next > s.now, "{next:?} is not after {:?}", s.now);
}

#[test]
fn a_long_poll_never_changes_membership() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let da = s.train("a", None);
    s.report(&da, "a", collective_failed());
    // Long past a's timeout, only reads (and b's heartbeats): nobody is evicted, the quorum
    // stays.
    s.at(60);
    s.heartbeat("b");
    for _ in 0..3 {
        for id in ["a", "b"] {
            s.directive(id, None);
        }
        let stranger = s.input(Input::NextDirective {
            worker: w("stranger"),
            after: None,
        });
        assert!(matches!(
            stranger.reply,
            Reply::Refused(Refusal::NotRegistered(_))
        ));
        s.input(Input::Status);
    }
    assert!(s.m.members().contains(&w("b")));
    assert_eq!(s.m.quorum().unwrap().id, QuorumId(1));
    // The tick decides.
    assert_eq!(
        s.tick().reasons,
        [
            "worker a missed heartbeats for more than 5000 ms",
            "quorum 2 formed with 1 workers (b); step 0 is redone"
        ]
    );
}

#[test]
fn a_done_run_waits_for_its_last_save_then_for_its_workers_to_hear_it() {
    let mut f = settings(1, 1);
    f.save_final = true;
    let mut s = Sim::new(f);
    s.register(member("a"));
    let d = s.train("a", None);
    let o = s.applied(&d, "a", "x");
    assert!(finished(&o).is_none(), "the last save is on its way");
    assert_eq!(
        s.m.next_deadline(s.now),
        Some(s.t0 + Duration::from_secs(5) + Duration::from_millis(1)),
        "the first deadline is a's heartbeat"
    );
    s.at(3);
    s.heartbeat("a");
    s.input(Input::ReportShard(shard("a", 0, 0, 1)));
    let o = s.manifest_written(0, true);
    assert!(
        finished(&o).is_none(),
        "a has not heard that the run is done"
    );
    let o = s.input(Input::NextDirective {
        worker: w("a"),
        after: Some(Step(0)),
    });
    assert_eq!(finished(&o), Some(&Outcome::Done { steps: 1 }));
    assert!(finished(&s.tick()).is_none(), "the run ends once");
}

#[test]
fn the_end_of_run_holds_expire() {
    let mut f = settings(1, 1);
    f.save_final = true;
    let mut s = Sim::new(f);
    s.register(member("a"));
    let d = s.train("a", None);
    s.applied(&d, "a", "x");
    // The shard never comes and a never asks again: 60 s for the save, then 10 s for a.
    for t in [4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56] {
        s.at(t);
        assert!(finished(&s.beat_and_tick("a")).is_none(), "ended at {t} s");
    }
    s.at(61);
    let o = s.beat_and_tick("a");
    assert!(finished(&o).is_none());
    assert!(
        o.reasons[0].contains("the last checkpoint was not complete 60 s"),
        "{:?}",
        o.reasons
    );
    assert_eq!(s.m.next_deadline(s.now).map(|d| d > s.now), Some(true));
    s.at(65);
    assert!(finished(&s.beat_and_tick("a")).is_none());
    s.at(71);
    assert_eq!(
        finished(&s.beat_and_tick("a")),
        Some(&Outcome::Done { steps: 1 })
    );
}

#[test]
fn a_failed_run_ends_once_its_workers_heard_it() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let da = s.train("a", None);
    let o = s.report(
        &da,
        "a",
        StepOutcome::Failed {
            error: "negative token id".into(),
        },
    );
    assert!(finished(&o).is_none());
    assert!(matches!(s.directive("a", Some(0)), Directive::Stop { .. }));
    let o = s.input(Input::NextDirective {
        worker: w("b"),
        after: None,
    });
    assert_eq!(
        finished(&o),
        Some(&Outcome::Failed(
            "worker a failed step 0: negative token id".into()
        ))
    );
}

#[test]
fn a_save_that_failed_before_its_step_committed_is_not_reopened_by_the_commit() {
    let mut f = settings(1, 4);
    f.save_interval = 1;
    let mut s = Sim::new(f);
    s.register(member("a"));
    let d = s.train("a", None);
    let mut failed = shard("a", 0, 0, 1);
    failed.outcome = ShardOutcome::Failed {
        error: "store timed out".into(),
    };
    assert_eq!(s.input(Input::ReportShard(failed)).reasons.len(), 1);
    let o = s.applied(&d, "a", "x");
    assert!(manifests(&o).is_empty());
    assert!(
        !s.m.saves.saving(),
        "nothing can complete the save of step 0"
    );
}

#[test]
fn a_worker_left_out_of_a_quorum_is_a_standby_until_a_copy() {
    // Three register for a run of two: the third is not synced, and joins by a copy at the
    // first boundary where the batch splits three ways (8 does not: it stays a standby).
    let mut s = Sim::new(settings(2, 6));
    for id in ["a", "b", "c"] {
        s.register(member(id));
    }
    assert_eq!(s.ranks(), ["a", "b"]);
    assert!(!s.m.members().get(&w("c")).unwrap().synced);
    assert!(wait_reason(&s.directive("c", None)).starts_with("standby"));
    s.commit_step(&["a", "b"], 0);
    assert!(wait_reason(&s.directive("c", None)).starts_with("standby"));
}

#[test]
fn a_quorum_member_that_registers_again_rejoins_by_a_copy() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    assert_eq!(
        s.register(member("b")),
        Reply::Admitted {
            load_checkpoint: true
        }
    );
    let (da, _db) = (s.train("a", None), s.train("b", None));
    s.applied(&da, "a", "x");
    // b's process restarted (or reconnected) and registers again: it holds no run state, and
    // its old process will never report step 0.
    assert_eq!(
        s.register(member("b")),
        Reply::Admitted {
            load_checkpoint: false
        }
    );
    assert!(matches!(s.directive("b", None), Directive::Wait { .. }));
    s.at(6);
    s.heartbeat("a");
    s.heartbeat("b");
    let o = s.tick();
    assert_eq!(commits(&o)[0].step, Step(0), "a applied it: it commits");
    assert_eq!(s.ranks(), ["a"]);
    assert!(matches!(
        s.directive("b", None),
        Directive::ReceiveState { step: Step(1), .. }
    ));
}

#[test]
fn a_dead_workers_applied_report_does_not_carry_the_run() {
    let mut s = Sim::new(settings_for(3, 6, 24, 4));
    for id in ["a", "b", "c"] {
        s.register(member(id));
    }
    let (da, db, dc) = (s.train("a", None), s.train("b", None), s.train("c", None));
    // c completed and reported, then died; a and b did not complete.
    s.applied(&dc, "c", "x");
    s.report(&da, "a", collective_failed());
    s.report(&db, "b", collective_failed());
    let o = s.only_alive(&["a", "b"]);
    assert!(commits(&o).is_empty(), "nobody alive holds c's state");
    assert_eq!(
        o.reasons[1],
        "quorum 2 formed with 2 workers (a, b); step 0 is redone"
    );
    s.commit_step(&["a", "b"], 0);
}

#[test]
fn the_last_step_committed_by_survivors_makes_them_the_final_quorum() {
    let mut f = settings_for(3, 2, 24, 4);
    f.save_final = true;
    let (mut s, da, db) = three_in_step_1(f);
    s.report(&db, "b", collective_failed());
    s.applied(&da, "a", "x");
    s.input(Input::ReportShard(shard("a", 1, 0, 3)));
    let o = s.only_alive(&["a", "b"]);
    assert_eq!(commits(&o)[0].step, Step(1));
    assert!(
        o.reasons
            .iter()
            .any(|r| r.contains("checkpoint of step 1 abandoned")),
        "b never saves a step it did not apply: {:?}",
        o.reasons
    );
    assert_eq!(s.phase(), &Phase::Done);
    assert_eq!(s.ranks(), ["a"], "the final quorum holds the final state");
    assert_eq!(
        s.directive("a", Some(1)),
        Directive::Done {
            steps: 2,
            write_outputs: true
        }
    );
    assert_eq!(
        s.directive("b", Some(0)),
        Directive::Done {
            steps: 2,
            write_outputs: false
        }
    );
    assert!(
        !s.m.saves.saving(),
        "no save waits for a shard that never comes"
    );
}

#[test]
fn a_done_run_evaluates_on_a_live_rank_when_rank_0_is_lost() {
    let mut f = settings(2, 1);
    (f.eval_at_end, f.save_final) = (true, true);
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    s.input(Input::ReportShard(shard("a", 0, 0, 2)));
    s.input(Input::ReportShard(shard("b", 0, 1, 2)));
    s.manifest_written(0, true);
    assert!(matches!(s.directive("a", Some(0)), Directive::Eval(_)));
    // a dies while evaluating; b takes the job over.
    s.only_alive(&["b"]);
    assert!(matches!(s.directive("b", Some(0)), Directive::Eval(j) if j.step == Step(0)));
}

#[test]
fn a_transfer_report_from_the_wrong_side_is_refused() {
    let mut s = Sim::new(settings(1, 3));
    s.register(member("a"));
    s.register(member("late"));
    assert!(matches!(
        s.directive("a", None),
        Directive::SendState { .. }
    ));
    let wrong = s.input(Input::ReportTransfer(TransferReport {
        worker: w("a"),
        step: Step(0),
        sender: false,
        error: Some("not mine".into()),
    }));
    assert!(matches!(wrong.reply, Reply::Refused(_)), "{wrong:?}");
    assert!(s.m.members().contains(&w("late")), "the joiner stays");
}

#[test]
fn an_expired_save_hold_lets_the_workers_hear_the_end() {
    let mut f = settings(1, 1);
    (f.save_final, f.eval_at_end) = (true, true);
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.commit_step(&["a"], 0);
    assert!(matches!(s.directive("a", Some(0)), Directive::Wait { .. }));
    s.at(61);
    s.beat_and_tick("a");
    assert!(
        matches!(s.directive("a", Some(0)), Directive::Done { .. }),
        "the shard never came: the workers are told the run is done"
    );
}

#[test]
fn shards_of_an_attempt_that_was_redone_are_stale() {
    let mut f = settings(2, 6);
    f.save_interval = 1;
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    let (da, _db) = (s.train("a", None), s.train("b", None));
    // Step 0 fails in quorum 1 and is redone by quorum 2 (a alone); a shard of quorum 1's
    // attempt that arrives late must not mix into quorum 2's checkpoint.
    s.report(&da, "a", collective_failed());
    s.at(6);
    s.heartbeat("a");
    s.tick();
    assert_eq!(s.ranks(), ["a"]);
    let d = s.train("a", None);
    assert_eq!(d.quorum, QuorumId(2));
    let mut fresh = shard("a", 0, 0, 1);
    fresh.quorum = QuorumId(2);
    s.input(Input::ReportShard(fresh));
    let stale = shard("b", 0, 1, 2);
    assert!(s.input(Input::ReportShard(stale)).effects.is_empty());
    let o = s.applied(&d, "a", "y");
    let saves = manifests(&o);
    assert_eq!(saves.len(), 1, "{o:?}");
    assert_eq!(saves[0].shards.len(), 1, "only quorum 2's shard");
}

fn leave(s: &mut Sim, id: &str, error: Option<&str>, invalid_config: bool) -> Output {
    s.input(Input::Leave(Leave {
        worker: w(id),
        error: error.map(str::to_string),
        invalid_config,
    }))
}

fn is_done_for(d: &Directive) -> bool {
    matches!(
        d,
        Directive::Done {
            write_outputs: false,
            ..
        }
    )
}

#[test]
fn a_worker_leaving_mid_step_finishes_it_and_the_rest_go_on_without_a_redo() {
    let mut s = Sim::new(settings(4, 6));
    for id in ["a", "b", "c", "d"] {
        s.register(member(id));
    }
    s.commit_step(&["a", "b", "c", "d"], 0);
    let ts: Vec<TrainStep> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| s.train(id, Some(0)))
        .collect();
    // SIGTERM on d while step 1 is in flight: it trains step 1 with its peers.
    let o = leave(&mut s, "d", None, false);
    assert_eq!(o.reasons, ["worker d leaves after step 1 commits"]);
    assert_eq!(s.m.quorum().unwrap().id, QuorumId(1));
    for (t, id) in ts.iter().zip(["a", "b", "c", "d"]) {
        s.applied(t, id, "x");
    }
    // Step 1 committed by all four; the next quorum has the other three... which do not
    // split a batch of 8: the largest world size that does is 2.
    assert_eq!(s.m.step(), Step(2));
    assert_eq!(s.ranks(), ["a", "b"]);
    assert!(is_done_for(&s.directive("d", Some(1))));
    let t = s.train("a", Some(1));
    assert_eq!(
        (t.step, t.world_size, t.quorum),
        (Step(2), 2, QuorumId(2)),
        "no step is redone"
    );
    assert!(!s.m.members().contains(&w("d")));
}

#[test]
fn a_worker_leaving_at_a_step_boundary_leaves_at_once() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    let o = leave(&mut s, "b", None, false);
    assert_eq!(
        o.reasons,
        [
            "worker b left the run",
            "quorum 2 formed with 1 workers (a) after a leave at step 1"
        ]
    );
    assert_eq!(s.train("a", Some(0)).world_size, 1);
    assert!(is_done_for(&s.directive("b", Some(0))));
    // Leaving again, or after the fact, changes nothing.
    assert!(leave(&mut s, "b", None, false).reasons.is_empty());
}

#[test]
fn a_failed_worker_is_removed_at_once_and_its_error_reaches_the_status() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    let ta = s.train("a", None);
    s.train("b", None);
    let o = leave(
        &mut s,
        "b",
        Some("dataset row 3: negative token id -4"),
        false,
    );
    assert_eq!(
        o.reasons[0],
        "worker b failed: dataset row 3: negative token id -4"
    );
    assert!(!s.m.members().contains(&w("b")));
    // a's ring broke with b: nobody applied step 0, so a redoes it alone.
    let o = s.report(&ta, "a", collective_failed());
    assert!(
        o.reasons.iter().any(|r| r.contains("step 0 is redone")),
        "{o:?}"
    );
    let Reply::Status(st) = s.input(Input::Status).reply else {
        panic!()
    };
    assert_eq!(st.worker_errors.len(), 1);
    assert_eq!(st.worker_errors[0].worker, "b");
    assert_eq!(
        st.worker_errors[0].error,
        "dataset row 3: negative token id -4"
    );
}

#[test]
fn a_worker_that_cannot_reach_the_configs_paths_fails_a_run_that_has_not_started() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    let o = leave(&mut s, "a", Some("data_path /x: not reachable"), true);
    assert_eq!(
        s.phase(),
        &Phase::Failed("worker a: data_path /x: not reachable".into())
    );
    // Nobody else to tell: the run ends at once, as invalid (exit code 3).
    assert_eq!(
        finished(&o),
        Some(&Outcome::Invalid(
            "worker a: data_path /x: not reachable".into()
        ))
    );
}

#[test]
fn an_evicted_worker_that_comes_back_is_told_to_register_and_rejoins_as_a_standby() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    // b's link goes down: evicted; a goes on alone.
    s.only_alive(&["a"]);
    assert!(matches!(
        s.input(Input::NextDirective {
            worker: w("b"),
            after: Some(Step(0)),
        })
        .reply,
        Reply::Refused(Refusal::NotRegistered(_))
    ));
    // It registers again by itself: a standby until a peer's state is copied to it.
    assert_eq!(
        s.register(member("b")),
        Reply::Admitted {
            load_checkpoint: false
        }
    );
    assert!(matches!(
        s.directive("b", None),
        Directive::Wait { .. } | Directive::ReceiveState { .. }
    ));
}

#[test]
fn a_cluster_across_hosts_refuses_addresses_only_their_own_host_reaches() {
    let mut f = settings(1, 2);
    f.spans_hosts = true;
    let mut s = Sim::new(f);
    for addr in [
        "127.0.0.1:7000",
        "0.0.0.0:7000",
        "[::1]:7000",
        "localhost:7000",
    ] {
        let r = Registration {
            collective_addr: addr.into(),
            ..member("a")
        };
        let Reply::Refused(e) = s.register(r) else {
            panic!("{addr} was admitted")
        };
        assert!(e.to_string().contains("--advertise"), "{e}");
    }
    for addr in ["10.1.2.3:7000", "w0.elf.svc:7000"] {
        let r = Registration {
            collective_addr: addr.into(),
            ..member("a")
        };
        assert!(matches!(s.register(r), Reply::Admitted { .. }), "{addr}");
    }
    // On one host, loopback is what it should be.
    let mut s = Sim::new(settings(1, 2));
    assert!(matches!(s.register(member("a")), Reply::Admitted { .. }));
}

#[test]
fn sigterm_saves_the_next_step_boundary_then_stops_without_telling_anyone_the_run_is_done() {
    let mut s = Sim::new(settings(2, 20));
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    // Step 1 is in flight (handed out without a save): the last save is of step 2.
    let ta = s.train("a", Some(0));
    let tb = s.train("b", Some(0));
    assert_eq!(ta.save_to, None);
    let o = s.input(Input::Terminate);
    assert_eq!(
        o.reasons,
        ["SIGTERM: stopping after step 2 with a checkpoint; a restart resumes from it"]
    );
    s.applied(&ta, "a", "x");
    s.applied(&tb, "b", "x");
    let ta = s.train("a", Some(1));
    let tb = s.train("b", Some(1));
    assert_eq!(ta.save_to.as_deref(), Some("ckpt/step-000000002"));
    s.applied(&ta, "a", "x");
    s.applied(&tb, "b", "x");
    assert_eq!(s.phase(), &Phase::Done);
    // Nobody is told "done" (nor handed step 3): they wait, and reconnect to a restart.
    assert!(matches!(s.directive("a", Some(2)), Directive::Wait { .. }));
    s.input(Input::ReportShard(shard("a", 2, 0, 2)));
    let o = s.input(Input::ReportShard(shard("b", 2, 1, 2)));
    assert_eq!(manifests(&o).len(), 1, "{o:?}");
    assert_eq!(finished(&o), None, "the end waits for the checkpoint");
    let o = s.manifest_written(2, true);
    assert_eq!(finished(&o), Some(&Outcome::Terminated { steps: 3 }));
}

#[test]
fn sigterm_before_the_first_quorum_stops_at_once() {
    let mut s = Sim::new(settings(2, 20));
    s.register(member("a"));
    let o = s.input(Input::Terminate);
    assert_eq!(finished(&o), Some(&Outcome::Terminated { steps: 0 }));
}

#[test]
fn a_ring_that_never_forms_fails_the_run_instead_of_re_forming_forever() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    for attempt in 1..=steps::MAX_REDOS {
        let ta = s.train("a", None);
        let tb = s.train("b", None);
        s.report(&ta, "a", collective_failed());
        let o = s.report(&tb, "b", collective_failed());
        s.at(6 * attempt as u64);
        s.heartbeat("a");
        s.heartbeat("b");
        let t = s.tick();
        if attempt < steps::MAX_REDOS {
            assert!(matches!(s.phase(), Phase::Running), "{o:?} {t:?}");
        }
    }
    let Phase::Failed(why) = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert!(
        why.contains("could not be all-reduced 5 times") && why.contains("--advertise"),
        "{why}"
    );
}

fn non_finite(why: &str) -> StepOutcome {
    StepOutcome::Applied(Applied {
        loss: f64::NAN,
        param_digest: "x".into(),
        non_finite: why.into(),
        ..Applied::default()
    })
}

#[test]
fn a_non_finite_step_fails_the_run_by_default_naming_the_step_and_the_branch() {
    let mut s = Sim::new(settings(2, 6));
    s.register(member("a"));
    s.register(member("b"));
    s.commit_step(&["a", "b"], 0);
    let (da, db) = (s.train("a", Some(0)), s.train("b", Some(0)));
    let why = "the loss of the denoiser branch (L2) is NaN";
    s.report(&da, "a", non_finite(why));
    let o = s.report(&db, "b", non_finite(why));
    assert!(commits(&o).is_empty(), "a non-finite step is not committed");
    match s.phase() {
        Phase::Failed(r) => assert_eq!(
            r,
            "step 1: the loss of the denoiser branch (L2) is NaN; nothing was applied (train.skip_nonfinite is 0, so the run stops)"
        ),
        p => panic!("{p:?}"),
    }
}

#[test]
fn skip_nonfinite_drops_that_many_batches_then_fails() {
    let mut f = settings(1, 6);
    f.skip_nonfinite = 1;
    let mut s = Sim::new(f);
    s.register(member("a"));
    let d = s.train("a", None);
    let o = s.report(&d, "a", non_finite("the gradient norm is inf"));
    assert_eq!(
        commits(&o).len(),
        1,
        "the skipped step moves the data cursor on"
    );
    assert!(
        o.reasons[0].starts_with("step 0 skipped: the gradient norm is inf"),
        "{:?}",
        o.reasons
    );
    assert_eq!(s.m.step(), Step(1));
    let d = s.train("a", Some(0));
    s.report(&d, "a", non_finite("the gradient norm is NaN"));
    assert!(
        matches!(s.phase(), Phase::Failed(r) if r.starts_with("step 1: the gradient norm is NaN"))
    );
    assert_eq!(s.status().skipped_steps, 2);
}

#[test]
fn shard_reports_from_anyone_but_the_rank_they_name_are_refused_counted_and_change_nothing() {
    let mut f = settings(2, 6);
    f.save_interval = 1;
    let mut s = Sim::new(f);
    s.register(member("a"));
    s.register(member("b"));
    // A client that never registered reports shards for three steps (the probe that pruned
    // good checkpoints); a registered worker claims the other's rank.
    let mut forged = vec![];
    for step in 0..3 {
        forged.push(shard("intruder", step, 0, 1));
        forged.push(shard("intruder", step, 0, 2));
    }
    forged.push(shard("a", 0, 1, 2));
    forged.push(shard("a", 0, 0, 1));
    let n = forged.len() as u64;
    for r in forged {
        let o = s.input(Input::ReportShard(r));
        assert!(
            matches!(o.reply, Reply::Refused(Refusal::NotMember { .. })),
            "{o:?}"
        );
        assert!(manifests(&o).is_empty());
    }
    let st = s.status();
    assert_eq!(st.refused_reports, n);
    assert_eq!(
        Refusal::NotMember {
            worker: w("intruder"),
            step: Step(0),
            quorum: QuorumId(1),
            rank: 0
        }
        .to_string(),
        "worker intruder reported a shard of step 0 as rank 0 of quorum 1, which it is not"
    );
    // The real ranks' shards still make the checkpoint.
    s.commit_step(&["a", "b"], 0);
    s.input(Input::ReportShard(shard("a", 0, 0, 2)));
    let o = s.input(Input::ReportShard(shard("b", 0, 1, 2)));
    assert_eq!(manifests(&o).len(), 1);
}

#[test]
fn a_member_that_registers_and_falls_silent_before_training_hands_its_slot_to_a_standby() {
    let mut s = Sim::new(settings(1, 6));
    // A fake registers first and takes the only slot, then says nothing more.
    s.register(member("fake"));
    assert_eq!(s.ranks(), ["fake"]);
    // The real worker arrives before any step was handed out: it loads the start state.
    assert_eq!(
        s.register(member("real")),
        Reply::Admitted {
            load_checkpoint: true
        }
    );
    // It is offered a copy from the fake, which never comes.
    assert!(matches!(
        s.directive("real", None),
        Directive::ReceiveState { .. }
    ));
    let o = s.only_alive(&["real"]);
    assert!(
        o.reasons[0].starts_with("worker fake missed heartbeats"),
        "{:?}",
        o.reasons
    );
    assert_eq!(s.ranks(), ["real"], "{:?}", s.phase());
    let d = s.train("real", None);
    s.applied(&d, "real", "x");
    assert_eq!(s.m.step(), Step(1));
    // Once a step is handed out, a newcomer no longer holds the run's state.
    let _ = s.train("real", Some(0));
    assert_eq!(
        s.register(member("later")),
        Reply::Admitted {
            load_checkpoint: false
        }
    );
}

#[test]
fn a_copy_enters_the_quorum_only_when_both_sides_reported_it_whole() {
    let mut s = Sim::new(settings(1, 6));
    s.register(member("a"));
    s.commit_step(&["a"], 0);
    s.register(member("late"));
    let d = s.directive("a", Some(0));
    assert!(matches!(d, Directive::SendState { .. }), "{d:?}");
    match s.directive("late", None) {
        Directive::ReceiveState { param_digest, .. } => assert_eq!(param_digest, "x"),
        d => panic!("{d:?}"),
    }
    let report = |worker: &str, sender: bool, error: Option<&str>| {
        Input::ReportTransfer(TransferReport {
            worker: w(worker),
            step: Step(1),
            sender,
            error: error.map(String::from),
        })
    };
    // The joiner says it loaded a state: not enough, the donor has not said it sent one.
    s.input(report("late", false, None));
    assert_eq!(s.ranks(), ["a"]);
    assert!(wait_reason(&s.directive("late", None)).contains("joining"));
    // The donor reports failure: the joiner is dropped, never admitted.
    s.input(report("a", true, Some("joiner 127.0.0.1:4: broken pipe")));
    assert_eq!(s.ranks(), ["a"]);
    assert!(!s.m.members().contains(&w("late")));
}

#[test]
fn a_copy_both_sides_reported_whole_grows_the_quorum() {
    let mut s = Sim::new(settings(1, 6));
    s.register(member("a"));
    s.commit_step(&["a"], 0);
    s.register(member("late"));
    let _ = (s.directive("a", Some(0)), s.directive("late", None));
    for (worker, sender) in [("late", false), ("a", true)] {
        s.input(Input::ReportTransfer(TransferReport {
            worker: w(worker),
            step: Step(1),
            sender,
            error: None,
        }));
    }
    assert_eq!(s.ranks(), ["a", "late"]);
}

/// The events of `o` (quorum changes, evictions, redone steps) the page and metrics count.
fn events(o: &Output) -> Vec<&Event> {
    pick(o, |e| match e {
        Effect::Event(ev) => Some(ev),
        _ => None,
    })
}

#[test]
fn the_status_names_the_state_and_its_reason() {
    let mut s = Sim::new(settings(2, 4));
    s.register(member("a"));
    let st = s.status();
    assert_eq!(st.state, "waiting_for_quorum");
    assert_eq!(
        st.state_reason,
        "waiting for 2 training workers, 1 registered"
    );
    assert_eq!(st.heartbeat_timeout_seconds, 5.0);
    s.register(member("b"));
    let st = s.status();
    assert_eq!(st.state, "training");
    assert_eq!(st.state_reason, "step 0 of 4 in quorum 1 (2 workers)");
    assert_eq!(
        st.workers.iter().map(|w| w.rank).collect::<Vec<_>>(),
        vec![Some(0), Some(1)]
    );
    let ta = s.train("a", None);
    s.train("b", None);
    s.report(&ta, "a", collective_failed());
    let st = s.status();
    assert_eq!(st.state, "re_forming");
    assert!(st.state_reason.contains("lost a peer at step 0"), "{st:?}");
}

#[test]
fn a_member_far_slower_before_the_all_reduce_is_a_straggler() {
    let mut s = Sim::new(settings(2, 4));
    s.register(member("a"));
    s.register(member("b"));
    let ts = [s.train("a", None), s.train("b", None)];
    // b's data and compute take 4x a's (1.6x the median of the two); both step times are
    // alike (the ring waits for b).
    for (t, (id, busy)) in ts.iter().zip([("a", 1.0), ("b", 4.0)]) {
        s.input(Input::ReportStep(StepReport {
            worker: w(id),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            outcome: applied("x"),
            timings: StepTimings {
                data_seconds: 0.1 * busy,
                compute_seconds: 0.9 * busy,
                allreduce_seconds: 4.5 - busy,
                allreduce_bytes: 1,
                step_seconds: 4.5,
            },
        }));
    }
    let st = s.status();
    let by_id = |id: &str| st.workers.iter().find(|x| x.id == id).unwrap().clone();
    assert!((by_id("a").straggler_ratio.unwrap() - 0.4).abs() < 1e-12);
    assert!(!by_id("a").straggler);
    assert!((by_id("b").straggler_ratio.unwrap() - 1.6).abs() < 1e-12);
    assert!(by_id("b").straggler);
    assert_eq!(by_id("b").last_timings.unwrap().step_seconds, 4.5);
}

#[test]
fn evictions_quorum_changes_and_redone_steps_are_events_with_causes() {
    let mut s = Sim::new(settings(2, 4));
    s.register(member("a"));
    let o = s.input(Input::Register(member("b")));
    assert!(events(&o).iter().any(|e| matches!(
        e,
        Event::QuorumChanged {
            cause: QuorumCause::Formed,
            world_size: 2,
            ..
        }
    )));
    let ta = s.train("a", None);
    s.train("b", None);
    // b goes silent mid-step: evicted by the heartbeat timeout; a's all-reduce fails; the
    // step is redone by a new quorum of one.
    let mut o = s.only_alive(&["a"]);
    let r = s.report(&ta, "a", collective_failed());
    o.effects.extend(r.effects);
    let ev = events(&o);
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::Evicted { worker, cause: EvictionCause::HeartbeatTimeout, text }
            if worker.as_str() == "b" && text.contains("missed heartbeats"))
        ),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::QuorumChanged {
            cause: QuorumCause::PeerLost,
            world_size: 1,
            ..
        }
    )));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::StepRedone { step, .. } if *step == Step(0)))
    );
}

#[test]
fn the_reference_frequencies_save_and_evaluate_at_their_steps() {
    // 64 rows, batch 8: 8 steps per epoch. save_freq 0.5 saves every 4 steps; eval_freq 1
    // evaluates (and so saves) at each epoch end.
    let mut f = settings(1, 32);
    f.run.saves = elf_shared::run::Cadence::saves(0.5, f.run.steps_per_epoch);
    f.run.evals = elf_shared::run::Cadence::evals(1.0, f.run.steps_per_epoch);
    f.eval_inline = false;
    let saved: Vec<u64> = (0..16)
        .map(Step)
        .filter(|s| f.saves_after(*s))
        .map(Step::count)
        .collect();
    assert_eq!(saved, [4, 8, 12, 16]);
    f.run.evals = elf_shared::run::Cadence::evals(2.0, f.run.steps_per_epoch);
    f.run.saves = elf_shared::run::Cadence::Never;
    let saved: Vec<u64> = (0..32)
        .map(Step)
        .filter(|s| f.saves_after(*s))
        .map(Step::count)
        .collect();
    assert_eq!(
        saved,
        [16, 32],
        "eval epochs are saved even when save_freq does not fall"
    );
    let mut s = Sim::new(f);
    s.register(member("a"));
    for step in 0..16 {
        s.commit_step(&["a"], step);
    }
    assert!(
        !s.m.settings().evals_after(Step(7)),
        "epoch 1 is not a multiple of 2"
    );
    s.manifest_written(15, true);
    assert_eq!(s.m.evals.queued(), [Step(15)]);
}
