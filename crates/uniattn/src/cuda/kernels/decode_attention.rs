//! A decode step's attention at small batches in one kernel (`decode_attention` in
//! kernels.cu): flash-decoding over blocks that split each (sequence, kv head) pair's keys, for
//! dense and CLA layers, and in three more forms for UniAttn's SuperBlocks: a lead that also
//! leaves its map ([`LeadMaps`]: its scores and each head's softmax max and sum), a reuse
//! layer that makes its probabilities from those and multiplies them by its own values, reading
//! no queries and no keys, and a lead that attends for its reuse layers as well ([`AheadSums`]),
//! which then run no attention kernel (the default wherever a lead runs here). At batch 1 cuDNN
//! spends two kernels and
//! ~9 us a layer whatever the length, though 2k positions of keys and values are ~1 MB; there
//! the kernel runs by default (see [`Cut::runs`]).
use super::{tickets, usable, Args};
use std::cell::Cell;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// What kernels.cu's DA_* constants say: threads a block, query heads a kv head (a warp each),
/// bytes of keys a sub-tile (the CUDA-core form's and the tensor-core form's), and query heads
/// times head width (the query in shared memory).
const THREADS: i64 = 256;
pub(super) const MAX_GROUP: i64 = 8;
const STAGE_BYTES: i64 = 8192;
const MMA_TILE_BYTES: i64 = 16384;
const MAX_OUTPUTS: i64 = 1024;
/// Dynamic shared memory a block at most (the launcher opts in past 48 KiB): the CUDA-core
/// form's, and the tensor-core form's (sm_80 on), which an sm_86/sm_89 block may still take;
/// both less the static 128 bytes (da_finish's flag, the stages aligned past it).
const STATIC_SHARED_BYTES: i64 = 128;
const MAX_SHARED_BYTES: i64 = 48 * 1024 - STATIC_SHARED_BYTES;
const MMA_MAX_SHARED_BYTES: i64 = 96 * 1024 - STATIC_SHARED_BYTES;
/// Blocks a launch aims at: about two per SM of an H100/H200.
const GRID_BLOCKS: i64 = 264;
/// Blocks a (sequence, kv head) pair at most: its last block reads all their partial sums, two
/// a lane (at most kernels.cu's DA_MAX_SPLITS, 64).
const MAX_SPLITS: i64 = 48;
const _: () = assert!(MAX_SPLITS <= 64);
/// Reuse layers a lead attends for at most (kernels.cu's DA_MAX_AHEAD).
const MAX_AHEAD: usize = 7;
/// Outputs a block of the joint ahead form makes at most (kernels.cu's DA_JOINT_OUTPUTS): a
/// lead's and three reuse layers'.
const JOINT_OUTPUTS: i64 = 4;
/// Sequences up to which a lead attends for its reuse layers by default
/// ([`decode_attention_ahead`]): wherever its lead form runs.
const AHEAD_MAX_SEQUENCES: i64 = LONG_LEAD_MAX_SEQUENCES;

thread_local! {
    /// Set while [`with_decode_attention`] runs on this thread.
    static PAIRS_HERE: Cell<Option<i64>> = const { Cell::new(None) };
}

/// The (sequence, kv head) pairs up to which the kernel's `form` runs where
/// `UNIATTN_DECODE_ATTENTION` says (0: never; 16: up to batch 8 of two kv heads), or for leads
/// (and so their reuse layers) `UNIATTN_DECODE_ATTENTION_LEADS`, else `None`: the default of
/// [`Cut::runs`].
fn pairs_set(form: Form) -> Option<i64> {
    static PAIRS: OnceLock<Option<i64>> = OnceLock::new();
    static LEADS: OnceLock<Option<i64>> = OnceLock::new();
    let leads = || match form {
        Form::Lead => count_set(&LEADS, "UNIATTN_DECODE_ATTENTION_LEADS"),
        Form::Plain => None,
    };
    PAIRS_HERE.with(Cell::get).or_else(leads).or_else(|| count_set(&PAIRS, "UNIATTN_DECODE_ATTENTION"))
}

/// The count environment variable `name` sets, read once into `cell`.
fn count_set(cell: &'static OnceLock<Option<i64>>, name: &str) -> Option<i64> {
    *cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse().ok()))
}

/// Runs `f` with the kernel on up to `pairs` pairs on this thread, whatever the environment
/// says (tests, comparisons).
pub fn with_decode_attention<T>(pairs: i64, f: impl FnOnce() -> T) -> T {
    let before = PAIRS_HERE.with(|p| p.replace(Some(pairs)));
    let out = f();
    PAIRS_HERE.with(|p| p.set(before));
    out
}

/// Whether a decode step's leads hand their map over in pieces at this shape (`[sequences,
/// query heads, kv heads, head width, keys]`): what [`decode_attention_lead`] does, for counting
/// the bytes a step reads.
pub fn lead_maps_apply(kind: Kind, device: Device, shape: [i64; 5]) -> bool {
    super::enabled()
        && capability(device).and_then(|cap| Cut::new(kind, shape, cap)).is_some_and(|c| c.runs(Form::Lead))
}

/// The compute capability of `device` (90 for sm_90) where the kernels are loaded.
fn capability(device: Device) -> Option<i32> {
    let Device::Cuda(i) = device else { return None };
    super::loaded(i).map(|l| l.capability)
}

/// What a launch computes: a layer's attention alone, or a SuperBlock lead's, which also leaves
/// the map its reuse layers take (they run wherever their lead did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Plain,
    Lead,
}

/// Keys from which the plain form runs by default at batch 1 (see [`Cut::runs_by_default`]).
const PLAIN_MIN_KEYS: i64 = 4096;

/// Sequences up to which the lead form runs by default (see [`Cut::runs_by_default`]), and
/// from `PLAIN_MIN_KEYS` keys, where it attends ahead in the joint form.
const LEAD_MAX_SEQUENCES: i64 = 8;
const LONG_LEAD_MAX_SEQUENCES: i64 = 32;

