//! Many hosts on one machine: each test brings up a virtual cluster of its
//! own (scripts/cluster.sh: network namespaces joined by veth links, with no
//! route anywhere else), runs jobs across its hosts, and takes it down again
//! even when it fails. It needs root (CI runs as root) and a kernel that
//! allows network namespaces; elsewhere each test says why it skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

/// One cluster at a time: the jobs share two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A cluster that is taken down when dropped (a failed assertion included).
struct Cluster {
    name: String,
    hostfile: PathBuf,
}

impl Cluster {
    /// `hosts` hosts of `slots` ranks, or None (said why) where namespaces cannot be made.
    fn up(tag: &str, hosts: usize, slots: usize, rate: Option<&str>) -> Option<Cluster> {
        if let Some(why) = cannot_make_namespaces() {
            eprintln!("skipped: {why}");
            return None;
        }
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let mut cmd = Command::new("bash");
        cmd.args([SCRIPT, "up", &hosts.to_string(), "--slots", &slots.to_string(), "--name", &name]);
        if let Some(r) = rate {
            cmd.args(["--rate", r]);
        }
        let o = cmd.output().unwrap();
        // Made first, so that a failed `up` is taken down too.
        let cluster = Cluster { hostfile: state_dir(&name).join("hostfile"), name };
        assert!(o.status.success(), "cluster.sh up: {}", String::from_utf8_lossy(&o.stderr));
        Some(cluster)
    }

    /// `mpirun -np N --hostfile H ARGS...` started on host 0.
    fn mpirun(&self, np: usize, args: &[&str]) -> common::Run {
        let mut cmd = Command::new("bash");
        cmd.args([SCRIPT, "run", "--name", &self.name, "--", "mpirun", "-np", &np.to_string(), "--hostfile"])
            .arg(&self.hostfile)
            .arg(BIN)
            .args(args);
        self.run(cmd)
    }

    fn run(&self, mut cmd: Command) -> common::Run {
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        common::run_with_deadline(cmd, Duration::from_secs(120))
    }

    fn namespace(&self, host: usize) -> String {
        format!("{}-h{host}", self.name)
    }

