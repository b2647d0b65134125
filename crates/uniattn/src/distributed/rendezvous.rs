//! The ranks meet on rank 0 over TCP before any GPU work: each says who it is and what job it
//! runs, rank 0 checks them all (ranks unique and in range, one world size, one job) and hands
//! every rank the same id (the NCCL communicator's), or the same error. So a bad address, a
//! port in use, a mismatched world size or a different model or plan on some rank stops every
//! rank before the first step, with a message naming the rank, instead of a hang in NCCL.
//! One JSON line each way.
use super::{World, JOIN_TIMEOUT};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
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
/// every rank (model, plan, variant, training options). Returns the id.
pub fn join(
    world: &World,
    job: &str,
    timeout: Duration,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
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
) -> Result<Vec<u8>> {
    join(world, job, JOIN_TIMEOUT, leader_id)
}

fn lead(
    world: &World,
    job: &str,
    at: &str,
    timeout: Duration,
    leader_id: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let listener = TcpListener::bind(at).map_err(|e| {
        Error::invalid(format!(
            "rank 0 cannot listen on MASTER_ADDR:MASTER_PORT {at} ({e}): the port is in use or the address is not this machine's"
        ))
    })?;
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
    for (_, mut stream) in joined {
        let _ = stream.write_all(line.as_bytes());
    }
    result.map_err(Error::invalid)
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

fn follow(world: &World, job: &str, at: &str, timeout: Duration) -> Result<Vec<u8>> {
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
    BufReader::new(&stream).read_line(&mut line).map_err(fail)?;
    let reply: Reply = serde_json::from_str(&line).map_err(|_| {
        Error::invalid(format!("rank {}: rank 0 at {at} closed the rendezvous without an answer", world.rank))
    })?;
    match (reply.id, reply.error) {
        (Some(id), _) => Ok(id),
        (None, e) => Err(Error::invalid(format!(
            "rank 0 stopped the job: {}",
            e.unwrap_or_else(|| "no reason given".into())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn world(rank: usize, size: usize, port: u16) -> World {
        World { rank, size, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
    }

    /// Runs ranks `0..size` (rank r says world size `sizes[r]` and job `jobs[r]`) on threads.
    fn meet(sizes: &[usize], jobs: &[&str], timeout: Duration) -> Vec<Result<Vec<u8>>> {
        let port = free_port();
        let handles: Vec<_> = sizes
            .iter()
            .zip(jobs)
            .enumerate()
            .map(|(rank, (&size, &job))| {
                let (w, job) = (world(rank, size, port), job.to_string());
                std::thread::spawn(move || join(&w, &job, timeout, || Ok(vec![7u8; 128])))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
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
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).unwrap_err().to_string();
        assert!(e.contains("cannot listen on MASTER_ADDR:MASTER_PORT"), "{e}");
        // A rank whose rank 0 never starts.
        let w = world(1, 2, free_port());
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).unwrap_err().to_string();
        assert!(e.contains("rank 1 could not reach rank 0"), "{e}");
        // An address that is not one.
        let w = World { master_addr: "no such host.invalid".into(), ..world(1, 2, 1) };
        let e = join(&w, "j", Duration::from_millis(300), || Ok(vec![])).unwrap_err().to_string();
        assert!(e.contains("not an address"), "{e}");
    }
}