/// Sequences from which a lead attends ahead in the joint form by default, from and below
/// `PLAIN_MIN_KEYS` keys; below, a lead on heads of 64 then runs on the kernel too (see
/// [`Cut::joint_by_default`]).
const JOINT_MIN_SEQUENCES: i64 = 2;
const SHORT_JOINT_MIN_SEQUENCES: i64 = 32;

/// The same on heads of 128, below and from `PLAIN_MIN_KEYS` keys (see [`Cut::runs_by_default`]).
const WIDE_LEAD_MAX_SEQUENCES: i64 = 1;
const WIDE_LONG_LEAD_MAX_SEQUENCES: i64 = 8;

/// How one launch is cut: `n` sequences of `heads` query heads over `kv_heads` kv heads, `d`
/// wide, `keys` keys a pair in sub-tiles of `tile` keys, `per_block` of them to each of
/// `splits` blocks; `mma`: the tensor-core form runs (16-bit rows of 64 or 128, sm_80 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    kind: Kind,
    n: i64,
    heads: i64,
    kv_heads: i64,
    d: i64,
    keys: i64,
    mma: bool,
    tile: i64,
    splits: i64,
    per_block: i64,
    /// Outputs a pair (units of `splits` blocks each): 1, or a lead's and its reuse layers'.
    units: i64,
    /// Outputs a block: 1, or (the joint ahead form) a lead's and its reuse layers', whose
    /// values a stage holds side by side.
    outputs: i64,
}

impl Cut {
    /// `None` where the kernel does not apply: a row of 128, 256 or 512 bytes, at most
    /// `MAX_GROUP` query heads a kv head and `MAX_OUTPUTS` query heads x head width, on a
    /// device of compute `capability` (75 for sm_75).
    fn new(kind: Kind, [n, heads, kv_heads, d, keys]: [i64; 5], capability: i32) -> Option<Cut> {
        let row_bytes = d * kind.elt_size_in_bytes() as i64;
        let fits = n > 0
            && keys > 0
            && kv_heads > 0
            && heads % kv_heads == 0
            && heads / kv_heads <= MAX_GROUP
            && heads / kv_heads * d <= MAX_OUTPUTS
            && [128, 256, 512].contains(&row_bytes);
        if !fits {
            return None;
        }
        let mma = capability >= 80 && kind.elt_size_in_bytes() == 2 && [64, 128].contains(&d);
        let tile = if mma { MMA_TILE_BYTES } else { STAGE_BYTES } / row_bytes;
        let cut = Cut {
            kind,
            n,
            heads,
            kv_heads,
            d,
            keys,
            mma,
            tile,
            splits: 0,
            per_block: 0,
            units: 1,
            outputs: 1,
        }
        .split(1);
        let max_shared = if mma { MMA_MAX_SHARED_BYTES } else { MAX_SHARED_BYTES };
        (cut.shared_bytes() <= max_shared).then_some(cut)
    }

    /// The cut for `units` outputs a pair: as many blocks as fill the GPU about twice, but at
    /// most MAX_SPLITS a unit.
    fn split(self, units: i64) -> Cut {
        debug_assert!(units == 1 || self.outputs == 1, "a pair's outputs come from units or from each block");
        let ceil = |a: i64, b: i64| (a + b - 1) / b;
        let tiles = ceil(self.keys, self.tile);
        let per_block = ceil(tiles, tiles.min(MAX_SPLITS).min((GRID_BLOCKS / (self.pairs() * units)).max(1)));
        Cut { splits: ceil(tiles, per_block), per_block, units, ..self }
    }

    /// Whether the kernel's `form` runs at this cut rather than cuDNN's: up to the pairs the
    /// environment sets ([`pairs_set`]), else [`Cut::runs_by_default`].
    fn runs(&self, form: Form) -> bool {
        pairs_set(form).map_or_else(|| self.runs_by_default(form), |pairs| self.pairs() <= pairs)
    }

    /// Where the tensor-core form runs on heads of 64: a plain layer's attention for one
    /// sequence from `PLAIN_MIN_KEYS` keys, a lead's up to `LEAD_MAX_SEQUENCES`. On an H200
    /// (bf16, Qwen2.5-Coder-0.5B's shapes; docs/benchmarks.md, 2026-12-01) a batch-1 step took
    /// UniAttn 0.794 ms (0.808 with cuDNN) at 2k and 0.855 (0.887) at 8k, dense 0.869 (0.891) at
    /// 8k; a dense step at 2k took the same GPU time either way but decoded 3% fewer tokens a
    /// second on the kernel (1,193 against 1,238). From batch 8 cuDNN's plain attention is faster
    /// (39 us a layer at batch 32 / 8k against the kernel's 44), but a lead on the kernel spares
    /// its score GEMM and softmax and its reuse layers the keys: UniAttn at batch 8 took 1.208
    /// (1.224) ms at 2k and 1.338 (1.363) at 8k, at batch 32 1.397 (1.386) and 1.875 (1.879). In
    /// 1.5B's shapes (heads of 128, whose two warps a slice score the same keys) a plain layer
    /// on the kernel was slower at batch 1, and the CUDA-core form (f32, heads of 256)
    /// everywhere; but a lead there, since it attends for its reuse layers (2026-12-03), made
    /// UniAttn's batch-1 step 1.457 ms against 1.525 at 2k and 1.518 against 1.605 at 8k, and
    /// at batch 8 decoded 3,592 tok/s against 3,375 at 8k (3,842 against 3,843 at 2k; 2026-12-03,
    /// twenty-ninth session). At batch 32 / 8k a lead on heads of 64 attending ahead in the
    /// joint form made UniAttn's step 1.769 ms against cuDNN's 1.820 (18,023 tok/s against
    /// 17,497), and at batch 32 / 2k 1.317 against 1.336 (24,137 against 23,790, three repeats
    /// each; 2026-12-03, thirtieth session).
    fn runs_by_default(&self, form: Form) -> bool {
        let long = self.long();
        let fits = match form {
            Form::Plain => self.d == 64 && self.n == 1 && long,
            Form::Lead if self.d == 64 => {
                self.n
                    <= if long || self.short_joint() { LONG_LEAD_MAX_SEQUENCES } else { LEAD_MAX_SEQUENCES }
            }
            Form::Lead => self.n <= if long { WIDE_LONG_LEAD_MAX_SEQUENCES } else { WIDE_LEAD_MAX_SEQUENCES },
        };
        self.mma && fits
    }

