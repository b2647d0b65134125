//! Rotary position embeddings, Hugging Face's "rotate half" layout (llama.cpp's interleaved Q/K
//! rows are undone at load time). cos/sin are computed per call from the positions, in f32 as
//! transformers does, so any context length works without a table.
use tch::{Kind, Tensor};

pub struct RopeAngles {
    pub cos: Tensor,
    pub sin: Tensor,
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
        RopeAngles { cos: emb.cos().to_kind(kind), sin: emb.sin().to_kind(kind) }
    }

    /// `x`: `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(-1, 0, half);
        let x2 = x.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x * &self.cos + rotated * &self.sin
    }
}
