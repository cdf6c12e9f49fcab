//! Hosts on one machine: network namespaces joined by veth pairs, with a
//! PostgreSQL server and real `portcullis serve` processes inside them, so
//! a test can take a link down the way a network partition does (packets
//! to the far side go nowhere; nothing is refused or reset) and bring it
//! back. Everything the test creates is named with a random tag and removed
//! on drop; no traffic leaves the namespaces but the test's own requests to
//! the gateways, over links that end in this test's namespace.
//!
//! It needs root (`ip netns`). Without it a test is skipped with a note,
//! except under `CI=true`, where it fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PostgreSQL 15 server binaries (Debian's place; `.ci/run` installs
/// them there when missing).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A network of namespaces: a hub with a bridge (the "switch" between the
/// database and the replicas' back links), and a host per role.
pub struct Net {
    tag: String,
    /// The /16 this network's addresses come from (random, so two runs
    /// on one machine do not clash in the test's own routing table).
    octet: u8,
    namespaces: Vec<String>,
    /// Links from this test's namespace to a host's front, deleted on drop.
    fronts: Vec<String>,
    hosts: u8,
}

/// One host: a namespace, its address on the back network (towards the
/// database), and its front address (towards the test), if any.
pub struct Host {
    pub ns: String,
    pub back: Ipv4Addr,
    pub front: Option<Ipv4Addr>,
    /// The hub's end of its back link: down, the host is cut off.
    hub_port: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

impl Net {
    /// A new network with an empty hub; `None` (skip) where namespaces
    /// cannot be made, outside CI.
    pub fn new() -> Option<Net> {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut net = Net { octet: 0, namespaces: Vec::new(), fronts: Vec::new(), hosts: 0, tag };
        net.octet = 100 + (rand::random::<u8>() % 100);
        let hub = net.ns_name("hub");
        let made = ip(&["netns", "add", &hub])
            .and_then(|()| ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]))
            .and_then(|()| ip(&["-n", &hub, "link", "set", "br0", "up"]));
        net.namespaces.push(hub);
        if let Err(e) = made {
            let note = format!("network-namespace tests need root and `ip netns`: {e}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and {note}");
            }
            eprintln!("SKIPPED: {note}");
            return None;
        }
        Some(net)
    }

    fn ns_name(&self, role: &str) -> String {
        format!("pc{}-{role}", self.tag)
    }

    /// A host on the back network; with `front`, also reachable from this
    /// test over a link of its own.
    pub fn host(&mut self, role: &str, front: bool) -> Host {
        self.hosts += 1;
        let n = self.hosts;
        let ns = self.ns_name(role);
        let hub = self.ns_name("hub");
        let back = Ipv4Addr::new(10, self.octet, 0, n);
        let hub_port = format!("p{n}");
        let mut steps = || -> Result<Option<Ipv4Addr>, String> {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "add", "back", "type", "veth", "peer", "name", &hub_port, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &hub_port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{back}/24"), "dev", "back"])?;
            ip(&["-n", &ns, "link", "set", "back", "up"])?;
            if !front {
                return Ok(None);
            }
            let outer = format!("pc{}f{n}", self.tag);
            let (mine, theirs) = (Ipv4Addr::new(10, self.octet, n, 1), Ipv4Addr::new(10, self.octet, n, 2));
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", "front", "netns", &ns])?;
            self.fronts.push(outer.clone());
            ip(&["addr", "add", &format!("{mine}/30"), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{theirs}/30"), "dev", "front"])?;
            ip(&["-n", &ns, "link", "set", "front", "up"])?;
            Ok(Some(theirs))
        };
        self.namespaces.push(ns.clone());
        let front = steps().unwrap_or_else(|e| panic!("making host {role}: {e}"));
        Host { ns, back, front, hub_port }
    }

    /// Takes `host`'s back link down at the hub (or up again): a partition
    /// from everything on the back network, the database included.
    pub fn set_back_link(&self, host: &Host, up: bool) {
        let hub = self.ns_name("hub");
        ip(&["-n", &hub, "link", "set", &host.hub_port, if up { "up" } else { "down" }]).expect("set the link");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.fronts {
            let _ = ip(&["link", "del", link]);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A PostgreSQL server of its own in `host`, trusting the back network.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub url: String,
}

impl Postgres {
    pub fn start(host: &Host) -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let as_postgres = |command: String| {
            let out = Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &command]).output().expect("su");
            assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("chown", &["postgres", &dir.path().display().to_string()]).expect("chown");
        as_postgres(format!("{PG_BIN}/initdb -D {} -A trust -U postgres --no-sync >/dev/null", data.display()));
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules.push_str(&format!("host all all {}/24 trust\n", host.back));
        std::fs::write(&hba, rules).expect("pg_hba.conf");
        let start = format!(
            "ip netns exec {} su postgres -s /bin/sh -c \"{PG_BIN}/pg_ctl -D {} -l {}/log -w -o '-p 5432 -k {} -c listen_addresses={} -c fsync=off' start >/dev/null\"",
            host.ns,
            data.display(),
            dir.path().display(),
            dir.path().display(),
            host.back
        );
        let out = Command::new("sh").args(["-c", &start]).output().expect("pg_ctl");
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        Postgres { url: format!("postgres://postgres@{}:5432/postgres", host.back), dir }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let stop = format!("{PG_BIN}/pg_ctl -D {}/data -m immediate stop", self.dir.path().display());
        let _ = Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &stop]).stderr(Stdio::null()).output();
    }
}

/// `portcullis serve` in `host`, on its front address, killed on drop.
pub struct Replica {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    _config: PathBuf,
}

impl Replica {
    /// Starts the binary on `toml` (its listeners are set to the host's
    /// front address here) and waits until `/readyz` answers 200.
    pub async fn start(host: &Host, toml: &str, dir: &Path) -> Replica {
        let front = host.front.expect("a host the test can reach");
        let (public, admin) = (SocketAddr::from((front, 8080)), SocketAddr::from((front, 9090)));
        let toml = toml.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{public}\""), 1).replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{admin}\""),
            1,
        );
        assert!(!toml.contains("127.0.0.1:0"), "both listeners moved to the front address");
        let config = dir.join(format!("{}.toml", host.ns));
        std::fs::write(&config, toml).expect("write the config");
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, env!("CARGO_BIN_EXE_portcullis"), "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start portcullis");
        let replica = Replica { child, public, admin, _config: config };
        // The listeners accept once the store is open and the keys read.
        let started = Instant::now();
        while tokio::net::TcpStream::connect(replica.admin).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "{} not listening within 20 s", host.ns);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = super::get(&replica.admin_url("/readyz"), &[]).await;
        assert_eq!(ready.status, http::StatusCode::OK, "{}: {}", host.ns, ready.text());
        replica
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