    /// Whether a lead attends ahead in the joint form by default (`UNIATTN_DECODE_ATTENTION_JOINT`:
    /// from another count, at any shape), where it was measured, on heads of 64: for two
    /// sequences or more from `PLAIN_MIN_KEYS` keys, and below them from
    /// `SHORT_JOINT_MIN_SEQUENCES`. On an H200 (2026-12-03) UniAttn's step took 1.769 ms against
    /// the units form's 1.825 at batch 32 / 8k, 1.264 against 1.267 at batch 8 / 8k, and 0.755
    /// against 0.731 at batch 1 / 8k, where the units form's more blocks a pair win; at batch 8 /
    /// 2k the joint form decoded 6,912-6,918 tok/s against the units form's 6,960-6,968.
    fn joint_by_default(&self) -> bool {
        static JOINT_FROM: OnceLock<Option<i64>> = OnceLock::new();
        let measured = self.d == 64 && self.long() && self.n >= JOINT_MIN_SEQUENCES || self.short_joint();
        count_set(&JOINT_FROM, "UNIATTN_DECODE_ATTENTION_JOINT").map_or(measured, |from| self.n >= from)
    }

    /// Whether a pair below `PLAIN_MIN_KEYS` keys, on heads of 64, is one of enough sequences
    /// that its lead attends ahead jointly ([`SHORT_JOINT_MIN_SEQUENCES`]).
    fn short_joint(&self) -> bool {
        self.d == 64 && !self.long() && self.n >= SHORT_JOINT_MIN_SEQUENCES
    }

    /// Whether a pair has `PLAIN_MIN_KEYS` keys or more, from which the forms run further.
    fn long(&self) -> bool {
        self.keys >= PLAIN_MIN_KEYS
    }

    /// The joint ahead form's cut for a lead and `reuse` reuse layers (`None` where it does
    /// not apply): one unit a pair whose blocks make every output, on tensor cores, in
    /// sub-tiles of half the keys (kernels.cu's DA_STAGE_BYTES) so that a stage holds each
    /// output's values and two blocks still fit an SM.
    fn joint(self, reuse: i64) -> Option<Cut> {
        let outputs = 1 + reuse;
        (self.mma && (2..=JOINT_OUTPUTS).contains(&outputs)).then_some(())?;
        let tile = STAGE_BYTES / (self.d * self.kind.elt_size_in_bytes() as i64);
        let cut = Cut { tile, outputs, ..self }.split(1);
        (cut.shared_bytes() <= MMA_MAX_SHARED_BYTES).then_some(cut)
    }

    /// Whether a joint cut's pairs combine their blocks' sums in kernels.cu's DA_JOINT_ALL form
    /// (two splits of every output an L2 round trip, the current key's score with the first)
    /// rather than DA_JOINT's (a batch of one output's splits a trip, 32 floats a lane either
    /// way, then the score): where that takes no more trips. At batch 32 / 8k on heads of 64 (4
    /// splits) 2 trips against 5, and UniAttn / dense rose from 1.107-1.109 to 1.113-1.117 (H200,
    /// 2026-12-03, two calls); at batch 8 / 8k (16 splits) it would take 8 against 5.
    fn combines_all_outputs(&self) -> bool {
        let batch = 32 / (self.d / 32); // one output's splits a trip (kernels.cu's `batch`)
        let all_batch = batch / JOINT_OUTPUTS / 2; // every output's (DA_JOINT_ALL's `splits_read`)
        let trips = |per_trip: i64| (self.splits + per_trip - 1) / per_trip;
        all_batch > 0
            && self.outputs > 1
            && self.splits > 1
            && trips(all_batch) <= self.outputs * trips(batch) + 1
    }

    fn group(&self) -> i64 {
        self.heads / self.kv_heads
    }

    fn pairs(&self) -> i64 {
        self.n * self.kv_heads
    }

    /// Two of kernels.cu's stages (`da_stage_bytes`: a sub-tile's keys, its values (`outputs`
    /// layers' of them) and a reuse layer's f32 `[g][map_stride]` rows of the lead's map; the
    /// combine's `[g][splits]` weights and the tensor-core form's `[slices][g][outputs * d + 2]`
    /// sums reuse them), then the query (f32 `[g][d]`, or the tensor-core form's 16-bit pairs
    /// `[MAX_GROUP][d / 2 + 4]`).
    fn shared_bytes(&self) -> i64 {
        let g = self.group();
        let row_bytes = self.d * self.kind.elt_size_in_bytes() as i64;
        let (map_stride, query_bytes) = if self.mma {
            (self.tile + 8, 4 * MAX_GROUP * (self.d / 2 + 4))
        } else {
            (self.tile, 4 * g * self.d)
        };
        2 * ((1 + self.outputs) * self.tile * row_bytes + 4 * g * map_stride) + query_bytes
    }
}

/// What a lead's decode attention leaves its reuse layers: its scores `s` (scaled and masked,
/// f32 `[pairs, g, splits * per_block * tile]`) and each head's whole-softmax max `M` and sum
/// `L` (f32 `[pairs, g, 2]`), from which a reuse layer's probabilities are `exp(s - M) / L`.
#[derive(Debug)]
pub struct LeadMaps {
    maps: Tensor,
    stats: Tensor,
    cut: Cut,
}

/// `softmax(q k^T * scale + mask) v` for one query row per head (`q` `[n, heads, 1, d]`, `k`
/// and `v` `[n, kv_heads, keys, d]` with contiguous rows, `mask` additive `[n or 1, 1, 1,
/// keys]`), query head `i` reading kv head `i / (heads / kv_heads)`, as
/// `scaled_dot_product_attention(.., enable_gqa=true)`. Runs where [`Cut::runs`] says (where
/// cuDNN's kernels are bound by their fixed cost rather than by the bytes); `None` elsewhere and
/// where the shapes do not fit.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Option<Tensor> {
    plain(q, k, v, mask, scale, false)
}

