//! ZeRO stage 1 (`train --zero 1`): each rank keeps the optimizer's moments for one chunk of
//! the flat parameter buffer only. A step reduce-scatters the flat gradient (each rank gets
//! the sum over the ranks of its chunk), updates its chunk of the f32 weights with its
//! moments (the gradient norm for clipping summed over the ranks first), and all-gathers the
//! weights, so every rank starts the next step with the same weights as plain data
//! parallelism would give, holding 1/N of the moments.
use crate::error::{Error, Result};
use std::ops::Range;
use tch::Tensor;

/// The collectives training needs over the job's ranks: NCCL's on GPUs
/// ([`super::nccl::Communicator`]); a group of threads in the CPU tests.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `t` over the ranks, in place.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<()>;
    /// `t` (1-D) is `size` equal chunks: rank r's chunk r becomes the sum of every rank's
    /// chunk r (the other chunks are left undefined).
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<()>;
    /// `t` (1-D) is `size` equal chunks: every rank ends with rank r's chunk r in chunk r.
    fn all_gather(&self, t: &Tensor) -> Result<()>;
    /// Leaves the group at once after an error, so that no rank waits for this one.
    fn abort(self: Box<Self>) {}
    /// NCCL's all-reduce and communicator, for collectives that the CUDA shim issues itself
    /// during the backward pass ([`crate::cuda::layer_reduce`]); None: not an NCCL group.
    fn nccl(&self) -> Option<NcclAllReduce> {
        None
    }
}

/// `ncclAllReduce` and a communicator to call it on (raw, for the shim).
#[derive(Debug, Clone, Copy)]
pub struct NcclAllReduce {
    pub function: *const std::ffi::c_void,
    pub comm: *mut std::ffi::c_void,
}

/// Elements a chunk is a multiple of, so that every chunk starts 16-byte aligned in f32 and
/// bf16 (the fused update's loads) and NCCL's chunks stay aligned.
const CHUNK_ALIGN: i64 = 64;

/// How a flat buffer of `total` elements splits over `ranks`: padded to `ranks` chunks of
/// [`Sharding::chunk`] elements, chunk r on rank r.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    pub total: i64,
    pub ranks: i64,
}

impl Sharding {
    pub fn new(total: i64, ranks: usize) -> Self {
        Sharding { total, ranks: ranks.max(1) as i64 }
    }

    pub fn chunk(&self) -> i64 {
        let per = (self.total + self.ranks - 1) / self.ranks;
        (per + CHUNK_ALIGN - 1) / CHUNK_ALIGN * CHUNK_ALIGN
    }

    /// The buffer's length with its padding: `ranks` chunks.
    pub fn padded(&self) -> i64 {
        self.chunk() * self.ranks
    }

    /// The elements of rank `r`'s chunk that hold parameters (the last chunks may be short or
    /// empty).
    pub fn owned(&self, r: usize) -> Range<i64> {
        let start = (r as i64 * self.chunk()).min(self.total);
        start..((r as i64 + 1) * self.chunk()).min(self.total)
    }
}

/// One rank's chunk of the moments, as a checkpoint holds it.
pub struct MomentShard {
    pub rank: usize,
    pub owned: Range<i64>,
    pub m: Tensor,
    pub v: Tensor,
}

/// The full moment vectors (`total` elements each) from every rank's shard: the shards must
/// cover `0..total` exactly once, or the error names what is missing or doubled.
pub fn consolidate(total: i64, mut shards: Vec<MomentShard>) -> Result<(Tensor, Tensor)> {
    shards.sort_by_key(|s| s.owned.start);
    let mut at = 0;
    for s in &shards {
        if s.owned.start != at {
            let what = if s.owned.start > at { "missing" } else { "held twice" };
            return Err(Error::invalid(format!(
                "optimizer shards: elements {at}..{} {what} (rank {}'s shard starts at {})",
                s.owned.start.max(at),
                s.rank,
                s.owned.start
            )));
        }
        let len = s.owned.end - s.owned.start;
        if s.m.numel() as i64 != len || s.v.numel() as i64 != len {
            return Err(Error::invalid(format!(
                "optimizer shard of rank {}: {} and {} moments for {len} elements",
                s.rank,
                s.m.numel(),
                s.v.numel()
            )));
        }
        at = s.owned.end;
    }
    if at != total {
        return Err(Error::invalid(format!("optimizer shards: elements {at}..{total} missing")));
    }
    let cat = |f: fn(&MomentShard) -> &Tensor| Tensor::cat(&shards.iter().map(f).collect::<Vec<_>>(), 0);
    Ok((cat(|s| &s.m), cat(|s| &s.v)))
}

