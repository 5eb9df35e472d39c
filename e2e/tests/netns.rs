//! The multi-host harness itself, on real namespaces: reachability, isolation of addresses and
//! files, link cuts, rate caps, killable children and cleanup. Needs root (fails otherwise,
//! unless `ELF_SKIP_NETNS=1`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use elf_e2e::{Host, Net};

/// A TCP sink on `argv[1]`: prints its port, then for each connection reads to EOF and answers
/// the byte count.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    c.sendall(str(n).encode())
    c.close()
"#;

/// Sends `argv[3]` bytes to `argv[1]:argv[2]` (connect timeout `argv[4]` s) and prints the
/// server's count and the seconds it took.
const CLIENT: &str = r#"
import socket, sys, time
host, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t = time.time()
c = socket.create_connection((host, port), timeout=timeout)
c.settimeout(30)
buf = b"x" * (1 << 20)
left = size
while left > 0:
    left -= c.send(buf[:min(left, len(buf))])
c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode(), time.time() - t)
"#;

/// A sink server on `host`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(host: &Host, bind: &str) -> Self {
        let mut child = host
            .command("python3")
            .args(["-c", SERVER, bind])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("server prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server did not start: {line:?}"));
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `size` bytes from `from` to `to:port`; returns the output (success or not).
fn send(from: &Host, to: &str, port: u16, size: usize, timeout_s: f64) -> Output {
    from.run(&[
        "python3",
        "-c",
        CLIENT,
        to,
        &port.to_string(),
        &size.to_string(),
        &timeout_s.to_string(),
    ])
    .expect("python3")
}

/// Sends `size` bytes and returns the seconds it took, checking the server got them all.
fn transfer(from: &Host, to: &str, port: u16, size: usize) -> f64 {
    let out = send(from, to, port, size, 5.0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} -> {to}:{port}: {}",
        from.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = text.split_whitespace();
    assert_eq!(fields.next(), Some(size.to_string().as_str()), "{text}");
    fields.next().and_then(|s| s.parse().ok()).expect("seconds")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_prefix(list: &str, id: &str) -> bool {
    list.lines().any(|l| l.starts_with(&format!("{id}-")))
}

fn root_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
        .collect();
    names.sort();
    names.join(" ")
}