/// [`decode_attention`] for a SuperBlock lead: also its map, in the pieces its reuse layers
/// take ([`decode_attention_reuse`]).
pub fn decode_attention_lead(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Option<(Tensor, LeadMaps)> {
    lead(q, k, v, mask, scale, false)
}

/// A reuse layer's attention: the lead's map times its own values `v` (`[n, kv_heads, keys,
/// d]`, the lead's shape, checked when launching); `None` where they do not fit it.
pub fn decode_attention_reuse(lead: &LeadMaps, v: &Tensor) -> Option<Tensor> {
    (v.device() == lead.maps.device()).then_some(())?;
    launch("decode_attention_reuse", lead.cut, None, v, Leaves::Maps(lead))
}

/// What a lead that attended for its reuse layers leaves them ([`decode_attention_ahead`]):
/// for reuse layer r, its attention over the keys before the current one (`sums.get(r)`, f32
/// `[n, heads, 1, d]`, already divided by the softmax's sum), and the current key's
/// probability (`current`, f32 `[n, heads, 1, 1]`), which multiplies the value the layer
/// projects in this step.
#[derive(Debug)]
pub struct AheadSums {
    pub sums: Tensor,
    pub current: Tensor,
}

impl AheadSums {
    /// Reuse layer `r`'s attention from the values it projects in this step (`v_now`, `[n,
    /// kv_heads, 1, d]`), by libtorch's kernels: where its projection cannot add the term.
    pub fn attention(&self, r: usize, v_now: &Tensor) -> Tensor {
        let sums = self.sums.get(r as i64);
        let group = sums.size()[1] / v_now.size()[1];
        let v = v_now.to_kind(Kind::Float).repeat_interleave_self_int(group, 1, None);
        (sums + &self.current * v).to_kind(v_now.kind())
    }
}

/// What a lead attends ahead with ([`decode_attention_ahead`]): each sequence's current key
/// (its position, `[n, 1]`) and its reuse layers' value caches over the lead's keys (each the
/// lead's values' shape and strides).
#[derive(Clone, Copy)]
pub struct AheadInputs<'a> {
    pub current_key: &'a Tensor,
    pub reuse_values: &'a [Tensor],
}

/// [`decode_attention_lead`] that also attends for the lead's reuse layers (UniAttn,
/// softmax-only): their attention over the keys before each sequence's current one comes back
/// in [`AheadSums`], so that a reuse layer runs no attention kernel. Runs where the lead form
/// does, for up to `AHEAD_MAX_SEQUENCES` sequences (`UNIATTN_DECODE_ATTENTION_AHEAD`: another
/// count; 0 never); in the joint form ([`Cut::joint`]) where [`Cut::joint_by_default`] says.
pub fn decode_attention_ahead(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    inputs: AheadInputs,
) -> Option<(Tensor, AheadSums)> {
    ahead(q, k, v, mask, scale, inputs, None)
}

/// The ahead form's kernels: a unit of blocks for each output (the lead's and each reuse
/// layer's), or blocks that make them all ([`Cut::joint`]), whose pair's last block combines
/// their sums a batch of one output's splits at a time (`Joint`) or a batch of every output's
/// (`JointAll`, where [`Cut::combines_all_outputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AheadForm {
    Units,
    Joint,
    JointAll,
}

/// The ahead form in `form` wherever the shapes fit, or (`None`) where and as
/// [`decode_attention_ahead`] says.
fn ahead(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    AheadInputs { current_key, reuse_values }: AheadInputs,
    form: Option<AheadForm>,
) -> Option<(Tensor, AheadSums)> {
    static SEQUENCES: OnceLock<Option<i64>> = OnceLock::new();
    let limit = count_set(&SEQUENCES, "UNIATTN_DECODE_ATTENTION_AHEAD").unwrap_or(AHEAD_MAX_SEQUENCES);
    let cut = cut_of(q, k).filter(|c| form.is_some() || c.n <= limit && c.runs(Form::Lead))?;
    let count = reuse_values.len();
    // Staged by 16-byte copies as the lead's values are.
    let alike = |t: &Tensor| {
        t.size() == v.size()
            && t.stride() == v.stride()
            && t.kind() == v.kind()
            && t.device() == v.device()
            && (t.data_ptr() as usize).is_multiple_of(16)
    };
    let keys_fit = current_key.kind() == Kind::Int64
        && current_key.device() == v.device()
        && current_key.is_contiguous()
        && current_key.numel() as i64 == cut.n;
    if !(1..=MAX_AHEAD).contains(&count) || !reuse_values.iter().all(alike) || !keys_fit {
        return None;
    }
    let joint = cut.joint(count as i64);
    // By default the units form stands in where the joint one does not apply; asked for, the
    // joint form runs or nothing does.
    let by_default = || match joint.filter(|_| cut.joint_by_default()) {
        Some(j) if j.combines_all_outputs() => AheadForm::JointAll,
        Some(_) => AheadForm::Joint,
        None => AheadForm::Units,
    };
    let (cut, name) = match form.unwrap_or_else(by_default) {
        AheadForm::Units => (cut.split(1 + count as i64), "decode_attention_ahead"),
        AheadForm::Joint => (joint?, "decode_attention_joint"),
        AheadForm::JointAll => (joint?, "decode_attention_joint_all"),
    };
    let float = (Kind::Float, v.device());
    let sums = AheadSums {
        sums: Tensor::empty([count as i64, cut.n, cut.heads, 1, cut.d], float),
        current: Tensor::empty([cut.n, cut.heads, 1, 1], float),
    };
    let leaves = Leaves::Ahead { current_key, reuse_values, sums: &sums };
    let out = launch(name, cut, Some((q, k, mask, scale)), v, leaves)?;
    Some((out, sums))
}

/// The plain form where [`Cut::runs`] says, or wherever the shapes fit (`always`).
fn plain(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, always: bool) -> Option<Tensor> {
    let cut = cut_of(q, k).filter(|c| always || c.runs(Form::Plain))?;
    launch("decode_attention", cut, Some((q, k, mask, scale)), v, Leaves::Nothing)
}

