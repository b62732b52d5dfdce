//! Hosts of the project's own on this one machine, for tests and drills
//! whose traffic must cross a network: each host is a network namespace
//! with its own address on a shared bridge, the caller's namespace sits on
//! the same bridge, and the link between two hosts can be cut while both
//! still reach every other host.
//!
//! ```text
//!   caller (10.213.k.254) ──┐
//!   host 1 (10.213.k.1) ────┤ bridge br0, in the namespace px-<tag>-hub
//!   host 2 (10.213.k.2) ────┤
//!   ...                  ───┘
//! ```
//!
//! A cut drops the pair's packets silently in both hosts' output
//! (nftables), as a partition does: connections time out rather than
//! being refused. Needs root, `ip` (Debian `iproute2`) and `nft` (Debian
//! `nftables`). WAN delay is not applied here: the kernels this project
//! runs its CI on have no `netem` queueing discipline (`tc qdisc add ...
//! netem` answers "Specified qdisc kind is unknown").
//!
//! Every namespace is named `px-<tag>-<host>` (and `px-<tag>-hub`); they
//! are deleted when the [`Net`] is dropped, a panic included, and those a
//! killed run left behind are deleted when a [`Net`] with the same tag is
//! made again.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// The first two octets of every address the harness hands out.
const NET: [u8; 2] = [10, 213];

/// Only one [`Net`] is made at a time in a process (they pick free subnets).
static MAKING: Mutex<()> = Mutex::new(());

/// And only one at a time on the machine: this file is locked meanwhile.
const LOCK: &str = "/run/parallax-netns.lock";

/// A set of hosts on one bridge; deleted on drop.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: u8,
    hosts: BTreeMap<String, Ipv4Addr>,
    /// Per host, the addresses its output drops.
    cuts: Mutex<BTreeMap<String, BTreeSet<Ipv4Addr>>>,
}

impl Net {
    /// Whether this machine can make hosts: root, `ip` and `nft`. The error
    /// says what is missing and how to get it.
    pub fn available() -> Result<()> {
        if euid() != 0 {
            bail!("network namespaces need root. Fix: run as root (CI does)");
        }
        for (tool, package, arg) in [("ip", "iproute2", "-V"), ("nft", "nftables", "--version")] {
            let ran = Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !ran.is_ok_and(|s| s.success()) {
                bail!("`{tool}` is missing. Fix: apt-get install {package}");
            }
        }
        Ok(())
    }

