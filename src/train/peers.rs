//! The watchdog's view of ranks on other hosts: each rank serves its own
//! progress (collectives entered, step, writing a checkpoint) on a TCP port
//! of its host's addresses, and a rank whose wait timed out asks the others
//! for theirs. Apart from MPI on purpose: a rank stuck outside MPI, or an MPI
//! that no longer progresses, must still be seen, and MPI calls from the
//! watchdog's thread are not allowed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::Control;

/// Addresses of one rank that are gathered: a host seldom has more.
const ADDRESSES: usize = 4;
/// How long an answer may take before the rank counts as not answering.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the listener looks for a connection.
const POLL: Duration = Duration::from_millis(10);

/// A rank's own progress: collectives entered, step, writing a checkpoint,
/// and when it last finished writing one.
pub struct Progress {
    entered: AtomicU64,
    step: AtomicU64,
    writing: AtomicBool,
    /// Nanoseconds after `born` at which the last checkpoint was written; 0: none yet.
    wrote_at_ns: AtomicU64,
    born: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            entered: AtomicU64::new(0),
            step: AtomicU64::new(0),
            writing: AtomicBool::new(false),
            wrote_at_ns: AtomicU64::new(0),
            born: Instant::now(),
        }
    }
}

impl Progress {
    pub fn entered(&self, seq: u64, step: usize) {
        self.step.store(step as u64, Ordering::Release);
        self.entered.store(seq, Ordering::Release);
    }

    pub fn writing_checkpoint(&self, writing: bool) {
        if !writing && self.writing.load(Ordering::Acquire) {
            let at = self.born.elapsed().as_nanos().max(1) as u64;
            self.wrote_at_ns.store(at, Ordering::Release);
        }
        self.writing.store(writing, Ordering::Release);
    }

