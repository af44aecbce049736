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
use std::time::Duration;

use crate::comm::Control;

/// Addresses of one rank that are gathered: a host seldom has more.
const ADDRESSES: usize = 4;
/// How long an answer may take before the rank counts as not answering.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the listener looks for a connection.
const POLL: Duration = Duration::from_millis(10);

/// A rank's own progress: collectives entered, step, writing a checkpoint.
#[derive(Default)]
pub struct Progress([AtomicU64; 3]);

impl Progress {
    pub fn entered(&self, seq: u64, step: usize) {
        self.0[1].store(step as u64, Ordering::Release);
        self.0[0].store(seq, Ordering::Release);
    }

    pub fn writing_checkpoint(&self, writing: bool) {
        self.0[2].store(u64::from(writing), Ordering::Release);
    }

    fn bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        for (word, chunk) in self.0.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
        }
        out
    }
}

/// What a rank said of itself: (collectives entered, step, writing a checkpoint).
pub type Seen = (u64, u64, bool);

/// This rank's listener: answers every connection with its progress, on
/// its own thread, so that it answers while the watchdog asks others.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn serve(listener: TcpListener, progress: Arc<Progress>) -> anyhow::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new().name("candle-mpi-progress".into()).spawn(move || {
            while !halt.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
                        let _ = stream.write_all(&progress.bytes());
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

/// Where every rank answers, in rank order.
pub struct Peers(Vec<Vec<SocketAddrV4>>);

impl Peers {
    /// Rank `rank`'s progress, or None where it does not answer (dead, or its
    /// host unreachable).
    pub fn read(&self, rank: usize) -> Option<Seen> {
        self.0[rank].iter().find_map(ask)
    }
}

fn ask(addr: &SocketAddrV4) -> Option<Seen> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(*addr), ANSWER_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    let mut buf = [0u8; 24];
    stream.read_exact(&mut buf).ok()?;
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some((word(0), word(1), word(2) != 0))
}

/// Collective: serves this rank's `progress` and gathers every rank's addresses.
pub fn publish(control: &Control, progress: Arc<Progress>) -> anyhow::Result<(Server, Peers)> {
    let mine = listen().and_then(|(listener, words)| Ok((Server::serve(listener, progress)?, words)));
    let (server, words) = control.agree("the watchdog's progress port", mine)?;
    let mut all = vec![Vec::new(); control.info().size];
    for word in words {
        for (rank, w) in control.all_gather_u64(word)?.into_iter().enumerate() {
            if let Some(addr) = decode(w) {
                all[rank].push(addr);
            }
        }
    }
    Ok((server, Peers(all)))
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
    fn a_served_progress_is_read_back() {
        let (listener, _) = listen().unwrap();
        let port = listener.local_addr().unwrap().port();
        let progress = Arc::new(Progress::default());
        progress.entered(7, 3);
        progress.writing_checkpoint(true);
        let server = Server::serve(listener, progress.clone()).unwrap();
        let peers = Peers(vec![vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)], vec![]]);
        assert_eq!(peers.read(0), Some((7, 3, true)));
        progress.entered(8, 4);
        assert_eq!(peers.read(0), Some((8, 4, true)));
        assert_eq!(peers.read(1), None, "a rank without addresses does not answer");
        drop(server);
        assert_eq!(peers.read(0), None, "a stopped server does not answer");
    }
}
