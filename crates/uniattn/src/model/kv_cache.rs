//! Per-layer attention cache for incremental decoding. Ordinary and lead layers keep K and V;
//! reuse layers keep V only, which is where UniAttn's memory saving comes from.
use tch::Tensor;

#[derive(Debug, Default)]
pub enum LayerCache {
    #[default]
    Empty,
    Kv {
        k: Tensor,
        v: Tensor,
    },
    V {
        v: Tensor,
    },
}

fn append(old: Option<&Tensor>, new: &Tensor) -> Tensor {
    match old {
        Some(o) => Tensor::cat(&[o, new], 2),
        None => new.shallow_clone(),
    }
}

impl LayerCache {
    /// Appends along the sequence axis (`[batch, kv_heads, seq, head_dim]`), returns all K, V.
    pub fn append_kv(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (k, v) = match std::mem::take(self) {
            LayerCache::Kv { k: ok, v: ov } => (append(Some(&ok), k), append(Some(&ov), v)),
            _ => (k.shallow_clone(), v.shallow_clone()),
        };
        *self = LayerCache::Kv { k: k.shallow_clone(), v: v.shallow_clone() };
        (k, v)
    }

    pub fn append_v(&mut self, v: &Tensor) -> Tensor {
        let v = match std::mem::take(self) {
            LayerCache::V { v: ov } => append(Some(&ov), v),
            _ => v.shallow_clone(),
        };
        *self = LayerCache::V { v: v.shallow_clone() };
        v
    }

    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        match self {
            LayerCache::Empty => 0,
            LayerCache::Kv { k, v } => b(k) + b(v),
            LayerCache::V { v } => b(v),
        }
    }
}

/// The cache of a whole model: one entry per layer plus the number of cached positions.
#[derive(Debug)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub len: i64,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: (0..num_layers).map(|_| LayerCache::Empty).collect(), len: 0 }
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}