fn root_routes() -> String {
    let out = Command::new("ip").args(["route"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hosts_reach_each_other_by_address_and_name() {
    let (links, routes) = (root_links(), root_routes());
    let t = Instant::now();
    let Some(net) = Net::for_test(&["a", "b", "c"]) else {
        return;
    };
    eprintln!("a 3-host net in {:?}", t.elapsed());
    assert_eq!(root_links(), links, "the root namespace got no interface");
    assert_eq!(root_routes(), routes, "the root namespace got no route");
    let (a, b, c) = (net.host("a"), net.host("b"), net.host("c"));
    assert_ne!(a.addr(), b.addr());
    assert_eq!(a.addr().octets()[..3], c.addr().octets()[..3]);
    let server = Server::start(b, "0.0.0.0");
    transfer(a, &b.addr().to_string(), server.port, 1000);
    transfer(c, "b", server.port, 1000);
    // Its own loopback, and its own name.
    transfer(b, "127.0.0.1", server.port, 10);
    assert_eq!(b.sh("hostname").unwrap().trim(), "b");
    let lo = b.sh("ip -o link show lo").unwrap();
    assert!(lo.contains("UP"), "{lo}");
}

#[test]
fn nothing_outside_the_net_is_reachable() {
    let Some(net) = Net::for_test(&["a"]) else {
        return;
    };
    let a = net.host("a");
    // A service in the root namespace, on loopback and on all its addresses.
    let outside = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    let out = send(a, "127.0.0.1", port, 1, 1.0);
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    let mut tried = vec!["192.0.2.1".to_owned()];
    tried.extend(
        addrs
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next())
            .filter(|ip| !ip.starts_with("127."))
            .map(str::to_owned),
    );
    for ip in &tried {
        let out = send(a, ip, port, 1, 1.0);
        assert!(
            stderr(&out).contains("Network is unreachable"),
            "{ip}: {}",
            stderr(&out)
        );
    }
    let routes = a.sh("ip route").unwrap();
    assert!(!routes.contains("default"), "{routes}");
}

#[test]
fn host_directories_are_private() {
    let Some(net) = Net::for_test(&["a", "b"]) else {
        return;
    };
    let (a, b) = (net.host("a"), net.host("b"));
    let (da, db) = (a.dir().display(), b.dir().display());
    // Each starts in its own directory, at the same path as outside.
    assert_eq!(a.sh("pwd").unwrap().trim(), da.to_string());
    a.sh("echo from-a > fa").unwrap();
    assert_eq!(
        std::fs::read_to_string(a.dir().join("fa")).unwrap(),
        "from-a\n"
    );
    assert_eq!(a.sh(&format!("cat {da}/fa")).unwrap(), "from-a\n");
    // b sees neither a's directory nor its file, and cannot write there.
    let e = b.sh(&format!("ls {da}")).unwrap_err().to_string();
    assert!(e.contains("No such file"), "{e}");
    let e = b
        .sh(&format!("mkdir -p {da} && echo x > {da}/fb"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Read-only file system"), "{e}");
    b.sh("echo from-b > fb").unwrap();
    assert!(!a.dir().join("fb").exists());
    let listed = b
        .sh(&format!("ls {}", net.root().join("hosts").display()))
        .unwrap();
    assert_eq!(listed.trim(), "b");
    let e = a.sh(&format!("cat {db}/fb")).unwrap_err().to_string();
    assert!(e.contains("No such file"), "{e}");
    // The rest of the machine is still there (the repository, the tools).
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    assert!(
        a.sh(&format!("cat {manifest}"))
            .unwrap()
            .contains("elf-e2e")
    );
    // A current_dir set by the caller is honoured.
    let out = a.command("pwd").current_dir("/").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/");
    // Nothing of this leaked into the root mount namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(net.root().to_str().unwrap()), "{mounts}");
}

#[test]
fn a_pulled_link_stops_traffic_until_it_is_back() {
    let Some(net) = Net::for_test(&["a", "b"]) else {
        return;
    };
    let (a, b) = (net.host("a"), net.host("b"));
    let server = Server::start(b, &b.addr().to_string());
    let to = b.addr().to_string();
    transfer(a, &to, server.port, 100);
    net.link_down("b").unwrap();
    let out = send(a, &to, server.port, 100, 0.5);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    // Like a pulled cable: b's own interface is still up, without carrier.
    let link = b.sh("ip -o link show eth0").unwrap();
    assert!(
        link.contains("NO-CARRIER") && link.contains(",UP"),
        "{link}"
    );
    net.link_up("b").unwrap();
    let t = Instant::now();
    transfer(a, &to, server.port, 100);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn a_rate_limit_caps_both_directions() {
    let Some(net) = Net::for_test(&["a", "b"]) else {
        return;
    };
    let (a, b) = (net.host("a"), net.host("b"));
    let to_b = Server::start(b, "0.0.0.0");
    let to_a = Server::start(a, "0.0.0.0");
    let size = 20_000_000;
    let gbit = 0.1;
    let expected = size as f64 * 8.0 / (gbit * 1e9);
    net.limit_rate("a", gbit).unwrap();
    let up = transfer(a, "b", to_b.port, size);
    let down = transfer(b, "a", to_a.port, size);
    for (dir, secs) in [("a->b", up), ("b->a", down)] {
        assert!(
            secs >= expected * 0.8 && secs <= expected * 3.0,
            "{dir}: {size} B in {secs:.2} s at {gbit} Gbit/s (expected {expected:.2} s)"
        );
    }
    net.clear_rate("a").unwrap();
    net.clear_rate("a").unwrap();
    let free = transfer(a, "b", to_b.port, size);
    eprintln!(
        "{size} B at {gbit} Gbit/s: {up:.2} s a->b, {down:.2} s b->a (expected {expected:.2} s), \
         {free:.3} s uncapped"
    );
    assert!(free < expected * 0.5, "{free:.2} s without a cap");
    assert!(net.limit_rate("a", 0.0).is_err());
}

#[test]
fn killing_the_child_kills_the_program() {
    let Some(net) = Net::for_test(&["a"]) else {
        return;
    };
    let a = net.host("a");
    let t = Instant::now();
    assert_eq!(a.sh("echo hi").unwrap(), "hi\n");
    eprintln!("a command on a host in {:?}", t.elapsed());
    let mut child = a.command("sleep").arg("1000").spawn().unwrap();
    let pid = child.id();
    // The wrappers exec: the pid becomes the program's own.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        assert!(Instant::now() < deadline, "pid {pid} is still {comm:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = |ns: &str| {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(pids(a.ns()).trim(), pid.to_string());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(pids(a.ns()).trim(), "");
}

#[test]
fn drop_removes_everything_also_on_panic() {
    let Some(other) = Net::for_test(&["x"]) else {
        return;
    };
    let net = Net::new(&["a", "b"]).unwrap();
    let (id, root) = (net.id().to_owned(), net.root().to_owned());
    assert!(has_prefix(&namespaces(), &id));
    // A process of another Net, started after this one was made: its mount namespace has
    // copies of this one's `/run/netns` mounts, which must go with them (else it would keep
    // this Net's namespaces alive).
    let mut watcher = other
        .host("x")
        .command("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let mountinfo =
        || std::fs::read_to_string(format!("/proc/{}/mountinfo", watcher.id())).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mountinfo().contains("elf-hosts") {
        assert!(Instant::now() < deadline, "the watcher did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(mountinfo().contains(&format!("/run/netns/{id}-")));
    // A process left running: the drop kills it.
    let mut leaked = net.host("a").command("sleep").arg("1000").spawn().unwrap();
    let t = Instant::now();
    drop(net);
    let took = t.elapsed();
    assert!(!leaked.wait().unwrap().success());
    assert!(!has_prefix(&namespaces(), &id), "{}", namespaces());
    assert!(!root.exists());
    let mounts = mountinfo();
    assert!(!mounts.contains(&format!("/run/netns/{id}-")), "{mounts}");
    eprintln!("drop of a 2-host net with a process: {took:?}");

    let seen = std::sync::Mutex::new(None);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Net::new(&["a"]).unwrap();
        let child = net.host("a").command("sleep").arg("1000").spawn().unwrap();
        *seen.lock().unwrap() = Some((net.id().to_owned(), net.root().to_owned(), child));
        panic!("a failing test");
    }));
    assert!(caught.is_err());
    let (id, root, mut child) = seen.into_inner().unwrap().unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(!has_prefix(&namespaces(), &id), "{}", namespaces());
    assert!(!root.exists());
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed_live_ones_kept() {
    if !Net::available() {
        assert!(Net::for_test(&["a"]).is_none());
        return;
    }
    // A pid that no longer runs, and one that does (init) but left no owner file.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = format!("elf{}-0-sw", gone.id());
    let dead_dir = std::env::temp_dir().join(format!("elf-net-{}-0", gone.id()));
    let live = format!("elf1-{}-sw", std::process::id());
    for ns in [&dead, &live] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::create_dir_all(dead_dir.join("hosts/a")).unwrap();
    std::fs::write(dead_dir.join("owner"), format!("{} 1\n", gone.id())).unwrap();
    let net = Net::new(&["a"]).unwrap();
    let list = namespaces();
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    assert!(!list.lines().any(|l| l.starts_with(&dead)), "{list}");
    assert!(list.lines().any(|l| l.starts_with(&live)), "{list}");
    assert!(!dead_dir.exists());
    drop(net);
}

#[test]
fn nets_of_one_process_do_not_collide() {
    let Some(one) = Net::for_test(&["a"]) else {
        return;
    };
    let two = Net::new(&["a"]).unwrap();
    assert_ne!(one.id(), two.id());
    assert_ne!(one.host("a").ns(), two.host("a").ns());
    assert_ne!(one.host("a").addr(), two.host("a").addr());
    assert_ne!(one.host("a").dir(), two.host("a").dir());
    assert!(Net::new(&["a", "a"]).is_err());
    assert!(Net::new(&["a/b"]).is_err());
    // Separate segments: one Net's address is not reachable from the other.
    let server = Server::start(one.host("a"), "0.0.0.0");
    let out = send(
        two.host("a"),
        &one.host("a").addr().to_string(),
        server.port,
        1,
        0.5,
    );
    assert!(!out.status.success());
}
