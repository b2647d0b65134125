//! Starts a node's ranks (`train --nproc-per-node N`, with `--nnodes`/`--node-rank` for several
//! machines, as torchrun does): N copies of this program with the same arguments, each told its
//! place through torchrun's variables, and watches them. When one fails, the others are stopped
//! (a rank waiting in NCCL for a dead peer would wait forever), and the error names the rank.
use crate::error::{Error, Result};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// A node's share of the job.
#[derive(Debug, Clone)]
pub struct Node {
    pub nproc: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Node {
    pub fn check(&self) -> Result<()> {
        if self.nproc == 0 || self.nnodes == 0 {
            return Err(Error::invalid("--nproc-per-node and --nnodes: expected at least 1"));
        }
        if self.node_rank >= self.nnodes {
            return Err(Error::invalid(format!(
                "--node-rank {} is not below --nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        Ok(())
    }

    /// torchrun's variables for local rank `local`.
    fn vars(&self, local: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", (self.node_rank * self.nproc + local).to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("WORLD_SIZE", (self.nnodes * self.nproc).to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

/// Runs `program args` once per local rank and waits for all of them: `Ok` when every one
/// exits successfully; otherwise the others are killed and the error names the first rank
/// that failed and how.
pub fn run(node: &Node, program: &Path, args: &[OsString]) -> Result<()> {
    node.check()?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(node.nproc);
    for local in 0..node.nproc {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(node.vars(local));
        match cmd.spawn() {
            Ok(c) => children.push((node.node_rank * node.nproc + local, c)),
            Err(e) => {
                stop(&mut children);
                return Err(Error::invalid(format!("starting rank {local} ({}): {e}", program.display())));
            }
        }
    }
    supervise(children)
}

/// Waits for `children` (by global rank); the first failure stops the rest.
fn supervise(mut children: Vec<(usize, Child)>) -> Result<()> {
    while !children.is_empty() {
        let mut failed: Option<(usize, ExitStatus)> = None;
        children.retain_mut(|(rank, child)| match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() && failed.is_none() {
                    failed = Some((*rank, status));
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
        if let Some((rank, status)) = failed {
            let others: Vec<usize> = children.iter().map(|(r, _)| *r).collect();
            stop(&mut children);
            let how = status
                .code()
                .map_or_else(|| "was killed by a signal".to_string(), |c| format!("exited with status {c}"));
            let stopped =
                if others.is_empty() { String::new() } else { format!("; stopped rank(s) {others:?}") };
            return Err(Error::invalid(format!("rank {rank} {how}{stopped} (its own error is above)")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(nproc: usize) -> Node {
        Node { nproc, nnodes: 2, node_rank: 1, master_addr: "127.0.0.1".into(), master_port: 29500 }
    }

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    /// Each rank sees torchrun's variables; all succeed.
    #[test]
    fn ranks_get_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "echo $RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $MASTER_PORT > {}/$LOCAL_RANK",
            dir.path().display()
        );
        run(&node(2), Path::new("/bin/sh"), &sh(&script)).unwrap();
        let read = |l: usize| std::fs::read_to_string(dir.path().join(l.to_string())).unwrap();
        assert_eq!(read(0).trim(), "2 0 4 127.0.0.1 29500");
        assert_eq!(read(1).trim(), "3 1 4 127.0.0.1 29500");
    }

    /// One rank fails at once while the others would run for a minute: the others are
    /// stopped and the error names the failed rank.
    #[test]
    fn a_failing_rank_stops_the_others() {
        let t = std::time::Instant::now();
        let e = run(&node(3), Path::new("/bin/sh"), &sh("if [ $LOCAL_RANK = 1 ]; then exit 3; fi; sleep 60"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 4 exited with status 3") && e.contains("stopped rank(s) [3, 5]"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(30), "the others were not stopped");
        let bad = Node { node_rank: 2, ..node(1) };
        assert!(run(&bad, Path::new("/bin/sh"), &sh("true"))
            .unwrap_err()
            .to_string()
            .contains("--node-rank 2"));
    }
}