    /// Makes the hosts `names` (letters, digits and `-`), each with its own
    /// address, all on one bridge with the caller. `tag` names this set
    /// (short: it is part of every namespace's name).
    pub fn create(tag: &str, names: &[&str]) -> Result<Net> {
        Net::available()?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 24
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !ok(tag) || !names.iter().all(|n| ok(n)) || names.len() > 200 {
            bail!(
                "net `{tag}` with hosts {names:?}: names are 1-24 letters, digits or `-`, at most 200 hosts"
            );
        }
        let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
        // And one at a time on this machine: two processes choosing a
        // subnet at once could both take the same one.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .with_context(|| format!("opening {LOCK}"))?;
        lock.lock().with_context(|| format!("locking {LOCK}"))?;
        let prefix = format!("px-{tag}-");
        for stale in namespaces()?.into_iter().filter(|n| n.starts_with(&prefix)) {
            let _ = ip(&["netns", "del", &stale]);
        }
        let subnet = free_subnet(tag)?;
        let net = Net {
            tag: tag.to_owned(),
            subnet,
            hosts: names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        (*n).to_owned(),
                        Ipv4Addr::new(NET[0], NET[1], subnet, i as u8 + 1),
                    )
                })
                .collect(),
            cuts: Mutex::new(BTreeMap::new()),
        };
        // From here on, dropping `net` removes whatever was made.
        net.build()
            .with_context(|| format!("making the hosts of net `{tag}`"))?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        let hub = self.ns("hub");
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let root_if = format!("pxr{}", self.subnet);
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", "up0", "netns", &hub,
        ])?;
        let caller = format!("{}/24", self.caller_addr());
        ip(&["addr", "add", &caller, "dev", &root_if])?;
        ip(&["link", "set", &root_if, "up"])?;
        ip(&["-n", &hub, "link", "set", "up0", "master", "br0", "up"])?;
        for (i, (name, addr)) in self.hosts.iter().enumerate() {
            let ns = self.ns(name);
            let port = format!("h{i}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
        }
        Ok(())
    }

    /// The namespace of host `name` (or of the bridge, `hub`).
    fn ns(&self, name: &str) -> String {
        format!("px-{}-{name}", self.tag)
    }

    /// The caller's own address on the bridge.
    pub fn caller_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.subnet, 254)
    }

    /// Host `name`'s address.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        *self
            .hosts
            .get(name)
            .unwrap_or_else(|| panic!("net `{}` has no host `{name}`", self.tag))
    }

    /// The hosts' names.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Host `name`'s namespace, for `ip netns exec`.
    pub fn namespace(&self, name: &str) -> String {
        self.addr(name);
        self.ns(name)
    }

    /// A command that runs `program` on host `name` (`ip netns exec`, which
    /// becomes the program: its pid is the program's).
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(name)])
            .arg(program);
        c
    }

    /// A tokio runtime whose every thread lives on host `name`: what runs
    /// on it listens on and connects from that host's address, in this
    /// process. (A network namespace belongs to a thread, not a process:
    /// `setns` moves only the calling thread, and a socket stays in the
    /// namespace it was made in.) Shut it down with
    /// [`tokio::runtime::Runtime::shutdown_background`] when dropping it
    /// from async code.
    pub fn runtime(&self, name: &str, workers: usize) -> Result<tokio::runtime::Runtime> {
        let path = format!("/run/netns/{}", self.namespace(name));
        // Fail here, with the reason, rather than in a worker thread.
        let probe = path.clone();
        std::thread::spawn(move || enter(&probe))
            .join()
            .map_err(|_| anyhow::anyhow!("entering {path} panicked"))??;
        let on_start = path;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("{}-{name}", self.tag))
            .on_thread_start(move || {
                if let Err(e) = enter(&on_start) {
                    panic!("a runtime thread cannot enter {on_start}: {e:#}");
                }
            })
            .enable_all()
            .build()
            .with_context(|| format!("making a runtime on host `{name}`"))
    }

    /// Cuts the link between hosts `a` and `b`: each drops what it sends
    /// the other; both still reach every other host and the caller.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        let (addr_a, addr_b) = (self.addr(a), self.addr(b));
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        cuts.entry(a.to_owned()).or_default().insert(addr_b);
        cuts.entry(b.to_owned()).or_default().insert(addr_a);
        self.apply(a, &cuts[a])?;
        self.apply(b, &cuts[b])
    }

    /// Mends the link [`Net::cut`] cut.
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        let (addr_a, addr_b) = (self.addr(a), self.addr(b));
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        let none = BTreeSet::new();
        for (host, other) in [(a, addr_b), (b, addr_a)] {
            if let Some(set) = cuts.get_mut(host) {
                set.remove(&other);
            }
            self.apply(host, cuts.get(host).unwrap_or(&none))?;
        }
        Ok(())
    }

    /// Mends every cut, the caller's included.
    pub fn heal_all(&self) -> Result<()> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        for (host, set) in cuts.iter_mut() {
            if !set.is_empty() {
                set.clear();
                self.apply(host, set)?;
            }
        }
        Ok(())
    }

    /// Silences host `name` towards the caller: what it sends the caller
    /// is dropped (a half-open path: the caller's packets still arrive, so
    /// open connections from the caller hang instead of failing).
    pub fn cut_from_caller(&self, name: &str) -> Result<()> {
        let caller = self.caller_addr();
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        cuts.entry(name.to_owned()).or_default().insert(caller);
        self.apply(name, &cuts[name])
    }

    /// Mends what [`Net::cut_from_caller`] cut.
    pub fn heal_from_caller(&self, name: &str) -> Result<()> {
        let caller = self.caller_addr();
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        let set = cuts.entry(name.to_owned()).or_default();
        set.remove(&caller);
        self.apply(name, &cuts[name])
    }

    /// Writes host `name`'s drop rules: its output to `drop` goes nowhere.
    fn apply(&self, name: &str, drop: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let ns = self.namespace(name);
        // Replace the table whole: add (so the delete finds it), delete, add.
        let mut rules = String::from("table inet parallax {}\ndelete table inet parallax\n");
        if !drop.is_empty() {
            let list: Vec<String> = drop.iter().map(Ipv4Addr::to_string).collect();
            rules.push_str(&format!(
                "table inet parallax {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
                 ip daddr {{ {} }} drop\n  }}\n}}\n",
                list.join(", ")
            ));
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {ns} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names.iter().map(String::as_str).chain(["hub"]) {
            let _ = ip(&["netns", "del", &self.ns(name)]);
        }
    }
}