    /// Processes still running in host `host`'s namespace.
    fn pids(&self, host: usize) -> String {
        let o = Command::new("ip").args(["netns", "pids", &self.namespace(host)]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let o = Command::new("bash").args([SCRIPT, "down", "--name", &self.name]).output().unwrap();
        assert!(o.status.success() || std::thread::panicking(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/tmp/candle-mpi-cluster").join(name)
}

/// Why this machine cannot host a virtual cluster, if it cannot.
fn cannot_make_namespaces() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the virtual cluster needs root (network namespaces); CI runs as root".into());
    }
    let probe = format!("cmprobe{}", std::process::id() % 100_000);
    let o = Command::new("ip").args(["netns", "add", &probe]).output();
    match o {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
        Ok(o) => Some(format!("`ip netns add` is refused here: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("no `ip` command (apt-get install iproute2): {e}")),
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn train_args<'a>(steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--threads",
        "1",
        "train",
        "--model",
        "small",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--steps",
        steps,
        "--log-every",
        "1000",
    ];
    a.extend_from_slice(extra);
    a
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("candle-mpi-cluster-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_cluster_has_no_way_out_and_leaves_nothing_behind() {
    let _one = lock();
    let name;
    {
        let Some(c) = Cluster::up("cw", 2, 1, Some("1gbit")) else { return };
        name = c.name.clone();
        let exec = |host: usize, args: &[&str]| {
            let o = Command::new("ip").args(["netns", "exec", &c.namespace(host)]).args(args).output().unwrap();
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).to_string()
        };
        for host in 0..2 {
            assert_eq!(exec(host, &["ip", "route", "show", "default"]).trim(), "", "host {host} has a default route");
            let links = exec(host, &["ip", "-o", "link", "show"]);
            let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
            assert_eq!(names.len(), 2, "host {host} has links {names:?}, not lo and eth0 alone");
            assert!(names[0] == "lo" && names[1].starts_with("eth0"), "{names:?}");
            let qdisc = exec(host, &["tc", "qdisc", "show", "dev", "eth0"]);
            assert!(qdisc.contains("tbf") && qdisc.contains("rate 1Gbit"), "host {host}: {qdisc}");
        }
        assert_eq!(std::fs::read_to_string(&c.hostfile).unwrap(), "10.77.0.1 slots=1\n10.77.0.2 slots=1\n");
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}-")))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!state_dir(&name).exists(), "the cluster's folder is left behind");
}

/// `train` on `np` ranks of `cluster` (or of this host), its summary.
fn trained(cluster: Option<&Cluster>, np: usize, tag: &str, extra: &[&str]) -> serde_json::Value {
    let dir = temp(tag);
    let args = train_args("3", &[extra, &["--out", dir.to_str().unwrap()]].concat());
    let run = match cluster {
        Some(c) => c.mpirun(np, &args),
        None => common::mpirun(np, BIN, &args, Duration::from_secs(120)),
    };
    common::assert_ok(&run, tag);
    let s = summary(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    s
}

#[test]
fn the_hierarchical_exchange_leaves_the_flat_ones_bits_and_half_its_bytes_between_hosts() {
    let _one = lock();
    let Some(c) = Cluster::up("cb", 2, 2, None) else { return };
    for dtype in ["f16", "bf16", "f32"] {
        let flat = trained(Some(&c), 4, "flat", &["--transport", "messages", "--grad-dtype", dtype]);
        let hier = trained(Some(&c), 4, "hier", &["--transport", "hierarchical", "--grad-dtype", dtype]);
        let auto = trained(Some(&c), 4, "auto", &["--grad-dtype", dtype]);
        assert_eq!(flat["world_size"], 4);
        for s in [&hier, &auto] {
            assert_eq!(
                s["param_l2"], flat["param_l2"],
                "{dtype}: parameters after 3 steps differ from the flat exchange's"
            );
            assert_eq!(s["final_loss"], flat["final_loss"], "{dtype}");
        }
        let (f, h) = (flat["between_hosts_bytes"].as_f64().unwrap(), hier["between_hosts_bytes"].as_f64().unwrap());
        eprintln!("{dtype}: bytes between hosts per step, flat {f}, hierarchical {h}");
        assert!(f > 0.0, "{dtype}: the flat exchange sent nothing between hosts");
        assert_eq!(h * 2.0, f, "{dtype}: hierarchical sends 1/(ranks per host) of the flat bytes between hosts");
        assert_eq!(auto["between_hosts_bytes"], hier["between_hosts_bytes"], "auto takes the hierarchical exchange");
    }
}

#[test]
fn one_rank_per_host_trains_to_the_bits_of_one_host() {
    let _one = lock();
    let Some(c) = Cluster::up("cr", 2, 1, None) else { return };
    let across = trained(Some(&c), 2, "across", &[]);
    let here = trained(None, 2, "here", &[]);
    assert_eq!(across["param_l2"], here["param_l2"], "parameters after 3 steps differ between 2 hosts and 1");
    assert_eq!(across["final_loss"], here["final_loss"]);
    assert_eq!(here["between_hosts_bytes"], 0.0, "one host sends nothing between hosts");
    assert!(across["between_hosts_bytes"].as_f64().unwrap() > 0.0);
    // --overlap auto: on across hosts (no barrier), off on one host.
    assert_eq!((across["overlap"].as_bool(), here["overlap"].as_bool()), (Some(true), Some(false)));
    assert_eq!(across["wait_s"], 0.0, "no barrier when overlapped");
    assert!(here["wait_s"].as_f64().unwrap() > 0.0, "the barrier's wait measured on one host");
}

#[test]
fn ranks_are_placed_on_hosts_under_their_own_names() {
    let _one = lock();
    let Some(c) = Cluster::up("cp", 2, 2, None) else { return };
    let dir = temp("names");
    let run = c.mpirun(4, &train_args("1", &["--out", dir.to_str().unwrap()]));
    common::assert_ok(&run, "training on 2 hosts x 2 ranks");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["rank0_host"], c.namespace(0), "rank 0 runs on host 0 under its own host name");
    assert_eq!(config["ranks_on_rank0_host"], 2, "the hosts' ranks share memory two by two");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_hung_or_killed_on_another_host_ends_the_job_naming_it() {
    let _one = lock();
    let Some(c) = Cluster::up("cf", 2, 2, None) else { return };
    let run = c.mpirun(4, &train_args("20", &["--fault-inject", "3:2:hang", "--collective-timeout", "3"]));
    eprintln!("rank 3 hung on host 1: the job ended after {:.2} s (timeout 3 s)", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("rank(s) 3 (last seen at step 1) never arrived"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);

    let run = c.mpirun(4, &train_args("20", &["--fault-inject", "2:2:kill"]));
    eprintln!("rank 2 killed on host 1: the job ended after {:.2} s", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("rank 2: fault injection: SIGKILL at step 2"), "{}", run.output);
    assert!(run.output.contains("process rank 2") && run.output.contains("10.77.0.2"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.pids(1), "", "processes left on host 1");
    assert_eq!(c.pids(0), "", "processes left on host 0");

    // The whole of host 1 dies (its daemon and ranks, SIGKILL) in a long run.
    let host1 = c.namespace(1);
    let killer = std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            let o = Command::new("ip").args(["netns", "pids", &host1]).output().unwrap();
            let pids = String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect::<Vec<_>>();
            // The daemon and both ranks are up, and the ranks have had time to start training.
            if pids.len() >= 3 {
                std::thread::sleep(Duration::from_secs(2));
                let o = Command::new("ip").args(["netns", "pids", &host1]).output().unwrap();
                let pids = String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect::<Vec<_>>();
                Command::new("kill").arg("-9").args(&pids).status().unwrap();
                return std::time::Instant::now();
            }
        }
        panic!("host 1's processes never started");
    });
    let run = c.mpirun(4, &train_args("100000", &["--synthetic-size", "100000", "--collective-timeout", "3"]));
    let ended = std::time::Instant::now();
    let after = ended - killer.join().unwrap();
    eprintln!("host 1 killed whole: the job ended {:.2} s later", after.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(after < Duration::from_secs(15), "the job ended {after:?} after host 1 died: {}", run.output);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.pids(0), "", "processes left on host 0 after host 1 died");
}

#[test]
fn a_slow_checkpoint_on_another_host_is_not_a_stuck_rank() {
    let _one = lock();
    let Some(c) = Cluster::up("cs", 2, 1, None) else { return };
    let ckpt = temp("ckpt");
    let run = c.mpirun(2, &train_args("4", &common::slow_checkpoint_flags(ckpt.to_str().unwrap())));
    common::assert_ok(&run, "a checkpoint 3 s slower than a 1 s timeout, asked across hosts");
    assert!(run.output.contains("writing the step-2 checkpoint 3 s slower"), "{}", run.output);
    let _ = std::fs::remove_dir_all(&ckpt);
}

#[test]
fn bench_sweeps_one_and_two_hosts_from_a_hostfile() {
    let _one = lock();
    let Some(c) = Cluster::up("cn", 2, 1, Some("1gbit")) else { return };
    let out = temp("bench");
    let mut cmd = Command::new("bash");
    cmd.args([SCRIPT, "run", "--name", &c.name, "--", BIN, "bench", "--models", "small", "--workers", "1,2"])
        .args(["--image-size", "16", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--repeat", "1"])
        .args(["--classes", "10", "--no-ceiling", "--hostfile"])
        .arg(&c.hostfile)
        .arg("--out")
        .arg(&out);
    let run = c.run(cmd);
    common::assert_ok(&run, "bench --hostfile over 1 and 2 hosts");
    for workers in [1, 2] {
        let runs: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(&format!("-n{workers}-")))
            .collect();
        assert_eq!(runs.len(), 1, "one run of {workers} worker(s): {runs:?}");
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(runs[0].join("run.json")).unwrap()).unwrap();
        assert_eq!(record["ok"], true, "{record}");
        assert_eq!(record["oversubscribed"], false, "a hostfile's slots place the ranks, not --oversubscribe");
        assert!(record["command"].as_str().unwrap().contains("--hostfile"), "{record}");
        assert_eq!(summary(&runs[0])["world_size"], workers);
    }
    let _ = std::fs::remove_dir_all(&out);
}
