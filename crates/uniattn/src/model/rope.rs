//! Rotary position embeddings, Hugging Face's "rotate half" layout (llama.cpp's interleaved Q/K
//! rows are undone at load time). cos/sin are computed per call from the positions, in f32 as
//! transformers does, so any context length works without a table.
use tch::{Kind, Tensor};

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
}
