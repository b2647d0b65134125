//! The KV cache of the inference engine: allocated once for `slots` sequences of up to
//! `max_len` tokens. Ordinary and lead layers keep K and V; UniAttn and softmax-only reuse
//! layers keep V only; CLA and dropped layers keep nothing; KV-head-merged layers keep K and V
//! of fewer heads. That is where UniAttn's memory
//! saving comes from, and [`KvCache::bytes`] counts it exactly.
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Attention reads the cache in whole buckets of this many positions (those past a sequence's
/// end are masked), and the cache is allocated in whole buckets: the shapes of a decode step
/// change once every `KEY_BUCKET` steps rather than every step (one CUDA graph per bucket), and
/// key lengths stay multiples of 256, which the matrix kernels need to run at speed (an odd key
/// length made the explicit-probability path of UniAttn leads 2-3x slower on the H200).
pub const KEY_BUCKET: i64 = 256;

/// What one layer caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    KeysValues,
    ValuesOnly,
    Nothing,
}

#[derive(Debug)]
enum LayerCache {
    KeysValues { k: Tensor, v: Tensor },
    ValuesOnly { v: Tensor },
    Nothing,
}

/// Bytes of one token's entry of `kind` in a layer whose keys (or values) take `per_tensor`.
fn entry_bytes(kind: CacheKind, per_tensor: usize) -> usize {
    match kind {
        CacheKind::KeysValues => 2 * per_tensor,
        CacheKind::ValuesOnly => per_tensor,
        CacheKind::Nothing => 0,
    }
}

/// Per-layer tensors `[slots, kv_heads, max_len, head_dim]` and each slot's length.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    lens: Vec<i64>,
    max_len: i64,
    /// Positions allocated per sequence: `max_len` rounded up to whole key buckets.
    capacity: i64,
    bytes_per_token: usize,
    /// Bytes one token's keys (or values) take in each layer.
    bytes_per_tensor_token: Vec<usize>,
}

impl KvCache {
    /// Allocates the whole cache up front, so an oversized request fails here with a clear
    /// error rather than mid-generation. `kinds` and `kv_heads` are per layer (KV-head-merged
    /// layers have fewer heads).
    pub fn new(
        kinds: &[CacheKind],
        kv_heads: &[i64],
        slots: usize,
        max_len: usize,
        head_dim: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let capacity = (max_len as i64 + KEY_BUCKET - 1) / KEY_BUCKET * KEY_BUCKET;
        let per_tensor: Vec<usize> =
            kv_heads.iter().map(|&h| (h * head_dim) as usize * kind.elt_size_in_bytes()).collect();
        let bytes_per_token = kinds.iter().zip(&per_tensor).map(|(&k, &p)| entry_bytes(k, p)).sum::<usize>();
        let alloc = |heads: i64| {
            Tensor::f_zeros([slots as i64, heads, capacity, head_dim], (kind, device)).map_err(|e| {
                Error::invalid(format!(
                    "cannot allocate the KV cache for {slots} sequences x {max_len} tokens ({:.2} GiB): {e}",
                    (bytes_per_token * slots * capacity as usize) as f64 / (1u64 << 30) as f64
                ))
            })
        };
        let layers = kinds
            .iter()
            .zip(kv_heads)
            .map(|(k, &h)| {
                Ok(match k {
                    CacheKind::KeysValues => LayerCache::KeysValues { k: alloc(h)?, v: alloc(h)? },
                    CacheKind::ValuesOnly => LayerCache::ValuesOnly { v: alloc(h)? },
                    CacheKind::Nothing => LayerCache::Nothing,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            lens: vec![0; slots],
            max_len: max_len as i64,
            capacity,
            bytes_per_token,
            bytes_per_tensor_token: per_tensor,
        })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// The longest sequence a slot takes.
    pub fn max_len(&self) -> usize {
        self.max_len as usize
    }

    /// Positions allocated per slot (whole key buckets, at least `max_len`).
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Tokens cached for `slot`.
    pub fn len(&self, slot: usize) -> i64 {
        self.lens[slot]
    }

    pub fn set_len(&mut self, slot: usize, len: i64) {
        self.lens[slot] = len;
    }

    /// Bytes allocated on the device (all slots, full length).
    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::KeysValues { k, v } => b(k) + b(v),
                LayerCache::ValuesOnly { v } => b(v),
                LayerCache::Nothing => 0,
            })
            .sum()
    }

