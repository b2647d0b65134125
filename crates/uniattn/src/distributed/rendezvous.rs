//! The ranks meet on rank 0 over TCP before any GPU work: each says who it is and what job it
//! runs, rank 0 checks them all (ranks unique and in range, one world size, one job) and hands
//! every rank the same id (the NCCL communicator's), or the same error. So a bad address, a
//! port in use, a mismatched world size or a different model or plan on some rank stops every
//! rank before the first step, with a message naming the rank, instead of a hang in NCCL.
//! One JSON line each way. The connections then stay open ([`Links`]): a rank whose process
//! stops (crashes, is killed, loses its machine) closes them, and [`Links::watch`] tells every
//! other rank, by name, instead of leaving them waiting in NCCL for it; every rank reports its
//! progress over them too, so that rank 0 can name a rank that hangs alive
//! ([`super::progress`]).
use super::progress::{Phase, Progress, Ranks};
use super::{World, JOIN_TIMEOUT};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    world_size: usize,
    job: String,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    id: Option<Vec<u8>>,
    error: Option<String>,
}

/// Meets the other ranks: rank 0 (`leader_id` gives the id it hands out, made only once every
/// rank has joined and agreed) waits up to `timeout` for the others; the others connect to it
/// (retrying until `timeout`, as rank 0 may start later). `job` describes what must match on
/// every rank (model, plan, variant, training options). Returns the id and the open links.
pub fn join(
    world: &World,
    job: &str,
    timeout: Duration,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Links)> {
    let at = format!("{}:{}", world.master_addr, world.master_port);
    if world.is_leader() {
        lead(world, job, &at, timeout, leader_id)
    } else {
        follow(world, job, &at, timeout)
    }
}

/// [`join`] with the default [`JOIN_TIMEOUT`].
pub fn join_default(
    world: &World,
    job: &str,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Links)> {
    join(world, job, JOIN_TIMEOUT, leader_id)
}

fn lead(
    world: &World,
    job: &str,
    at: &str,
    timeout: Duration,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Links)> {
    let listener = TcpListener::bind(at).map_err(|e| {
        Error::invalid(format!(
            "rank 0 cannot listen on MASTER_ADDR:MASTER_PORT {at} ({e}): the port is in use or the address is not this machine's"
        ))
    })?;
    lead_on(listener, world, job, at, timeout, leader_id)
}