/// The lead form where [`Cut::runs`] says, or wherever the shapes fit (`always`).
fn lead(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    always: bool,
) -> Option<(Tensor, LeadMaps)> {
    let cut = cut_of(q, k).filter(|c| always || c.runs(Form::Lead))?;
    let maps = lead_maps(cut, q.device());
    let out = launch("decode_attention_lead", cut, Some((q, k, mask, scale)), v, Leaves::Maps(&maps))?;
    Some((out, maps))
}

/// The cut for queries `q` against keys `k`, `None` where the kernel does not apply.
fn cut_of(q: &Tensor, k: &Tensor) -> Option<Cut> {
    let (&[n, heads, 1, d], &[kn, kv_heads, keys, kd]) = (q.size().as_slice(), k.size().as_slice()) else {
        return None;
    };
    (kn == n && kd == d).then_some(())?;
    Cut::new(q.kind(), [n, heads, kv_heads, d, keys], capability(q.device())?)
}

fn lead_maps(cut: Cut, device: Device) -> LeadMaps {
    let heads = cut.pairs() * cut.group();
    LeadMaps {
        maps: Tensor::empty([heads * cut.splits * cut.per_block * cut.tile], (Kind::Float, device)),
        stats: Tensor::empty([heads * 2], (Kind::Float, device)),
        cut,
    }
}

/// What a launch hands over besides its output: nothing (plain), a lead's map (written by the
/// lead form, read by the reuse form), or (the ahead form) its reuse layers' values in and their
/// sums out (checked by [`ahead`]).
enum Leaves<'a> {
    Nothing,
    Maps(&'a LeadMaps),
    Ahead { current_key: &'a Tensor, reuse_values: &'a [Tensor], sums: &'a AheadSums },
}

impl Leaves<'_> {
    fn maps(&self) -> Option<&LeadMaps> {
        match self {
            Leaves::Maps(m) => Some(m),
            _ => None,
        }
    }

    /// kernels.cu's `DaAhead`, word for word: the values' pointers (null past the count), the
    /// current keys, the two outputs and the count.
    fn words(&self) -> [u64; MAX_AHEAD + 4] {
        let mut w = [0u64; MAX_AHEAD + 4];
        if let Leaves::Ahead { current_key, reuse_values, sums } = self {
            for (slot, v) in w.iter_mut().zip(reuse_values.iter()) {
                *slot = v.data_ptr() as u64;
            }
            w[MAX_AHEAD] = current_key.data_ptr() as u64;
            w[MAX_AHEAD + 1] = sums.sums.data_ptr() as u64;
            w[MAX_AHEAD + 2] = sums.current.data_ptr() as u64;
            w[MAX_AHEAD + 3] = reuse_values.len() as u64;
        }
        w
    }
}

/// Launches kernel `name` (the plain, lead, reuse or ahead form) after checking every tensor's
/// type, device and layout against `cut`: `attend` is the queries, keys, mask and scale (none
/// for a reuse layer), `leaves` what else it reads and writes.
fn launch(
    name: &'static str,
    cut: Cut,
    attend: Option<(&Tensor, &Tensor, &Tensor, f64)>,
    v: &Tensor,
    leaves: Leaves,
) -> Option<Tensor> {
    let (device, loaded, suffix) = usable(v)?;
    let Cut { kind, n, heads, kv_heads, d, keys, .. } = cut;
    let elt = kind.elt_size_in_bytes() as i64;
    let same = |t: &Tensor| t.kind() == kind && t.device() == v.device() && !t.requires_grad();
    // Keys and values: contiguous rows of 16-byte chunks, each sequence and head 16-byte
    // aligned (the queries are read an element at a time).
    let rows_fit = |t: &Tensor| {
        let s = t.stride();
        same(t)
            && t.size() == [n, kv_heads, keys, d]
            && s[3] == 1
            && s[2] == d
            && [s[0], s[1]].iter().all(|&x| (x * elt) % 16 == 0)
            && (t.data_ptr() as usize).is_multiple_of(16)
    };
    let attend_fits = attend.is_none_or(|(q, k, mask, _)| {
        let (ms, mst) = (mask.size(), mask.stride());
        same(q)
            && q.stride()[3] == 1
            && rows_fit(k)
            && same(mask)
            && ms.len() == 4
            && (ms[0] == n || ms[0] == 1)
            && ms[1..] == [1, 1, keys]
            && mst[3] == 1
    });
    if !rows_fit(v) || !attend_fits {
        return None;
    }
    let units = cut.pairs() * cut.units;
    let tickets = tickets("decode_attention", device, units)?;
    let out = Tensor::empty([n, heads, 1, d], (kind, v.device()));
    let g = cut.group();
    let partial = Tensor::empty([units * cut.splits * g * (cut.outputs * d + 2)], (Kind::Float, v.device()));
    // A reuse layer has no queries, keys or mask: null pointers and zero strides.
    let (q, k, mask) = (attend.map(|a| a.0), attend.map(|a| a.1), attend.map(|a| a.2));
    let stride = |t: Option<&Tensor>, dim: usize| t.map_or(0, |t| t.stride()[dim]);
    let mask_seq = mask.filter(|m| m.size()[0] > 1).map_or(0, |m| m.stride()[0]);
    let args = Args::default()
        .nullable(q)
        .nullable(k)
        .ptr(v)
        .nullable(mask)
        .ptr(&out)
        .ptr(&partial)
        .ptr(&tickets)
        .i32(kv_heads)
        .i32(g)
        .i32(d)
        .i64(keys)
        .i32(cut.splits)
        .i32(cut.per_block)
        .i64(stride(q, 0))
        .i64(stride(q, 1))
        .i64(stride(k, 0))
        .i64(stride(k, 1))
        .i64(stride(Some(v), 0))
        .i64(stride(Some(v), 1))
        .i64(mask_seq)
        .f32(attend.map_or(0.0, |a| a.3))
        .nullable(leaves.maps().map(|m| &m.maps))
        .nullable(leaves.maps().map(|m| &m.stats))
        .words_of(&leaves.words());
    let shape = (units * cut.splits, THREADS as u32, cut.shared_bytes());
    // The joint form starts staging its past keys while the lead's RoPE and cache write (the
    // kernel before it) finishes (kernels.cu, decode_attention_mma).
    let joint = matches!(name, "decode_attention_joint" | "decode_attention_joint_all");
    let args = if joint { args.programmatic() } else { args };
    args.launch_with(loaded, (name, suffix), device, shape).then_some(out)
}