    /// Bytes one cached token occupies over all layers.
    pub fn bytes_per_token(&self) -> usize {
        self.bytes_per_token
    }

    /// Live tokens of the first `n` slots.
    pub fn tokens_in_use(&self, n: usize) -> usize {
        self.lens[..n].iter().map(|&l| l as usize).sum()
    }

    /// Bytes of one token's cache entry of `kind` (keys and values, values, none) at layer
    /// `layer`'s head count.
    pub fn entry_bytes(&self, layer: usize, kind: CacheKind) -> usize {
        entry_bytes(kind, self.bytes_per_tensor_token[layer])
    }

    /// Writes K (when the layer keeps keys) and V for rows `slot0..slot0 + n` at `positions`
    /// (`[n, q]`); `k`, `v` are `[n, kv_heads, q, head_dim]`.
    pub fn write(&mut self, layer: usize, slot0: usize, positions: &Tensor, k: Option<&Tensor>, v: &Tensor) {
        let s = v.size();
        let index = positions.view([s[0], 1, s[2], 1]).expand([s[0], s[1], s[2], s[3]], false);
        match &mut self.layers[layer] {
            LayerCache::KeysValues { k: kc, v: vc } => {
                let k = k.expect("a K/V layer writes keys");
                let _ = kc.narrow(0, slot0 as i64, s[0]).scatter_(2, &index, k);
                let _ = vc.narrow(0, slot0 as i64, s[0]).scatter_(2, &index, v);
            }
            LayerCache::ValuesOnly { v: vc } => {
                let _ = vc.narrow(0, slot0 as i64, s[0]).scatter_(2, &index, v);
            }
            LayerCache::Nothing => {}
        }
    }

    /// Layer `layer`'s key and value tensors from slot `slot0` on (views, `[slots - slot0,
    /// kv_heads, capacity, head_dim]`): where a fused kernel writes new keys and values at
    /// positions it reads on the device.
    pub fn slabs(&self, layer: usize, slot0: usize) -> (Option<Tensor>, Option<Tensor>) {
        let from = |t: &Tensor| t.narrow(0, slot0 as i64, t.size()[0] - slot0 as i64);
        match &self.layers[layer] {
            LayerCache::KeysValues { k, v } => (Some(from(k)), Some(from(v))),
            LayerCache::ValuesOnly { v } => (None, Some(from(v))),
            LayerCache::Nothing => (None, None),
        }
    }

    /// Cached keys of rows `slot0..slot0 + n`, positions `0..k_len` (a view, no copy).
    pub fn keys(&self, layer: usize, slot0: usize, n: i64, k_len: i64) -> Tensor {
        match &self.layers[layer] {
            LayerCache::KeysValues { k, .. } => k.narrow(0, slot0 as i64, n).narrow(2, 0, k_len),
            _ => panic!("layer {layer} caches no keys"),
        }
    }

    /// Cached values of rows `slot0..slot0 + n`, positions `0..k_len` (a view, no copy).
    pub fn values(&self, layer: usize, slot0: usize, n: i64, k_len: i64) -> Tensor {
        match &self.layers[layer] {
            LayerCache::KeysValues { v, .. } | LayerCache::ValuesOnly { v } => {
                v.narrow(0, slot0 as i64, n).narrow(2, 0, k_len)
            }
            LayerCache::Nothing => panic!("layer {layer} caches no values"),
        }
    }

    /// Moves slot `from` into slot `to` (keeping the live slots contiguous from 0).
    pub fn move_slot(&mut self, from: usize, to: usize) {
        let len = self.lens[from];
        if from != to && len > 0 {
            let mv = |t: &mut Tensor| {
                t.narrow(0, to as i64, 1)
                    .narrow(2, 0, len)
                    .copy_(&t.narrow(0, from as i64, 1).narrow(2, 0, len));
            };
            for l in &mut self.layers {
                match l {
                    LayerCache::KeysValues { k, v } => {
                        mv(k);
                        mv(v);
                    }
                    LayerCache::ValuesOnly { v } => mv(v),
                    LayerCache::Nothing => {}
                }
            }
        }
        self.lens[to] = len;
        self.lens[from] = 0;
    }
}