/// Deletes what nets tagged `<prefix><pid>` left behind when the process
/// `pid` has exited without dropping them (killed): a run that tags its
/// net with its own pid does not disturb another running at once.
pub fn remove_left_by_exited(prefix: &str) -> Result<()> {
    let start = format!("px-{prefix}");
    for ns in namespaces()? {
        let Some(rest) = ns.strip_prefix(&start) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    #[expect(unsafe_code, reason = "setns has no safe wrapper in std")]
    // SAFETY: `file` is an open namespace file for the call's duration;
    // setns only changes which network namespace this thread's new
    // sockets are made in.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns into {path}: {}. Fix: run as root",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The effective user id, from `id -u` (the workspace has no unsafe code
/// to call geteuid with).
fn euid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// Runs `ip args`; an error carries what it printed.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The named network namespaces.
fn namespaces() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A third octet whose caller address no interface here holds, starting
/// from one the tag picks (so nets of different tests rarely collide).
fn free_subnet(tag: &str) -> Result<u8> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip addr")?;
    let taken = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = blake3::hash(tag.as_bytes()).as_bytes()[0];
    (0..=255u16)
        .map(|i| ((u16::from(start) + i) % 250 + 1) as u8)
        .find(|k| !taken.contains(&format!(" {}.{}.{k}.254/", NET[0], NET[1])))
        .context("every 10.213.x.0/24 subnet is taken")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a host reaches `addr:port` within half a second.
    fn reaches(net: &Net, from: &str, to: std::net::SocketAddr) -> bool {
        let code = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(0.5)\n\
             try:\n  s.connect(('{}',{}))\n  sys.exit(0)\nexcept Exception:\n  sys.exit(1)\n",
            to.ip(),
            to.port()
        );
        net.command(from, "python3")
            .args(["-c", &code])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether this machine can make hosts; says SKIPPED if not, and
    /// fails under `PARALLAX_REQUIRE_TOOLS`.
    fn can_make_hosts() -> bool {
        let Err(e) = Net::available() else {
            return true;
        };
        assert!(
            std::env::var_os("PARALLAX_REQUIRE_TOOLS").is_none(),
            "PARALLAX_REQUIRE_TOOLS is set: {e}"
        );
        eprintln!("SKIPPED: {e}");
        false
    }

    #[test]
    fn a_cut_link_drops_only_that_pair() {
        if !can_make_hosts() {
            return;
        }
        let net = Net::create("unit", &["a", "b", "c"]).unwrap();
        // A listener on every host, and on the caller's address.
        let mut listeners = Vec::new();
        for host in ["a", "b", "c"] {
            let code = format!(
                "import socket,time\ns=socket.socket()\ns.bind(('{}',7000))\ns.listen(64)\n\
                 while True:\n  c,_=s.accept()\n  c.close()\n",
                net.addr(host)
            );
            let child = net
                .command(host, "python3")
                .args(["-c", &code])
                .spawn()
                .unwrap();
            listeners.push(KillOnDrop(child));
        }
        let at = |h: &str| std::net::SocketAddr::from((net.addr(h), 7000));
        let wait_up = std::time::Instant::now();
        while !reaches(&net, "a", at("b")) {
            assert!(wait_up.elapsed().as_secs() < 10, "a never reached b");
        }
        net.cut("a", "b").unwrap();
        assert!(!reaches(&net, "a", at("b")) && !reaches(&net, "b", at("a")));
        assert!(reaches(&net, "a", at("c")) && reaches(&net, "b", at("c")));
        // The caller reaches every host.
        assert!(
            std::net::TcpStream::connect_timeout(&at("a"), std::time::Duration::from_secs(1))
                .is_ok()
        );
        net.heal("a", "b").unwrap();
        assert!(reaches(&net, "a", at("b")) && reaches(&net, "b", at("a")));
        let names: Vec<String> = ["a", "b", "c", "hub"].map(|h| net.ns(h)).to_vec();
        drop(listeners);
        drop(net);
        let left = namespaces().unwrap();
        assert!(
            names.iter().all(|n| !left.contains(n)),
            "namespaces left: {left:?}"
        );
    }

    #[test]
    fn a_runtime_on_a_host_listens_and_connects_from_there() {
        if !can_make_hosts() {
            return;
        }
        let net = Net::create("unitrt", &["a", "b", "c"]).unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|h| net.runtime(h, 1).unwrap());
        // Only a thread on b can listen on b's address.
        let b_addr = std::net::SocketAddr::from((net.addr("b"), 0));
        assert!(std::net::TcpListener::bind(b_addr).is_err());
        // `block_on` polls on the calling thread: what must run on the
        // host is spawned onto the runtime's own threads.
        let listener = b
            .block_on(b.spawn(tokio::net::TcpListener::bind(b_addr)))
            .unwrap()
            .expect("a thread of b's runtime binds b's address");
        let at = listener.local_addr().unwrap();
        b.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let connects = |rt: &tokio::runtime::Runtime| {
            rt.block_on(rt.spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    tokio::net::TcpStream::connect(at),
                )
                .await
                .is_ok_and(|c| c.is_ok())
            }))
            .unwrap()
        };
        assert!(connects(&a) && connects(&c));
        net.cut("a", "b").unwrap();
        assert!(
            !connects(&a),
            "a's runtime still reaches b through a cut link"
        );
        assert!(connects(&c), "c's runtime lost b when only a–b was cut");
        assert!(
            std::net::TcpStream::connect_timeout(&at, std::time::Duration::from_secs(1)).is_ok(),
            "the caller lost b"
        );
        net.heal("a", "b").unwrap();
        assert!(connects(&a));
        for rt in [a, b, c] {
            rt.shutdown_background();
        }
    }

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