#[cfg(test)]
mod tests {
    //! On a GPU (skipped elsewhere): each form against the composition it replaces, in f64.
    use super::super::tests::{gpu, ulps_of, KINDS};
    use super::*;

    /// By default the kernel runs for one sequence where the tensor-core form does on heads
    /// of 64 (bf16/f16 on sm_80 and later), and for leads where they were measured to win.
    #[test]
    fn runs_by_default_for_one_sequence_on_tensor_cores() {
        let runs_as = |form, kind, shape, capability| {
            Cut::new(kind, shape, capability).is_some_and(|c| c.runs_by_default(form))
        };
        let runs = |kind, shape, capability| runs_as(Form::Plain, kind, shape, capability);
        let qwen = |n, d| [n, 14, 2, d, 8192];
        assert!(runs(Kind::BFloat16, qwen(1, 64), 90));
        assert!(runs(Kind::Half, qwen(1, 64), 80));
        let short = [1, 14, 2, 64, 2304];
        assert!(!runs(Kind::BFloat16, short, 90), "a plain layer at 2k decoded faster on cuDNN");
        assert!(
            runs_as(Form::Lead, Kind::BFloat16, short, 90),
            "a lead at 2k spares its reuse layers the keys"
        );
        assert!(!runs(Kind::BFloat16, qwen(1, 128), 90), "heads of 128 were slower than cuDNN");
        assert!(
            runs_as(Form::Lead, Kind::BFloat16, [1, 12, 2, 128, 8192], 90),
            "a lead on heads of 128 attends for its reuse layers"
        );
        assert!(
            !runs_as(Form::Lead, Kind::BFloat16, [2, 12, 2, 128, 2304], 90),
            "leads on heads of 128 below 4k keys were measured at batch 1 only"
        );
        assert!(runs_as(Form::Lead, Kind::BFloat16, [8, 12, 2, 128, 8192], 90), "1.5B at batch 8 / 8k");
        assert!(!runs_as(Form::Lead, Kind::BFloat16, [9, 12, 2, 128, 8192], 90), "heads of 128 past batch 8");
        assert!(!runs(Kind::BFloat16, qwen(2, 64), 90), "two sequences");
        assert!(runs_as(Form::Lead, Kind::BFloat16, qwen(8, 64), 90), "a lead at batch 8");
        assert!(runs_as(Form::Lead, Kind::BFloat16, qwen(32, 64), 90), "a lead at batch 32 / 8k");
        assert!(!runs_as(Form::Lead, Kind::BFloat16, qwen(33, 64), 90), "past batch 32");
        assert!(
            runs_as(Form::Lead, Kind::BFloat16, [32, 14, 2, 64, 2304], 90),
            "a lead at batch 32 / 2k attends ahead jointly"
        );
        assert!(
            !runs_as(Form::Lead, Kind::BFloat16, [16, 14, 2, 64, 2304], 90),
            "a lead at batch 16 / 2k was not measured in the joint form"
        );
        // The joint ahead form where it was measured: heads of 64, two sequences or more at
        // 8k, 32 at 2k.
        let joint = |shape| Cut::new(Kind::BFloat16, shape, 90).is_some_and(|c| c.joint_by_default());
        if std::env::var_os("UNIATTN_DECODE_ATTENTION_JOINT").is_none() {
            assert!(joint(qwen(32, 64)) && joint(qwen(2, 64)));
            assert!(!joint(qwen(1, 64)), "one sequence: the units form's blocks");
            assert!(!joint([8, 14, 2, 64, 2304]), "batch 8 / 2k: the units form was faster");
            assert!(joint([32, 14, 2, 64, 2304]), "batch 32 / 2k");
            assert!(!joint([8, 12, 2, 128, 8192]), "not measured on heads of 128");
        }
        // Its pairs' last blocks combine every output's sums at once where that takes fewer L2
        // round trips: few splits a pair (batch 32 / 8k: 4), not many (batch 8 / 8k: 16).
        let all = |shape, reuse| {
            let cut = Cut::new(Kind::BFloat16, shape, 90).and_then(|c| c.joint(reuse)).expect("joint");
            (cut.splits, cut.combines_all_outputs())
        };
        assert_eq!(all(qwen(32, 64), 3), (4, true), "batch 32 / 8k: 2 round trips against 5");
        assert_eq!(all(qwen(16, 64), 3), (8, true), "batch 16 / 8k: 4 against 5");
        assert_eq!(all(qwen(8, 64), 3), (16, false), "batch 8 / 8k: 8 against 5");
        assert_eq!(all(qwen(2, 64), 3), (43, false), "batch 2 / 8k: 22 against 13");
        assert_eq!(all(qwen(16, 64), 1), (8, false), "one reuse layer at batch 16 / 8k: 4 against 3");
        assert_eq!(all(qwen(32, 128), 3), (4, true), "heads of 128 at batch 32 / 8k: 4 against 5");
        assert!(!all(qwen(1, 64), 3).1, "one split a pair: nothing to combine");
        assert!(!runs(Kind::Float, qwen(1, 64), 90), "f32 takes the CUDA-core form");
        assert!(!runs(Kind::BFloat16, [1, 8, 4, 256, 8192], 90), "heads of 256 take the CUDA-core form");
        assert!(!runs(Kind::BFloat16, qwen(1, 64), 75), "sm_75 has no tensor-core form");
    }