#[cfg(test)]
pub mod threads {
    //! A [`Collective`] over threads of one process, on CPU tensors: each rank is a thread, and
    //! every collective is a deposit, a barrier, each rank reading what it needs in rank
    //! order, and a barrier.
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};

    pub struct ThreadGroup {
        rank: usize,
        size: usize,
        shared: Arc<(Barrier, Mutex<Vec<Option<Tensor>>>)>,
    }

    impl ThreadGroup {
        /// One member per rank, to move into each rank's thread.
        pub fn new(size: usize) -> Vec<ThreadGroup> {
            let shared = Arc::new((Barrier::new(size), Mutex::new((0..size).map(|_| None).collect())));
            (0..size).map(|rank| ThreadGroup { rank, size, shared: shared.clone() }).collect()
        }

        /// Every rank's copy of `t`, in rank order.
        fn exchange(&self, t: &Tensor) -> Vec<Tensor> {
            let (barrier, slots) = &*self.shared;
            slots.lock().unwrap()[self.rank] = Some(t.copy());
            barrier.wait();
            let all = slots.lock().unwrap().iter().map(|s| s.as_ref().unwrap().shallow_clone()).collect();
            barrier.wait();
            all
        }

        fn chunk(&self, t: &Tensor, r: usize) -> Tensor {
            let c = t.numel() as i64 / self.size as i64;
            t.narrow(0, r as i64 * c, c)
        }
    }

    impl Collective for ThreadGroup {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
            let all = self.exchange(t);
            let mut sum = all[0].copy();
            for a in &all[1..] {
                sum += a;
            }
            t.shallow_clone().copy_(&sum);
            Ok(())
        }
        fn reduce_scatter_sum(&self, t: &Tensor) -> Result<()> {
            let all = self.exchange(t);
            let mut sum = self.chunk(&all[0], self.rank).copy();
            for a in &all[1..] {
                sum += self.chunk(a, self.rank);
            }
            self.chunk(t, self.rank).copy_(&sum);
            Ok(())
        }
        fn all_gather(&self, t: &Tensor) -> Result<()> {
            let all = self.exchange(t);
            for (r, a) in all.iter().enumerate() {
                self.chunk(t, r).copy_(&self.chunk(a, r));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn chunks_cover_the_buffer_once_and_stay_aligned() {
        for total in [0, 1, 63, 64, 65, 1000, 123_457] {
            for ranks in 1..6 {
                let s = Sharding::new(total, ranks);
                assert_eq!(s.chunk() % CHUNK_ALIGN, 0);
                assert!(s.padded() >= total && s.padded() - total < (ranks as i64 * CHUNK_ALIGN).max(1));
                let mut at = 0;
                for r in 0..ranks {
                    let o = s.owned(r);
                    assert_eq!(o.start, at, "total {total}, {ranks} ranks, rank {r}");
                    assert!(o.end - o.start <= s.chunk());
                    at = o.end;
                }
                assert_eq!(at, total);
            }
        }
    }

    #[test]
    fn shards_consolidate_and_gaps_are_named() {
        let full = Tensor::arange(1000, (Kind::Float, Device::Cpu));
        let s = Sharding::new(1000, 3);
        let shards = |skip: Option<usize>| -> Vec<MomentShard> {
            (0..3)
                .filter(|&r| Some(r) != skip)
                .map(|rank| {
                    let owned = s.owned(rank);
                    let part = full.narrow(0, owned.start, owned.end - owned.start);
                    MomentShard { rank, owned, m: part.copy(), v: part.copy() * 2.0 }
                })
                .collect()
        };
        let (m, v) = consolidate(1000, shards(None)).unwrap();
        assert!(m.equal(&full) && v.equal(&(&full * 2.0)));
        let e = consolidate(1000, shards(Some(1))).err().unwrap().to_string();
        assert!(e.contains("elements 384..768 missing"), "{e}");
        let e = consolidate(1000, shards(Some(2))).err().unwrap().to_string();
        assert!(e.contains("elements 768..1000 missing"), "{e}");
    }
}
