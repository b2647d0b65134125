//! Rotary position embeddings, Hugging Face's "rotate half" layout (llama.cpp's interleaved Q/K
//! rows are undone at load time). cos/sin are computed per call from the positions, in f32 as
//! transformers does, so any context length works without a table; the engine, whose positions
//! stay below its cache's length, gathers them from a [`RopeTable`] instead.
use tch::{Device, Kind, Tensor};

pub struct RopeAngles {
    pub cos: Tensor,
    /// `sin` with its first half negated: `rotate_half(x) * sin` is `roll(x, d/2) * sin_signed`,
    /// one kernel fewer than negating and concatenating halves of `x` on every call.
    pub sin_signed: Tensor,
}

impl RopeAngles {
    /// `positions`: `[batch, seq]` int64. Returns cos/sin of shape `[batch, 1, seq, head_dim]`.
    pub fn new(positions: &Tensor, head_dim: usize, theta: f64, kind: Kind) -> Self {
        let device = positions.device();
        let acc = super::nn::accumulate_kind(kind);
        let half = (head_dim / 2) as i64;
        let exponents = Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Int64, device)).to_kind(acc)
            / head_dim as f64;
        // Filled on the device (no host-to-device copy, so a CUDA graph can capture this).
        let base = Tensor::full([] as [i64; 0], theta, (acc, device));
        let inv_freq = base.pow(&exponents).reciprocal();
        let freqs = positions.to_kind(acc).unsqueeze(-1) * inv_freq.view([1, 1, half]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let sin = freqs.sin().unsqueeze(1);
        RopeAngles {
            cos: emb.cos().to_kind(kind),
            sin_signed: Tensor::cat(&[&sin.neg(), &sin], -1).to_kind(kind),
        }
    }

    /// `x`: `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        // Bit for bit the rotate-half form (negating a factor is exact): four kernels, not five.
        x * &self.cos + x.roll([half], [-1]) * &self.sin_signed
    }
}

/// The angles of positions `0..len`, computed once by [`RopeAngles::new`], from which
/// [`RopeTable::angles`] gathers any positions' rows: the same values (each element's
/// arithmetic does not depend on the others), in two gathers instead of the thirteen small
/// kernels `new` launches, which a decode step would otherwise run every step (on an H200 at
/// batch 1 the step fell from 0.828 to 0.815 ms; docs/benchmarks.md, 2026-12-01).
pub struct RopeTable {
    /// `[len, head_dim]` each.
    cos: Tensor,
    sin_signed: Tensor,
}

impl RopeTable {
    pub fn new(len: i64, head_dim: usize, theta: f64, kind: Kind, device: Device) -> Self {
        let all =
            RopeAngles::new(&Tensor::arange(len, (Kind::Int64, device)).unsqueeze(0), head_dim, theta, kind);
        let rows = |t: Tensor| t.reshape([len, head_dim as i64]);
        RopeTable { cos: rows(all.cos), sin_signed: rows(all.sin_signed) }
    }

    /// What [`RopeAngles::new`] gives for `positions` (`[batch, seq]` int64, each below the
    /// table's length).
    pub fn angles(&self, positions: &Tensor) -> RopeAngles {
        let (batch, seq) = (positions.size()[0], positions.size()[1]);
        let index = positions.reshape([-1]);
        let rows = |t: &Tensor| t.index_select(0, &index).view([batch, 1, seq, t.size()[1]]);
        RopeAngles { cos: rows(&self.cos), sin_signed: rows(&self.sin_signed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rolled form equals transformers' `x * cos + rotate_half(x) * sin`.
    #[test]
    fn rolled_rotation_equals_rotate_half() {
        let positions = Tensor::from_slice(&[0i64, 3, 17, 250]).view([1, 4]);
        let rope = RopeAngles::new(&positions, 8, 10_000.0, Kind::Double);
        let x = Tensor::randn([1, 2, 4, 8], (Kind::Double, tch::Device::Cpu));
        let (x1, x2) = (x.narrow(-1, 0, 4), x.narrow(-1, 4, 4));
        let sin = rope.sin_signed.narrow(-1, 4, 4).repeat([1, 1, 1, 2]);
        let want = &x * &rope.cos + Tensor::cat(&[&x2.neg(), &x1], -1) * sin;
        let diff = (rope.apply(&x) - want).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "the same arithmetic, term for term");
    }

    /// The table's rows are what the angles computed for those positions alone are, bit for
    /// bit, in every type the engine runs: a prefill chunk, a decode step's scattered positions
    /// and the last position the table holds.
    #[test]
    fn table_rows_equal_the_angles_computed_per_call() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            for (head_dim, theta) in [(64, 1_000_000.0), (128, 10_000.0), (16, 500_000.0)] {
                let table = RopeTable::new(4096, head_dim, theta, kind, Device::Cpu);
                let chunk = Tensor::arange_start(1000, 1512, (Kind::Int64, Device::Cpu)).unsqueeze(0);
                let scattered = Tensor::from_slice(&[0i64, 7, 4095, 2048, 1, 3000]).view([6, 1]);
                for positions in [chunk, scattered] {
                    let (got, want) =
                        (table.angles(&positions), RopeAngles::new(&positions, head_dim, theta, kind));
                    assert_eq!(got.cos.size(), want.cos.size());
                    assert!(got.cos.equal(&want.cos), "{kind:?} d={head_dim}: cos");
                    assert!(got.sin_signed.equal(&want.sin_signed), "{kind:?} d={head_dim}: sin");
                }
            }
        }
    }
}