    /// `got` against `softmax(q k^T * scale + mask) v` in f64 from the same inputs: within the
    /// output's rounding, plus 1e-5 of the sum of the terms' sizes (f32 sums).
    fn check(got: &Tensor, (q, k, v, mask, scale): (&Tensor, &Tensor, &Tensor, &Tensor, f64), what: &str) {
        let f64_of = |t: &Tensor| t.to_kind(Kind::Double);
        let g = q.size()[1] / k.size()[1];
        let repeated = |t: &Tensor| f64_of(t).repeat_interleave_self_int(g, 1, None);
        let (kf, vf) = (repeated(k), repeated(v));
        let p = (f64_of(q).matmul(&kf.transpose(-1, -2)) * scale + f64_of(mask)).softmax(-1, Kind::Double);
        let want = p.matmul(&vf);
        let bound = want.abs() * ulps_of(v.kind()) + p.matmul(&vf.abs()) * 1e-5;
        let worst = ((f64_of(got) - &want).abs() - bound).max().double_value(&[]);
        assert!(worst <= 0.0, "{what}: {worst} past the bound");
    }

    /// Every form against the composition. Keys and values are views of a larger cache as the
    /// engine's are; masks hide a sequence's padding and a window's start and add finite
    /// values, one row a sequence or one for the batch; the lengths cover one block a pair,
    /// sub-tiles cut short, one to many sub-tiles a block and many blocks a (sequence, kv head)
    /// pair, so that every block count's ticket counters are used one launch after another. A lead's
    /// map serves two reuse layers, each with its own values.
    #[test]
    fn decode_attention_equals_the_composition() {
        let Some(dev) = gpu() else { return };
        // (sequences, query heads, kv heads, head width, keys)
        let shapes = [
            (1, 14, 2, 64, 2048),
            (1, 14, 2, 64, 8300),
            (1, 14, 2, 64, 40),
            (8, 14, 2, 64, 1000),
            (3, 12, 2, 128, 768),
            (2, 4, 1, 256, 300),
            (1, 4, 4, 64, 513),
            (2, 16, 2, 64, 131),
            (8, 14, 2, 64, 9000),
            (1, 16, 2, 256, 100),
        ];
        for kind in KINDS {
            for (n, heads, kv, d, keys) in shapes {
                let case = format!("{kind:?} n={n} heads={heads}/{kv} d={d} keys={keys}");
                let q = Tensor::randn([n, heads, 1, d], (Kind::Float, dev)).to_kind(kind);
                // The cache: two more slots and room past the keys, narrowed as the engine does.
                let cache = || {
                    let c = Tensor::randn([n + 2, kv, keys + 70, d], (Kind::Float, dev)).to_kind(kind);
                    c.narrow(0, 1, n).narrow(2, 0, keys)
                };
                let (k, v, v2, v3, v4) = (cache(), cache(), cache(), cache(), cache());
                // Sequence i ends i * 7 keys early and (for odd i) starts at key 3; key 1 of
                // every row gets a finite bias.
                let mask = Tensor::zeros([n, 1, 1, keys], (Kind::Float, dev));
                for i in 0..n {
                    let row = mask.get(i);
                    let end = (keys - i * 7).max(1);
                    let _ = row.narrow(-1, end, keys - end).fill_(f64::NEG_INFINITY);
                    if i % 2 == 1 && end > 4 {
                        let _ = row.narrow(-1, 0, 3).fill_(f64::NEG_INFINITY);
                    }
                }
                if keys > 1 {
                    let _ = mask.narrow(-1, 1, 1).fill_(-1.5);
                }
                let mask = mask.to_kind(kind);
                let scale = 1.0 / (d as f64).sqrt();
                if d * kind.elt_size_in_bytes() as i64 > 512 || heads / kv * d > MAX_OUTPUTS {
                    assert!(
                        plain(&q, &k, &v, &mask, scale, true).is_none(),
                        "{case}: rows past 512 bytes and groups past {MAX_OUTPUTS} outputs go to cuDNN"
                    );
                    continue;
                }
                for (mask, rows) in [(&mask, "a mask row each"), (&mask.narrow(0, 0, 1), "one mask row")] {
                    let inputs = (&q, &k, &v, mask, scale);
                    let got =
                        plain(&q, &k, &v, mask, scale, true).unwrap_or_else(|| panic!("{case}: applies"));
                    check(&got, inputs, &format!("{case}, {rows}"));
                    let (got, maps) =
                        lead(&q, &k, &v, mask, scale, true).unwrap_or_else(|| panic!("{case}: lead applies"));
                    check(&got, inputs, &format!("{case}, {rows}: lead"));
                    for (i, vr) in [&v2, &v3].into_iter().enumerate() {
                        let got = decode_attention_reuse(&maps, vr).expect("the reuse form applies");
                        check(&got, (&q, &k, vr, mask, scale), &format!("{case}, {rows}: reuse layer {i}"));
                    }
                    let other = Tensor::randn([n, kv, keys + 1, d], (kind, dev));
                    assert!(
                        decode_attention_reuse(&maps, &other).is_none(),
                        "{case}: values of another length"
                    );
                    // The lead attending for its reuse layers: its own output, and theirs from the
                    // sums over the keys before each sequence's last (the current key) plus that
                    // key's term; in units (two reuse layers) and in both joint forms (as many
                    // as they take, and one), which run on tensor cores only.
                    let current: Vec<i64> = (0..n).map(|i| (keys - i * 7).max(1) - 1).collect();
                    let current_key = Tensor::from_slice(&current).to_device(dev).view([n, 1]);
                    let [v2, v3, v4] = [&v2, &v3, &v4].map(Tensor::shallow_clone);
                    let mma = cut_of(&q, &k).is_some_and(|c| c.mma);
                    let forms = [
                        (AheadForm::Units, vec![v2.shallow_clone(), v3.shallow_clone()]),
                        (AheadForm::Joint, vec![v2.shallow_clone(), v3.shallow_clone(), v4.shallow_clone()]),
                        (AheadForm::JointAll, vec![v2, v3.shallow_clone(), v4]),
                        (AheadForm::Joint, vec![v3.shallow_clone()]),
                        (AheadForm::JointAll, vec![v3]),
                    ];
                    for (form, reuse) in forms {
                        let what = format!("{case}, {rows}, {form:?} with {} reuse layers", reuse.len());
                        let ahead_inputs = AheadInputs { current_key: &current_key, reuse_values: &reuse };
                        let Some((got, sums)) = ahead(&q, &k, &v, mask, scale, ahead_inputs, Some(form))
                        else {
                            assert!(form != AheadForm::Units && !mma, "{what}: the ahead form applies");
                            continue;
                        };
                        check(&got, inputs, &format!("{what}: lead attending ahead"));
                        for (r, vr) in reuse.iter().enumerate() {
                            let now = |i: usize| vr.get(i as i64).narrow(1, current[i], 1);
                            let v_now = Tensor::stack(&(0..n as usize).map(now).collect::<Vec<_>>(), 0);
                            let got = sums.attention(r, &v_now);
                            check(&got, (&q, &k, vr, mask, scale), &format!("{what}: reuse layer {r}"));
                        }
                        let other = [other.shallow_clone()];
                        let ahead_inputs = AheadInputs { current_key: &current_key, reuse_values: &other };
                        assert!(
                            ahead(&q, &k, &v, mask, scale, ahead_inputs, Some(form)).is_none(),
                            "{what}: reuse values of another length"
                        );
                    }
                    let five = [&v, &v, &v, &v].map(Tensor::shallow_clone);
                    let ahead_inputs = AheadInputs { current_key: &current_key, reuse_values: &five };
                    for form in [AheadForm::Joint, AheadForm::JointAll] {
                        assert!(
                            ahead(&q, &k, &v, mask, scale, ahead_inputs, Some(form)).is_none(),
                            "{case}: the {form:?} form makes {JOINT_OUTPUTS} outputs at most"
                        );
                    }
                }
            }
            // Past the pairs it is set to run for, cuDNN's kernels run.
            let n = 5;
            let q = Tensor::randn([n, 8, 1, 64], (kind, dev));
            let k = Tensor::randn([n, 1, 256, 64], (kind, dev));
            let mask = Tensor::zeros([n, 1, 1, 256], (kind, dev));
            with_decode_attention(n - 1, || {
                assert!(decode_attention(&q, &k, &k, &mask, 0.125).is_none());
                assert!(decode_attention_lead(&q, &k, &k, &mask, 0.125).is_none());
            });
            assert!(with_decode_attention(n, || decode_attention(&q, &k, &k, &mask, 0.125)).is_some());
            assert!(plain(&q, &k, &k, &mask, 0.125, true).is_some());
        }
    }

