//! Training on several GPUs, one process each, on one machine or several (torchrun's model):
//! [`World`] says which process this is, [`launcher`] starts a node's processes and stops them
//! all when one fails, [`rendezvous`] gathers them on rank 0 (checking that every rank runs
//! the same job) and hands out the NCCL communicator's id, and [`nccl`] is the communicator
//! (NVIDIA's library, as torch ships it). Data parallelism splits each optimizer step's
//! window of micro-batches over the ranks ([`World::owns_micro_batch`]) and sums the flat
//! gradient over them before the update, so every rank applies the same update.
pub mod launcher;
pub mod nccl;
pub mod progress;
pub mod rendezvous;
pub mod zero;

use crate::error::{Error, Result};
use std::time::Duration;

/// How long ranks wait for each other to join (and a joined rank for the others) before
/// every one of them stops with an error naming the missing ranks.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Joins the job's other ranks when there are any (None alone): they meet on rank 0, which
/// checks that each runs the same `job` (what must match: model, plan, options) before any of
/// them loads a model, then share an NCCL communicator on this rank's GPU (`device` must be
/// `cuda:LOCAL_RANK`). A rank that stops, or with `hang_timeout` holds the others up, stops
/// every rank with its name ([`rendezvous::Links::watch`]) instead of leaving them in NCCL.
pub fn join_ranks(
    world: &World,
    device: tch::Device,
    job: &str,
    hang_timeout: Option<Duration>,
) -> Result<Option<(nccl::Communicator, rendezvous::Watch)>> {
    if world.size == 1 {
        return Ok(None);
    }
    if device != tch::Device::Cuda(world.local_rank) {
        return Err(Error::invalid(format!(
            "rank {} runs on {device:?}: a job over several GPUs runs each rank on its own GPU (--device cuda)",
            world.rank
        )));
    }
    let (id, links) = rendezvous::join_default(world, job, nccl::unique_id)?;
    let comm = nccl::Communicator::new(world, &id)?;
    let (abort, rank) = (comm.abort_handle(), world.rank);
    let watch = links.watch(hang_timeout, move |why| {
        eprintln!("error: {why}; stopping rank {rank}");
        abort.abort();
        std::process::exit(1);
    });
    Ok(Some((comm, watch)))
}

/// Where a process stands among the job's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Its GPU on its machine (`cuda:local_rank`).
    pub local_rank: usize,
    /// Processes on its machine (torchrun's LOCAL_WORLD_SIZE; 1 where unset).
    pub local_size: usize,
    /// Rank 0's address and port, where the others join.
    pub master_addr: String,
    pub master_port: u16,
}

impl World {
    /// One process: nothing to share.
    pub fn single() -> Self {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
        }
    }

    /// The process's place from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR, MASTER_PORT), which [`launcher`] sets too; `None` without WORLD_SIZE.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(size) = var("WORLD_SIZE") else { return Ok(None) };
        let number = |key: &str, default: Option<usize>| -> Result<usize> {
            match (var(key), default) {
                (Some(v), _) => v.trim().parse().map_err(|_| {
                    Error::invalid(format!("environment variable {key}={v}: expected a non-negative integer"))
                }),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(Error::invalid(format!("WORLD_SIZE is set but {key} is not"))),
            }
        };
        let size: usize = size.trim().parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
            Error::invalid(format!("environment variable WORLD_SIZE={size}: expected at least 1"))
        })?;
        let rank = number("RANK", None)?;
        if rank >= size {
            return Err(Error::invalid(format!("RANK={rank} is not below WORLD_SIZE={size}")));
        }
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let local_size = number("LOCAL_WORLD_SIZE", Some(1))?.max(1);
        let master_port = number("MASTER_PORT", if size == 1 { Some(0) } else { None })?;
        let master_port = u16::try_from(master_port)
            .map_err(|_| Error::invalid(format!("MASTER_PORT={master_port}: expected a port, 0-65535")))?;
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        Ok(Some(World { rank, size, local_rank, local_size, master_addr, master_port }))
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Whether every process of the job runs on this machine.
    pub fn on_one_machine(&self) -> bool {
        self.local_size == self.size
    }

    /// Whether this rank runs micro-batch `i` of an optimizer step's window: micro-batches
    /// go round the ranks, so a window of `size x grad_accum` micro-batches gives each rank
    /// `grad_accum`, and N ranks at micro-batch m see what one process at N x m sees.
    pub fn owns_micro_batch(&self, i: usize) -> bool {
        i % self.size == self.rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_give_the_world_and_bad_ones_say_which() {
        assert_eq!(world(&[]).unwrap(), None);
        let w = world(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            w,
            World {
                rank: 3,
                size: 4,
                local_rank: 1,
                local_size: 2,
                master_addr: "10.0.0.2".into(),
                master_port: 29500
            }
        );
        assert!(!w.is_leader() && !w.on_one_machine());
        for (vars, want) in [
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK is not"),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (vec![("WORLD_SIZE", "0"), ("RANK", "0")], "WORLD_SIZE=0"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "x"), ("MASTER_PORT", "1")], "RANK=x"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_PORT is not"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "70000")], "MASTER_PORT=70000"),
        ] {
            let e = world(&vars).unwrap_err().to_string();
            assert!(e.contains(want), "{vars:?}: {e}");
        }
    }

    /// Every micro-batch of a window goes to exactly one rank, each rank the same number.
    #[test]
    fn micro_batches_go_round_the_ranks() {
        for size in 1..5 {
            let ranks: Vec<World> = (0..size).map(|rank| World { rank, size, ..World::single() }).collect();
            for i in 0..4 * size {
                assert_eq!(ranks.iter().filter(|w| w.owns_micro_batch(i)).count(), 1);
            }
            for w in &ranks {
                assert_eq!((0..4 * size).filter(|&i| w.owns_micro_batch(i)).count(), 4);
            }
        }
    }
}