    /// The answer to a peer: who asks checks the first three words.
    fn answer(&self, nonce: u64, rank: usize) -> [u8; 8 * WORDS] {
        let wrote_at = self.wrote_at_ns.load(Ordering::Acquire);
        let ago_ms = match wrote_at {
            0 => u64::MAX,
            at => (self.born.elapsed().as_nanos() as u64).saturating_sub(at) / 1_000_000,
        };
        let words = [
            MAGIC,
            nonce,
            rank as u64,
            self.entered.load(Ordering::Acquire),
            self.step.load(Ordering::Acquire),
            u64::from(self.writing.load(Ordering::Acquire)),
            ago_ms,
        ];
        let mut out = [0u8; 8 * WORDS];
        for (w, chunk) in words.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// Words of an answer: magic, the job's nonce, the rank, then its progress.
const WORDS: usize = 7;
/// Marks an answer as one of ours ("cmpiprog").
const MAGIC: u64 = u64::from_le_bytes(*b"cmpiprog");

/// What a rank said of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Collectives entered.
    pub entered: u64,
    pub step: u64,
    pub writing: bool,
    /// How long ago it finished writing its last checkpoint (None: not yet,
    /// or not known).
    pub wrote_ago: Option<Duration>,
}

/// This rank's listener: answers every connection with its progress, on
/// its own thread, so that it answers while the watchdog asks others.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn serve(listener: TcpListener, progress: Arc<Progress>, nonce: u64, rank: usize) -> anyhow::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new().name("candle-mpi-progress".into()).spawn(move || {
            while !halt.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
                        let _ = stream.write_all(&progress.answer(nonce, rank));
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        })?;
        Ok(Server { stop, thread: Some(thread) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where every rank answers, in rank order, and the job's nonce.
pub struct Peers {
    nonce: u64,
    addresses: Vec<Vec<SocketAddrV4>>,
}

impl Peers {
    /// Rank `rank`'s progress, or None where it does not answer (dead, or its
    /// host unreachable); an answer from anything but that rank of this job
    /// is no answer.
    pub fn read(&self, rank: usize) -> Option<Seen> {
        self.addresses[rank].iter().find_map(|addr| self.ask(addr, rank))
    }

    fn ask(&self, addr: &SocketAddrV4, rank: usize) -> Option<Seen> {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(*addr), ANSWER_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
        let mut buf = [0u8; 8 * WORDS];
        stream.read_exact(&mut buf).ok()?;
        let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if word(0) != MAGIC || word(1) != self.nonce || word(2) != rank as u64 {
            return None;
        }
        let wrote_ago = (word(6) != u64::MAX).then(|| Duration::from_millis(word(6)));
        Some(Seen { entered: word(3), step: word(4), writing: word(5) != 0, wrote_ago })
    }
}

/// Collective: serves this rank's `progress` and gathers every rank's addresses.
pub fn publish(control: &Control, progress: Arc<Progress>) -> anyhow::Result<(Server, Peers)> {
    // One number for the job, so that an answer from another job's port is no answer.
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut nonce = (clock.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).to_le_bytes();
    control.broadcast_bytes(&mut nonce, 0)?;
    let nonce = u64::from_le_bytes(nonce);
    let rank = control.info().rank;
    let mine = listen().and_then(|(listener, words)| Ok((Server::serve(listener, progress, nonce, rank)?, words)));
    let (server, words) = control.agree("the watchdog's progress port", mine)?;
    let mut all = vec![Vec::new(); control.info().size];
    for word in words {
        for (rank, w) in control.all_gather_u64(word)?.into_iter().enumerate() {
            if let Some(addr) = decode(w) {
                all[rank].push(addr);
            }
        }
    }
    Ok((server, Peers { nonce, addresses: all }))
}

fn listen() -> anyhow::Result<(TcpListener, [u64; ADDRESSES])> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| anyhow::anyhow!("the watchdog cannot open a TCP port for ranks on other hosts: {e}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let mut words = [0u64; ADDRESSES];
    for (w, ip) in words.iter_mut().zip(host_ipv4_addresses()) {
        *w = encode(SocketAddrV4::new(ip, port));
    }
    Ok((listener, words))
}

/// An address in one word: a marker bit, the IPv4 address, the port (0: none).
fn encode(addr: SocketAddrV4) -> u64 {
    1 << 48 | u64::from(u32::from(*addr.ip())) << 16 | u64::from(addr.port())
}

fn decode(w: u64) -> Option<SocketAddrV4> {
    (w >> 48 == 1).then(|| SocketAddrV4::new(Ipv4Addr::from((w >> 16) as u32), w as u16))
}

/// This host's IPv4 addresses other ranks can reach: every interface's but
/// loopback, else loopback alone (a host that is the whole job).
fn host_ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that freeifaddrs releases; each entry's
    // address is read only where its family says it is an IPv4 sockaddr_in.
    unsafe {
        if libc::getifaddrs(&mut list) == 0 {
            let mut at = list;
            while !at.is_null() {
                let addr = (*at).ifa_addr;
                if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                    let sin = &*(addr as *const libc::sockaddr_in);
                    found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                }
                at = (*at).ifa_next;
            }
            libc::freeifaddrs(list);
        }
    }
    let mut reachable: Vec<Ipv4Addr> = found.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    if reachable.is_empty() {
        reachable.push(Ipv4Addr::LOCALHOST);
    }
    reachable.truncate(ADDRESSES);
    reachable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_survives_its_word_and_an_empty_word_is_none() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 40123);
        assert_eq!(decode(encode(addr)), Some(addr));
        assert_eq!(decode(0), None);
    }

    #[test]
    fn a_served_progress_is_read_back_from_that_rank_of_that_job_only() {
        let (listener, _) = listen().unwrap();
        let port = listener.local_addr().unwrap().port();
        let progress = Arc::new(Progress::default());
        progress.entered(7, 3);
        progress.writing_checkpoint(true);
        let server = Server::serve(listener, progress.clone(), 42, 1).unwrap();
        let here = vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)];
        let peers = Peers { nonce: 42, addresses: vec![vec![], here.clone()] };
        assert_eq!(peers.read(1), Some(Seen { entered: 7, step: 3, writing: true, wrote_ago: None }));
        progress.writing_checkpoint(false);
        progress.entered(8, 4);
        let seen = peers.read(1).unwrap();
        assert_eq!((seen.entered, seen.step, seen.writing), (8, 4, false));
        assert!(seen.wrote_ago.unwrap() < Duration::from_secs(5), "{seen:?}");
        assert_eq!(peers.read(0), None, "a rank without addresses does not answer");
        let other_job = Peers { nonce: 43, addresses: vec![vec![], here.clone()] };
        assert_eq!(other_job.read(1), None, "another job's answer is no answer");
        let other_rank = Peers { nonce: 42, addresses: vec![here.clone(), vec![]] };
        assert_eq!(other_rank.read(0), None, "another rank's answer is no answer");
        drop(server);
        assert_eq!(peers.read(1), None, "a stopped server does not answer");
    }
}
