//! Several "hosts" on one machine, for multi-host end-to-end tests: each [`Host`] is its own
//! Linux network namespace with its own IPv4 address, and its processes get their own mount
//! namespace in which the other hosts' private directories are hidden.
//!
//! Needs root, iproute2 (`ip`, `tc`) and util-linux (`unshare`, `mount`). [`Net::for_test`] is
//! the entry point for tests: where namespaces cannot be made it *fails* the test, unless
//! `ELF_SKIP_NETNS=1` is set, in which case it says why on stderr and the test skips.
//!
//! # Topology
//! ```text
//!   <id>-h0 (10.A.B.1)      <id>-h1 (10.A.B.2)      ...
//!     eth0                    eth0
//!      |  veth pair            |
//!     h0 ------ br0 ------    h1        <- all in the switch namespace <id>-sw
//! ```
//! Nothing is added to the root namespace: both ends of every veth pair are created directly in
//! their namespaces (`ip -n <switch> link add h0 type veth peer name eth0 netns <host>`). A host's
//! namespace has only `lo` (up) and `eth0` with its `/24` address and no default route, so it
//! reaches its own loopback and the other hosts of its [`Net`], nothing else: a connection to any
//! other address fails at once with "network is unreachable", no packet leaves.
//!
//! # Names
//! A [`Net`]'s id is `elf<pid>-<n>` (`n` a per-process counter), so parallel tests in one process
//! and concurrent test processes never collide. Namespaces are `<id>-sw` and `<id>-h<i>`; the
//! interfaces inside them have fixed short names (`br0`, `h<i>`, `eth0`, well under 15 chars)
//! since each namespace has its own interface names. The subnet is `10.A.B.0/24` with `A` from the
//! pid and `B` from the counter, distinct among a process's Nets (each Net is a separate
//! L2 segment anyway: an address of one Net is not reachable from another).
//!
//! # Files
//! `<tmp>/elf-net-<pid>-<n>/` holds `owner` (pid and start time of the creating process),
//! `hosts/<name>/` (each host's private directory, [`Host::dir`]), `mnt/` (an empty staging mount
//! point) and `etc-hosts`. A host's processes ([`Host::command`]) start as
//! `ip netns exec <ns> unshare -m -u --propagation slave sh -c <setup> ... program args`, where
//! the setup, in the new mount namespace, bind-mounts the host's own directory onto `mnt/`,
//! mounts an empty read-only tmpfs over `hosts/`, bind-mounts its own directory back at its usual
//! path, bind-mounts `etc-hosts` over `/etc/hosts` (so host names resolve to host addresses) and
//! sets the UTS hostname to the host name, then `cd`s and `exec`s the program. Every step
//! `exec`s (`ip netns exec` and `unshare` without `--fork` exec, the shell ends in `exec`), so the
//! [`std::process::Child`]'s pid *is* the program's: killing it kills the program.
//!
//! Inside, a host's own directory has the same path as outside, so a test can pass
//! `host.dir()` paths as arguments. Other hosts' directories do not exist there (their parent is
//! an empty read-only tmpfs: reads fail with "no such file", writes with "read-only file
//! system").
//!
//! Limits: this is isolation against mistakes, not a security boundary. A host still sees the
//! whole rest of the machine's filesystem (the repository, the built binaries, `/tmp` outside
//! the Net's directory, anything a test made elsewhere) and shares the pid namespace: it sees all
//! processes, and as root could reach another host's files through `/proc/<pid>/root` or
//! `/proc/<pid>/cwd` of that host's processes, or undo the mounts.
//!
//! # Cleanup
//! Dropping a [`Net`] (also while unwinding from a panic) kills every process still in its
//! namespaces, deletes the namespaces (which destroys their interfaces) and removes its directory.
//! [`Net::new`] first removes what a crashed earlier run left: namespaces and directories of this
//! naming scheme whose creating process is gone (pid dead, or reused: start time differs).
//! Mount namespaces of host processes are slaves of the root's (not private), so they follow
//! the root's later mounts and unmounts, and their copies of the `/run/netns` mounts never keep
//! another Net's deleted namespace alive (tested).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable: `1` lets [`Net::for_test`] skip (return `None`) where network
/// namespaces are unavailable instead of failing the test.
pub const SKIP_ENV: &str = "ELF_SKIP_NETNS";

/// Prefix of every namespace name this module makes (`elf<pid>-<n>-...`).
const PREFIX: &str = "elf";

/// Prefix of every directory this module makes under the temporary directory.
const DIR_PREFIX: &str = "elf-net-";

/// Most hosts in one Net (addresses `.1` to `.250`).
const MAX_HOSTS: usize = 250;

/// Bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// A host's interface, in its own namespace.
const HOST_IF: &str = "eth0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The setup a host's processes run in their new mount namespace before `exec`ing the program.
/// `$1` own dir, `$2` staging mount point, `$3` hosts root, `$4` hosts file, `$5` host name, then
/// the program and its arguments.
const SETUP: &str = r#"set -e
d=$(pwd -P)
mount --bind "$1" "$2"
mount -t tmpfs -o mode=0755,size=64k elf-hosts "$3"
mkdir "$1"
mount --bind "$2" "$1"
umount "$2"
mount -o remount,ro,bind "$3"
if [ -f /etc/hosts ]; then mount --bind "$4" /etc/hosts; fi
echo "$5" > /proc/sys/kernel/hostname
cd "$d"
shift 5
exec "$@""#;

/// One host: a network namespace with an address and a private directory.
#[derive(Debug)]
pub struct Host {
    name: String,
    ns: String,
    port: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    root: PathBuf,
}

impl Host {
    /// Returns the name given to [`Net::new`] (also its hostname and its name in `/etc/hosts`
    /// inside every host of the Net).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns its IPv4 address (on `eth0`, in a `/24` shared with the other hosts of its Net).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Returns its network namespace's name (for `ip netns exec`, `ip -n`, `tc -n`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Returns its private directory: the same path outside (for the test) and inside its own
    /// processes; absent for the other hosts' processes. Removed with the Net.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns a command that runs `program` on this host: in its network namespace, in a fresh
    /// mount namespace where the other hosts' directories are hidden, with cwd [`Host::dir`]
    /// (a `current_dir` set on the command is honoured, resolved inside the host's view). Add
    /// arguments, environment and stdio as for any [`Command`]; the spawned child's pid is the
    /// program's own (all wrappers `exec`), so killing the child kills the program.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .args(["unshare", "-m", "-u", "--propagation", "slave"])
            .args(["sh", "-c", SETUP, "elf-host"])
            .arg(&self.dir)
            .arg(self.root.join("mnt"))
            .arg(self.root.join("hosts"))
            .arg(self.root.join("etc-hosts"))
            .arg(&self.name)
            .arg(program)
            .current_dir(&self.dir);
        cmd
    }

    /// Runs `args` (program first) on this host, stdin empty, and returns its output whatever
    /// its exit status.
    ///
    /// # Errors
    /// When `args` is empty or the command cannot start.
    pub fn run(&self, args: &[&str]) -> io::Result<Output> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
        self.command(program)
            .args(rest)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs `sh -c script` on this host and returns its stdout.
    ///
    /// # Errors
    /// When it cannot start or exits unsuccessfully (the error has the status and stderr).
    pub fn sh(&self, script: &str) -> io::Result<String> {
        let out = self.run(&["sh", "-c", script])?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "{}: `{script}`: {}: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// A set of hosts joined by one switch; all of it is removed on drop.
#[derive(Debug)]
pub struct Net {
    id: String,
    switch: String,
    root: PathBuf,
    hosts: Vec<Host>,
}

impl Net {
    /// Returns why network namespaces cannot be made here (not root, a tool missing), or `None`
    /// where they can.
    pub fn unavailable() -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1));
        if euid != Some("0") {
            return Some(format!(
                "not root (effective uid {})",
                euid.unwrap_or("unknown")
            ));
        }
        for (tool, arg) in [
            ("ip", "-V"),
            ("tc", "-V"),
            ("unshare", "--version"),
            ("mount", "--version"),
        ] {
            let ok = Command::new(tool)
                .arg(arg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Some(format!("`{tool} {arg}` does not run"));
            }
        }
        None
    }

    /// Returns whether network namespaces can be made here (see [`Net::unavailable`]).
    pub fn available() -> bool {
        Self::unavailable().is_none()
    }

    /// Makes a Net for a test: `Some` when namespaces are available; `None` (with a line on
    /// stderr) when they are not and `ELF_SKIP_NETNS=1`, so the test returns early.
    ///
    /// # Panics
    /// When they are unavailable and `ELF_SKIP_NETNS` is not `1`, or when [`Net::new`] fails.
    pub fn for_test(hosts: &[&str]) -> Option<Self> {
        if let Some(why) = Self::unavailable() {
            assert!(
                std::env::var(SKIP_ENV).is_ok_and(|v| v == "1"),
                "network namespaces unavailable: {why}; these tests need root, iproute2 and \
                 util-linux (set {SKIP_ENV}=1 to skip them)"
            );
            eprintln!("skipped: network namespaces unavailable ({why}) and {SKIP_ENV}=1");
            return None;
        }
        Some(Self::new(hosts).unwrap_or_else(|e| panic!("cannot make the test network: {e}")))
    }

    /// Makes the switch namespace with its bridge and one host per name (addresses
    /// `10.A.B.1`, `10.A.B.2`, ... in order), after removing what crashed earlier runs left.
    /// Names: 1 to 32 ASCII letters, digits, `-` or `_`, not starting with `-`, distinct.
    ///
    /// # Errors
    /// On invalid names, or when a namespace, interface or directory cannot be made (what was
    /// made is removed).
    pub fn new(hosts: &[&str]) -> io::Result<Self> {
        validate(hosts)?;
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        remove_stale();
        let id = format!("{PREFIX}{pid}-{n}");
        let root = std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{n}"));
        // Anything there is from an earlier process with the same pid.
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(root.join("mnt"))?;
        // The owner is written before any namespace exists, so a sweep never takes a live Net's
        // namespaces for stale ones.
        let start = start_time(pid).ok_or_else(|| io::Error::other("no start time for self"))?;
        std::fs::write(root.join("owner"), format!("{pid} {start}\n"))?;
        let mut net = Self {
            switch: format!("{id}-sw"),
            id,
            root,
            hosts: vec![],
        };
        // From here on, an early return drops `net`, which removes what was made.
        net.remove_namespaces();
        let subnet = [10, (pid % 250 + 1) as u8, (n % 256) as u8];
        let sw = net.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        let mut etc_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !etc_hosts.is_empty() && !etc_hosts.ends_with('\n') {
            etc_hosts.push('\n');
        }
        for (i, name) in hosts.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                ns: format!("{}-h{i}", net.id),
                port: format!("h{i}"),
                addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 1),
                dir: net.root.join("hosts").join(name),
                root: net.root.clone(),
            };
            std::fs::create_dir_all(&host.dir)?;
            let (ns, port) = (host.ns.clone(), host.port.clone());
            let cidr = format!("{}/24", host.addr);
            net.hosts.push(host);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", HOST_IF, "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", BRIDGE])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", HOST_IF])?;
            ip(&["-n", &ns, "link", "set", HOST_IF, "up"])?;
            let _ = writeln!(etc_hosts, "{}\t{name}", cidr.trim_end_matches("/24"));
        }
        std::fs::write(net.root.join("etc-hosts"), etc_hosts)?;
        Ok(net)
    }

    /// Returns the id that prefixes all its namespace names (`elf<pid>-<n>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns the switch namespace's name (bridge `br0`, one port `h<i>` per host).
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Returns its directory (`<tmp>/elf-net-<pid>-<n>`), which holds `hosts/<name>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns its hosts, in the order given to [`Net::new`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Returns the host named `name`.
    ///
    /// # Panics
    /// When there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in net {}", self.id))
    }

    /// Takes `host`'s link down on the switch side, like a pulled cable: the host's `eth0` stays
    /// administratively up (it shows NO-CARRIER), its address and routes stay, and everything it
    /// sends or should receive is dropped until [`Net::link_up`]. Open connections are not reset.
    ///
    /// # Errors
    /// When `ip` fails.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn link_down(&self, host: &str) -> io::Result<()> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.host(host).port,
            "down",
        ])
    }

    /// Brings `host`'s link back up (traffic flows again at once: the bridge runs no STP).
    ///
    /// # Errors
    /// When `ip` fails.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn link_up(&self, host: &str) -> io::Result<()> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &self.host(host).port,
            "up",
        ])
    }

    /// Caps `host`'s link at `gbit` Gbit/s in each direction (a token bucket, `tc tbf`, as the
    /// root qdisc of the host's `eth0`, for what it sends, and of its switch port, for what it
    /// receives); replaces an earlier cap.
    ///
    /// # Errors
    /// When `gbit` is not positive and finite, or `tc` fails.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn limit_rate(&self, host: &str, gbit: f64) -> io::Result<()> {
        if !(gbit.is_finite() && gbit > 0.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rate {gbit} Gbit/s"),
            ));
        }
        let h = self.host(host);
        let bits = (gbit * 1e9).round().max(8000.0) as u64;
        // A bucket of 5 ms at the rate, at least 64 KiB (one GSO packet); queue up to 100 ms.
        let burst = (bits / 8 / 200).max(64 * 1024);
        let (rate, burst) = (format!("{bits}bit"), burst.to_string());
        for (ns, dev) in [(&h.ns, HOST_IF), (&self.switch, h.port.as_str())] {
            tc(&[
                "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst",
                &burst, "latency", "100ms",
            ])?;
        }
        Ok(())
    }

    /// Removes the cap of [`Net::limit_rate`] from `host`'s link (no error if there was none).
    ///
    /// # Errors
    /// When `tc` fails otherwise.
    ///
    /// # Panics
    /// When there is no such host.
    pub fn clear_rate(&self, host: &str) -> io::Result<()> {
        let h = self.host(host);
        for (ns, dev) in [(&h.ns, HOST_IF), (&self.switch, h.port.as_str())] {
            if let Err(e) = tc(&["-n", ns, "qdisc", "del", "dev", dev, "root"])
                && !e.to_string().contains("No such file")
                && !e
                    .to_string()
                    .contains("Cannot delete qdisc with handle of zero")
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Kills the processes in, and deletes, every namespace named after this Net.
    fn remove_namespaces(&self) {
        let prefix = format!("{}-", self.id);
        for ns in namespaces().iter().filter(|n| n.starts_with(&prefix)) {
            remove_namespace(ns);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove_namespaces();
        if let Err(e) = std::fs::remove_dir_all(&self.root)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("netns: cannot remove {}: {e}", self.root.display());
        }
    }
}

/// Checks host names: usable as directory names, hostnames and shell arguments.
fn validate(hosts: &[&str]) -> io::Result<()> {
    let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    if hosts.is_empty() || hosts.len() > MAX_HOSTS {
        return bad(format!("{} hosts (1 to {MAX_HOSTS})", hosts.len()));
    }
    let mut seen = HashSet::new();
    for name in hosts {
        let ok = (1..=32).contains(&name.len())
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return bad(format!("host name {name:?}"));
        }
        if !seen.insert(*name) {
            return bad(format!("host name {name:?} twice"));
        }
    }
    Ok(())
}

/// Runs a tool with `args`; its stderr becomes the error when it fails.
fn tool(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}`: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    tool("ip", args)
}