    /// Each joint form behind the kernel that writes its current keys, as the engine runs a
    /// SuperBlock lead: `rope_kv_write`, then the joint attention, which launches while the
    /// write may still run and stages a block's first run of keys before it waits wherever
    /// that run holds no current key. Run back to back, both give bit for bit what the
    /// attention gives run again once both have finished (its sums are combined in a fixed
    /// order), with the current keys in a block's first run of keys and past it. Queries and
    /// keys are scaled up so that a current key read before it was written would move every
    /// output. bf16, on tensor cores.
    #[test]
    fn joint_form_behind_the_cache_write_reads_the_new_keys() {
        let Some(dev) = gpu() else { return };
        let Device::Cuda(ordinal) = dev else { unreachable!("gpu() gives a CUDA device") };
        let sync = || tch::Cuda::synchronize(ordinal as i64);
        let kind = Kind::BFloat16;
        let (n, heads, kv, d) = (4i64, 14i64, 2i64, 64i64);
        let layout = super::super::HeadLayout { q: heads, k: kv, v: kv, dim: d };
        let shape = |h, keys| Tensor::empty([n, h, keys, d], (kind, dev));
        if !cut_of(&shape(heads, 1), &shape(kv, 64)).is_some_and(|c| c.mma) {
            return; // the joint form runs on tensor cores only
        }
        for keys in [1i64, 40, 64, 65, 129, 700, 2049, 4160, 8300] {
            let cache = || Tensor::randn([n, kv, keys + 8, d], (Kind::Float, dev)).to_kind(kind);
            let (k_cache, v_cache, v2, v3) = (cache(), cache(), cache(), cache());
            let view = |c: &Tensor| c.narrow(2, 0, keys);
            // Sequence i's current key is keys - 1 - 7 i (at least 0); the mask hides what follows.
            let current: Vec<i64> = (0..n).map(|i| (keys - 1 - 7 * i).max(0)).collect();
            let positions = Tensor::from_slice(&current).to_device(dev).view([n, 1]);
            let mask = Tensor::zeros([n, 1, 1, keys], (Kind::Float, dev));
            for (i, &c) in current.iter().enumerate() {
                let _ = mask.get(i as i64).narrow(-1, c + 1, keys - c - 1).fill_(f64::NEG_INFINITY);
            }
            let mask = mask.to_kind(kind);
            let x = (Tensor::randn([n, 1, (heads + 2 * kv) * d], (Kind::Float, dev)) * 4.0).to_kind(kind);
            let rope = crate::model::rope::RopeAngles::new(&positions, d as usize, 10_000.0, kind);
            let reuse = [view(&v2), view(&v3)];
            let inputs = AheadInputs { current_key: &positions, reuse_values: &reuse };
            for form in [AheadForm::Joint, AheadForm::JointAll] {
                let attend = |q: &Tensor| {
                    ahead(q, &view(&k_cache), &view(&v_cache), &mask, 0.125, inputs, Some(form))
                        .expect("the joint form applies")
                };
                sync();
                let q = super::super::rope_kv_write(
                    &x,
                    &positions,
                    &rope.cos,
                    &rope.sin_signed,
                    layout,
                    Some(&k_cache),
                    Some(&v_cache),
                )
                .expect("the cache write applies");
                let (behind, behind_sums) = attend(&q);
                sync();
                let (after, after_sums) = attend(&q);
                let what = format!("keys={keys}, {form:?}");
                assert!(behind.equal(&after), "{what}: the lead's output read a key before it was written");
                assert!(
                    behind_sums.sums.equal(&after_sums.sums)
                        && behind_sums.current.equal(&after_sums.current),
                    "{what}: the reuse layers' sums read a key before it was written"
                );
            }
        }
    }
}