/// Rank 0's side of [`join`] on its bound `listener`.
fn lead_on(
    listener: TcpListener,
    world: &World,
    job: &str,
    at: &str,
    timeout: Duration,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Links)> {
    listener.set_nonblocking(true).map_err(|e| Error::invalid(format!("rendezvous at {at}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<(Hello, TcpStream)> = Vec::new();
    let mut problem: Option<String> = None;
    while joined.len() + 1 < world.size && problem.is_none() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(
                    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
                ));
                let mut line = String::new();
                let hello = BufReader::new(&stream)
                    .read_line(&mut line)
                    .ok()
                    .and_then(|_| serde_json::from_str::<Hello>(&line).ok());
                let Some(hello) = hello else { continue }; // not one of ours: ignore it
                problem = check(world, job, &hello, &joined);
                joined.push((hello, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let mut missing: Vec<usize> = (1..world.size).collect();
                    missing.retain(|r| !joined.iter().any(|(h, _)| h.rank == *r));
                    problem = Some(format!(
                        "rank(s) {missing:?} did not join the rendezvous at {at} within {} s",
                        timeout.as_secs()
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => problem = Some(format!("rendezvous at {at}: {e}")),
        }
    }
    let result = match problem {
        Some(p) => Err(p),
        None => leader_id().map_err(|e| e.to_string()),
    };
    let reply = match &result {
        Ok(id) => Reply { id: Some(id.clone()), error: None },
        Err(e) => Reply { id: None, error: Some(e.clone()) },
    };
    let line = serde_json::to_string(&reply).expect("a reply serialises") + "\n";
    let mut peers = Vec::with_capacity(joined.len());
    for (hello, mut stream) in joined {
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.set_read_timeout(None);
        peers.push((hello.rank, BufReader::new(stream)));
    }
    let id = result.map_err(Error::invalid)?;
    Ok((id, Links { rank: 0, peers }))
}

/// What is wrong with `hello` beside the ranks already `joined`, if anything.
fn check(world: &World, job: &str, hello: &Hello, joined: &[(Hello, TcpStream)]) -> Option<String> {
    if hello.world_size != world.size {
        return Some(format!(
            "rank {} says WORLD_SIZE={}, rank 0 says {}: start every rank with the same world size",
            hello.rank, hello.world_size, world.size
        ));
    }
    if hello.rank == 0 || hello.rank >= world.size || joined.iter().any(|(h, _)| h.rank == hello.rank) {
        return Some(format!("two processes say RANK={} (each rank 0-{} once)", hello.rank, world.size - 1));
    }
    (hello.job != job).then(|| {
        format!(
            "rank {} runs a different job than rank 0 (every rank needs the same model, plan, variant and \
             training options):\n  rank 0: {job}\n  rank {}: {}",
            hello.rank, hello.rank, hello.job
        )
    })
}

fn follow(world: &World, job: &str, at: &str, timeout: Duration) -> Result<(Vec<u8>, Links)> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = at
        .to_socket_addrs()
        .map_err(|e| Error::invalid(format!("MASTER_ADDR:MASTER_PORT {at}: not an address ({e})")))?
        .collect();
    let stream = loop {
        let last = match addrs
            .iter()
            .map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)))
            .find_map(|r| r.ok())
        {
            Some(s) => break s,
            None => format!("no answer from {at}"),
        };
        if Instant::now() >= deadline {
            return Err(Error::invalid(format!(
                "rank {} could not reach rank 0 at MASTER_ADDR:MASTER_PORT {at} within {} s ({last})",
                world.rank,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let hello = Hello { rank: world.rank, world_size: world.size, job: job.to_string() };
    let fail = |e: std::io::Error| {
        Error::invalid(format!("rank {}: rendezvous with rank 0 at {at}: {e}", world.rank))
    };
    (&stream)
        .write_all((serde_json::to_string(&hello).expect("hello serialises") + "\n").as_bytes())
        .map_err(fail)?;
    // Rank 0 answers once every rank has joined (or its wait ran out): a little longer.
    stream.set_read_timeout(Some(timeout + Duration::from_secs(10))).map_err(fail)?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    reader.read_line(&mut line).map_err(fail)?;
    let reply: Reply = serde_json::from_str(&line).map_err(|_| {
        Error::invalid(format!("rank {}: rank 0 at {at} closed the rendezvous without an answer", world.rank))
    })?;
    reader.get_ref().set_read_timeout(None).map_err(fail)?;
    match (reply.id, reply.error) {
        (Some(id), _) => Ok((id, Links { rank: world.rank, peers: vec![(0, reader)] })),
        (None, e) => Err(Error::invalid(format!(
            "rank 0 stopped the job: {}",
            e.unwrap_or_else(|| "no reason given".into())
        ))),
    }
}

/// The job's connections after the meeting: rank 0's to every other rank, each rank's to
/// rank 0.
pub struct Links {
    rank: usize,
    peers: Vec<(usize, BufReader<TcpStream>)>,
}

/// What [`Links::watch`] returns: [`Watch::report`] says where this rank is, [`Watch::finish`]
/// that it ended normally.
pub struct Watch {
    rank: usize,
    finished: Arc<AtomicBool>,
    writers: Vec<TcpStream>,
    /// Rank 0: every rank's last report.
    ranks: Option<Arc<Mutex<Ranks>>>,
}

/// How often rank 0 looks for a rank that hangs.
const HANG_CHECK_EVERY: Duration = Duration::from_millis(200);

impl Links {
    /// Watches the other ranks on threads of its own: when one stops before saying it finished
    /// ([`Watch::finish`]), `on_stop` gets a message naming it (rank 0 sees its connection close
    /// and tells the others; rank 0 stopping closes every rank's). With `hang_timeout`, rank 0
    /// also names ranks that hang alive ([`super::progress::Ranks::hung`], from what every rank
    /// [`Watch::report`]s) to every rank.
    pub fn watch(
        self,
        hang_timeout: Option<Duration>,
        on_stop: impl Fn(String) + Send + Sync + 'static,
    ) -> Watch {
        let finished = Arc::new(AtomicBool::new(false));
        let on_stop = Arc::new(on_stop);
        let writer = |r: &BufReader<TcpStream>| r.get_ref().try_clone().ok();
        let writers: Vec<TcpStream> = self.peers.iter().filter_map(|(_, r)| writer(r)).collect();
        let size = self.peers.len() + 1;
        let ranks = (self.rank == 0).then(|| Arc::new(Mutex::new(Ranks::new(size, Instant::now()))));
        for (peer, mut reader) in
            self.peers.iter().filter_map(|(p, r)| Some((*p, BufReader::new(writer(r)?))))
        {
            let (finished, on_stop, ranks) = (finished.clone(), on_stop.clone(), ranks.clone());
            // Rank 0 passes a rank's stop on to the others.
            let others: Vec<TcpStream> = if self.rank == 0 {
                self.peers.iter().filter(|(p, _)| *p != peer).filter_map(|(_, r)| writer(r)).collect()
            } else {
                vec![]
            };
            std::thread::spawn(move || {
                let (mut line, mut done) = (String::new(), false);
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let stopping = !finished.load(Ordering::SeqCst);
                    if line.trim() == "done" {
                        done = true;
                        if let Some(ranks) = &ranks {
                            ranks.lock().expect("progress lock").finish(peer);
                        }
                    } else if let (Some(p), Some(ranks)) = (Progress::parse(&line), &ranks) {
                        ranks.lock().expect("progress lock").report(peer, p, Instant::now());
                    } else if let (Some(r), true) = (line.trim().strip_prefix("stopped "), stopping) {
                        on_stop(format!("rank {r} stopped before the job finished"));
                    } else if let (Some(why), true) = (line.trim().strip_prefix("hung "), stopping) {
                        on_stop(why.to_string());
                    }
                    line.clear();
                }
                if !done && !finished.load(Ordering::SeqCst) {
                    for mut o in others {
                        let _ = o.write_all(format!("stopped {peer}\n").as_bytes());
                    }
                    on_stop(format!("rank {peer} stopped before the job finished (its connection closed)"));
                }
            });
        }
        if let (Some(ranks), Some(timeout)) = (&ranks, hang_timeout) {
            let (ranks, finished, on_stop) = (ranks.clone(), finished.clone(), on_stop.clone());
            let followers: Vec<TcpStream> = self.peers.iter().filter_map(|(_, r)| writer(r)).collect();
            std::thread::spawn(move || {
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(HANG_CHECK_EVERY);
                    let hung = ranks.lock().expect("progress lock").hung(Instant::now(), timeout);
                    if let (Some(why), false) = (hung, finished.load(Ordering::SeqCst)) {
                        for mut f in &followers {
                            let _ = f.write_all(format!("hung {why}\n").as_bytes());
                        }
                        on_stop(why);
                        return;
                    }
                }
            });
        }
        Watch { rank: self.rank, finished, writers, ranks }
    }
}

impl Watch {
    /// Where this rank is (see [`super::progress`]): rank 0 notes it, the others tell rank 0.
    pub fn report(&self, step: usize, phase: Phase) {
        let p = Progress { step, phase };
        match &self.ranks {
            Some(ranks) => ranks.lock().expect("progress lock").report(self.rank, p, Instant::now()),
            None => {
                for mut w in &self.writers {
                    let _ = w.write_all(p.line().as_bytes());
                }
            }
        }
    }

    /// This rank ended normally: the others no longer report it when its process exits.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        for mut w in &self.writers {
            let _ = w.write_all(b"done\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn world(rank: usize, size: usize, port: u16) -> World {
        World {
            rank,
            size,
            local_rank: rank,
            local_size: size,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    /// One rank's way into the job: given the job, its id and links.
    type Joining = Box<dyn FnOnce(&str) -> Result<(Vec<u8>, Links)> + Send>;

    /// Starts ranks `0..n` on threads, each running `rank(world, join)` where `join` joins the
    /// job (id `[7; 128]`); rank 0 listens on a port bound before any rank starts, so that no
    /// other socket (another test's connection) can take it in between.
    fn start<T: Send + 'static>(
        sizes: &[usize],
        timeout: Duration,
        rank: impl Fn(usize, Box<dyn FnOnce(&str) -> Result<(Vec<u8>, Links)> + Send>) -> T
            + Send
            + Sync
            + 'static,
    ) -> Vec<T> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut leader = Some(listener);
        let rank = std::sync::Arc::new(rank);
        let handles: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(r, &size)| {
                let (w, listener, rank) =
                    (world(r, size, port), leader.take().filter(|_| r == 0), rank.clone());
                let join: Joining = Box::new(move |job: &str| {
                    let id = || Ok(vec![7u8; 128]);
                    match listener {
                        Some(l) => lead_on(l, &w, job, &format!("127.0.0.1:{port}"), timeout, id),
                        None => join(&w, job, timeout, id),
                    }
                });
                std::thread::spawn(move || rank(r, join))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Runs ranks `0..size` (rank r says world size `sizes[r]` and job `jobs[r]`).
    fn meet(sizes: &[usize], jobs: &[&str], timeout: Duration) -> Vec<Result<Vec<u8>>> {
        let jobs: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        start(sizes, timeout, move |r, join| join(&jobs[r]).map(|(id, _)| id))
    }

    /// Three ranks that met, each watching with its reports going to `tx` as (rank, message).
    fn watched(
        tx: std::sync::mpsc::Sender<(usize, String)>,
        watch_rank_2: bool,
    ) -> Vec<(Option<Watch>, Option<Links>)> {
        let links = start(&[3, 3, 3], Duration::from_secs(20), |_, join| join("j").unwrap().1);
        links
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                if rank == 2 && !watch_rank_2 {
                    return (None, Some(l));
                }
                let tx = tx.clone();
                (Some(l.watch(None, move |m| tx.send((rank, m)).unwrap())), None)
            })
            .collect()
    }

    #[test]
    fn a_rank_that_stops_is_named_to_every_other() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ranks = watched(tx, false);
        // Rank 2's process goes away: its connection closes.
        ranks.pop();
        let mut told: Vec<(usize, String)> =
            (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a report")).collect();
        told.sort();
        assert_eq!(told.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1]);
        assert!(told.iter().all(|(_, m)| m.contains("rank 2 stopped before the job finished")), "{told:?}");
    }

    /// Rank 2 stops short of step 3's collectives (alive, its connection open) while ranks 0
    /// and 1 wait in them: within the hang timeout every rank, rank 2 too, is told, by name.
    #[test]
    fn a_rank_that_hangs_alive_is_named_to_every_rank() {
        let (tx, rx) = std::sync::mpsc::channel();
        let links = start(&[3, 3, 3], Duration::from_secs(20), |_, join| join("j").unwrap().1);
        let timeout = Duration::from_millis(600);
        let watches: Vec<Watch> = links
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let tx = tx.clone();
                l.watch(Some(timeout), move |m| tx.send((rank, m)).unwrap())
            })
            .collect();
        let started = Instant::now();
        for step in 1..=2 {
            for w in &watches {
                w.report(step, Phase::Computing);
                w.report(step, Phase::Waiting);
            }
        }
        watches[2].report(3, Phase::Computing);
        for w in &watches[..2] {
            w.report(3, Phase::Computing);
            w.report(3, Phase::Waiting);
        }
        // Moving ranks are not reported while the silence is shorter than the timeout.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "reported too soon");
        let mut told: Vec<(usize, String)> =
            (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a report")).collect();
        told.sort();
        assert_eq!(told.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(
            told.iter().all(|(_, m)| m.contains("rank 2 at step 3, computing made no progress")
                && m.contains("rank(s) [0, 1] wait")),
            "{told:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "named within the timeout and a check");
    }

    #[test]
    fn ranks_that_finish_are_not_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        let ranks = watched(tx, true);
        for (w, _) in &ranks {
            w.as_ref().unwrap().finish();
        }
        drop(ranks);
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "a finished rank was reported");
    }

    #[test]
    fn every_rank_gets_rank_zeros_id() {
        for r in meet(&[3, 3, 3], &["j", "j", "j"], Duration::from_secs(20)) {
            assert_eq!(r.unwrap(), vec![7u8; 128]);
        }
    }

    #[test]
    fn a_different_job_or_world_size_stops_every_rank_naming_it() {
        let rs = meet(&[2, 2], &["model a", "model b"], Duration::from_secs(20));
        for r in &rs {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 1 runs a different job") && e.contains("model b"), "{e}");
        }
        let rs = meet(&[2, 3], &["j", "j"], Duration::from_secs(20));
        for r in &rs {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 1 says WORLD_SIZE=3, rank 0 says 2"), "{e}");
        }
    }

    #[test]
    fn missing_ranks_a_taken_port_and_no_leader_are_errors_not_hangs() {
        // Rank 0 of 3 alone: names the ranks that never came.
        let e = meet(&[3], &["j"], Duration::from_millis(300))[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank(s) [1, 2] did not join"), "{e}");
        // A port another process holds.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let w = world(0, 2, taken.local_addr().unwrap().port());
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).err().unwrap().to_string();
        assert!(e.contains("cannot listen on MASTER_ADDR:MASTER_PORT"), "{e}");
        // A rank whose rank 0 never starts.
        let w = world(1, 2, free_port());
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).err().unwrap().to_string();
        assert!(e.contains("rank 1 could not reach rank 0"), "{e}");
        // An address that is not one.
        let w = World { master_addr: "no such host.invalid".into(), ..world(1, 2, 1) };
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).err().unwrap().to_string();
        assert!(e.contains("not an address"), "{e}");
    }
}