fn tc(args: &[&str]) -> io::Result<()> {
    tool("tc", args)
}

/// Returns the names of all named network namespaces (`ip netns list`).
fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in namespace `ns`, then deletes it (errors ignored: best effort, also
/// used on namespaces another sweep may be removing).
fn remove_namespace(ns: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Returns a process's start time (field 22 of `/proc/<pid>/stat`), `None` when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that made Net `<pid>-<n>` still runs.
#[derive(Debug, PartialEq)]
enum Owner {
    Live,
    Gone,
    /// No owner file (being written, or under another temporary directory).
    Unknown,
}

fn owner(pid: u32, n: u32) -> Owner {
    let Some(start) = start_time(pid) else {
        return Owner::Gone;
    };
    let file = std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{n}/owner"));
    match std::fs::read_to_string(file) {
        Ok(s) if s.trim() == format!("{pid} {start}") => Owner::Live,
        Ok(_) => Owner::Gone,
        Err(_) => Owner::Unknown,
    }
}

/// Parses `<pid>-<n>` followed by `end` (`-...` for namespaces, nothing for directories).
fn parse_id(s: &str) -> Option<(u32, u32, &str)> {
    let (pid, rest) = s.split_once('-')?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (n, end) = rest.split_at(digits);
    Some((pid.parse().ok()?, n.parse().ok()?, end))
}

/// Removes the namespaces and directories of Nets whose process is gone.
fn remove_stale() {
    let me = std::process::id();
    for ns in namespaces() {
        let Some((pid, n, end)) = ns.strip_prefix(PREFIX).and_then(parse_id) else {
            continue;
        };
        if !end.starts_with('-') {
            continue;
        }
        // Our own live Nets write their owner file before making namespaces.
        match owner(pid, n) {
            Owner::Gone => remove_namespace(&ns),
            Owner::Unknown if pid == me => remove_namespace(&ns),
            _ => {}
        }
    }
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some((pid, n, "")) = name
            .to_str()
            .and_then(|s| s.strip_prefix(DIR_PREFIX))
            .and_then(parse_id)
        else {
            continue;
        };
        if owner(pid, n) == Owner::Gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id("12-3-sw"), Some((12, 3, "-sw")));
        assert_eq!(parse_id("12-3"), Some((12, 3, "")));
        assert_eq!(parse_id("12-x"), None);
        assert_eq!(parse_id("x-3-sw"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate(&["coord", "w1", "s3_x", "W-2"]).is_ok());
        for bad in [
            &[][..],
            &["a", "a"],
            &[""],
            &["-a"],
            &["a b"],
            &["a/b"],
            &["a'"],
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_start_time_is_known() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(owner(std::process::id(), u32::MAX), Owner::Unknown);
    }
}
