//! Fault injection for the crash tests. Unset (always, outside tests), a point costs one
//! environment lookup.
//!
//! * `ELF_FAILPOINT_<NAME>_DELAY_MS=n` makes the process sleep `n` ms at the named point, so a
//!   test can kill it there (for instance between a checkpoint's shards and its manifest).
//! * `ELF_FAILPOINT_RING=<kill|freeze>@<step>:<boundary>` makes a worker kill (SIGKILL) or
//!   freeze (SIGSTOP) itself when its collective reaches the `boundary`-th phase boundary of
//!   step `step` (boundaries count from 0 across the step's all-reduces: before each
//!   reduce-scatter and all-gather exchange, and after the last one).
//! * `ELF_FAILPOINT_NONFINITE=<step>` makes a worker's gradient of step `step` NaN (one
//!   element), as an overflowing model would.

/// Sleeps at failpoint `name` when `ELF_FAILPOINT_<NAME>_DELAY_MS` is set.
pub fn delay(name: &str) {
    let key = format!("ELF_FAILPOINT_{}_DELAY_MS", name.to_ascii_uppercase());
    if let Some(ms) = std::env::var(&key).ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(failpoint = name, ms, "failpoint: sleeping");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// True when `ELF_FAILPOINT_NONFINITE` names step `step`.
pub fn non_finite_at(step: u64) -> bool {
    std::env::var("ELF_FAILPOINT_NONFINITE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(step)
}

/// What a ring failpoint does to its own process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the process is gone, its sockets close.
    Kill,
    /// SIGSTOP: the process stays, silent (its peers see nothing until timeouts).
    Freeze,
}

/// A fault armed at one phase boundary of one step's collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFault {
    /// What happens.
    pub fault: Fault,
    /// The step.
    pub step: u64,
    /// The phase boundary (see the module doc).
    pub boundary: usize,
}

impl RingFault {
    /// Parses `kill@5:3` / `freeze@5:3`.
    pub fn parse(spec: &str) -> Option<Self> {
        let (what, at) = spec.split_once('@')?;
        let (step, boundary) = at.split_once(':')?;
        let fault = match what {
            "kill" => Fault::Kill,
            "freeze" => Fault::Freeze,
            _ => return None,
        };
        Some(Self {
            fault,
            step: step.parse().ok()?,
            boundary: boundary.parse().ok()?,
        })
    }

    /// Returns the fault armed for `step` by `ELF_FAILPOINT_RING`, if any.
    pub fn for_step(step: u64) -> Option<Self> {
        let spec = std::env::var("ELF_FAILPOINT_RING").ok()?;
        Self::parse(&spec).filter(|f| f.step == step)
    }

    /// Kills or freezes this process.
    pub fn strike(&self) {
        let signal = match self.fault {
            Fault::Kill => "-KILL",
            Fault::Freeze => "-STOP",
        };
        tracing::warn!(fault = ?self.fault, step = self.step, boundary = self.boundary, "failpoint: ring fault");
        let _ = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_faults_parse() {
        assert_eq!(
            RingFault::parse("freeze@5:3"),
            Some(RingFault {
                fault: Fault::Freeze,
                step: 5,
                boundary: 3
            })
        );
        assert_eq!(RingFault::parse("kill@x:1"), None);
        assert_eq!(RingFault::parse("nap@1:1"), None);
    }
}
