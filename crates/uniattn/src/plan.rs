//! SuperBlock plans: which layers lead a block, which reuse their lead's softmax map, and which
//! stay ordinary. Stored next to a model as `uniattn.json`.
use crate::error::{Error, Result};
use crate::model::names::Module;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The role of one decoder layer under a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRole {
    Ordinary,
    /// Computes attention normally and hands its probabilities to its block.
    Lead,
    /// Reuses the probabilities of layer `lead`.
    Reuse {
        lead: usize,
    },
}

/// What a reuse layer does with its block's lead: UniAttn and the paper's baselines, all on
/// the same plan so that savings match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReuseKind {
    /// The lead's softmax map with its own V, plus the compensation `X W_c`.
    #[default]
    Uniattn,
    /// The lead's softmax map with its own V, no compensation.
    SoftmaxOnly,
    /// Cross-layer KV sharing: its own Q against the lead's K and V.
    Cla,
    /// No attention block at all (LLMDrop-style).
    Layerdrop,
    /// Intra-layer KV sharing: its own attention with its K/V heads mean-pooled in groups
    /// ([`merged_kv_heads`]), as the GQA paper converts MHA; no lead.
    KvHeads,
}

/// The KV heads a [`ReuseKind::KvHeads`] layer keeps out of `kv_heads`: the largest divisor
/// of it no more than half (2 -> 1, 3 -> 1, 8 -> 4), so each group mean-pools whole heads and
/// the layer caches at most half; one head stays one.
pub fn merged_kv_heads(kv_heads: usize) -> usize {
    (1..=kv_heads / 2).rev().find(|d| kv_heads.is_multiple_of(*d)).unwrap_or(kv_heads)
}

/// What a reuse layer keeps in the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseCache {
    ValuesOnly,
    Nothing,
    /// Keys and values of [`merged_kv_heads`] heads.
    MergedHeads,
}

/// What a SuperBlock lead hands to the reuse layers of its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadHandover {
    /// Its attention probabilities (UniAttn, softmax-only).
    Probs,
    /// Its keys and values (CLA).
    KeysValues,
    /// Nothing (layer drop).
    Nothing,
}

/// What a reuse layer of one kind is: the one place these facts live. The model builder drops
/// `drops`, the engine caches `cache`, the trainer runs `two_stage`, and the savings follow
/// from all of them.
#[derive(Debug, Clone, Copy)]
pub struct ReuseSpec {
    /// Attention modules a reuse layer does not have (their weights and biases).
    pub drops: &'static [Module],
    pub cache: ReuseCache,
    /// It computes its own queries (CLA), so its Q projection stays.
    pub own_queries: bool,
    /// It computes scores and a softmax itself (CLA, against its lead's keys).
    pub own_scores: bool,
    /// It adds the compensation `X W_c` (a `hidden x hidden` map).
    pub compensation: bool,
    /// Post-training trains W_c alone first, then every weight.
    pub two_stage: bool,
    pub lead_hands: LeadHandover,
}

impl ReuseKind {
    pub const ALL: [ReuseKind; 5] = [
        ReuseKind::Uniattn,
        ReuseKind::SoftmaxOnly,
        ReuseKind::Cla,
        ReuseKind::Layerdrop,
        ReuseKind::KvHeads,
    ];

    pub fn spec(self) -> ReuseSpec {
        match self {
            ReuseKind::Uniattn => ReuseSpec {
                drops: &[Module::Q, Module::K, Module::QNorm, Module::KNorm],
                cache: ReuseCache::ValuesOnly,
                own_queries: false,
                own_scores: false,
                compensation: true,
                two_stage: true,
                lead_hands: LeadHandover::Probs,
            },
            ReuseKind::SoftmaxOnly => ReuseSpec {
                drops: &[Module::Q, Module::K, Module::QNorm, Module::KNorm, Module::Wc],
                cache: ReuseCache::ValuesOnly,
                own_queries: false,
                own_scores: false,
                compensation: false,
                two_stage: false,
                lead_hands: LeadHandover::Probs,
            },
            ReuseKind::Cla => ReuseSpec {
                drops: &[Module::K, Module::V, Module::KNorm, Module::Wc],
                cache: ReuseCache::Nothing,
                own_queries: true,
                own_scores: true,
                compensation: false,
                two_stage: false,
                lead_hands: LeadHandover::KeysValues,
            },
            ReuseKind::Layerdrop => ReuseSpec {
                drops: &[
                    Module::Q,
                    Module::K,
                    Module::V,
                    Module::O,
                    Module::QNorm,
                    Module::KNorm,
                    Module::Wc,
                ],
                cache: ReuseCache::Nothing,
                own_queries: false,
                own_scores: false,
                compensation: false,
                two_stage: false,
                lead_hands: LeadHandover::Nothing,
            },
            ReuseKind::KvHeads => ReuseSpec {
                drops: &[],
                cache: ReuseCache::MergedHeads,
                own_queries: true,
                own_scores: true,
                compensation: false,
                two_stage: false,
                lead_hands: LeadHandover::Nothing,
            },
        }
    }

    /// The name the command line and `uniattn.json` use.
    pub fn name(self) -> &'static str {
        match self {
            ReuseKind::Uniattn => "uniattn",
            ReuseKind::SoftmaxOnly => "softmax-only",
            ReuseKind::Cla => "cla",
            ReuseKind::Layerdrop => "layerdrop",
            ReuseKind::KvHeads => "kv-heads",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Consecutive layer ranges `start..end`, each a SuperBlock whose first layer leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SuperBlockPlan {
    pub num_layers: usize,
    /// Half-open layer ranges, sorted, non-overlapping, each at least two layers long.
    pub blocks: Vec<(usize, usize)>,
    #[serde(default)]
    pub reuse: ReuseKind,
}

impl SuperBlockPlan {
    /// No reuse layers: the dense model.
    pub fn dense(num_layers: usize) -> Self {
        SuperBlockPlan { num_layers, blocks: vec![], reuse: ReuseKind::Uniattn }
    }

    /// The paper's `(g, begin, end)`: layers `begin..min(end, L)` cut into blocks of `g`. A
    /// trailing remainder of one layer is left ordinary (a block needs a reuse layer).
    pub fn grouped(g: usize, begin: usize, end: usize, num_layers: usize) -> Result<Self> {
        if g < 2 {
            return Err(Error::invalid(format!(
                "plan: group size g={g}; a SuperBlock needs at least 2 layers"
            )));
        }
        let end = end.min(num_layers);
        if begin >= end {
            return Err(Error::invalid(format!(
                "plan: begin {begin} is not below end {end} (the model has {num_layers} layers)"
            )));
        }
        let mut blocks = Vec::new();
        let mut s = begin;
        while s < end {
            let e = (s + g).min(end);
            if e - s >= 2 {
                blocks.push((s, e));
            }
            s = e;
        }
        Self::from_blocks(blocks, num_layers)
    }

    /// Parses `g:begin:end`, e.g. `4:16:33`.
    pub fn parse_grouped(spec: &str, num_layers: usize) -> Result<Self> {
        let parts: Vec<&str> = spec.split(':').collect();
        let nums: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
        match nums.as_deref() {
            Some(&[g, b, e]) => Self::grouped(g, b, e, num_layers),
            _ => Err(Error::invalid(format!(
                "plan '{spec}': expected g:begin:end with three non-negative integers, e.g. 4:16:33"
            ))),
        }
    }

    /// Parses explicit inclusive ranges, e.g. `16-19,20-23`.
    pub fn parse_blocks(spec: &str, num_layers: usize) -> Result<Self> {
        let mut blocks = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let range = item
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)));
            match range {
                Some((a, b)) if a <= b => blocks.push((a, b + 1)),
                _ => {
                    return Err(Error::invalid(format!(
                        "plan block '{item}': expected FIRST-LAST with FIRST <= LAST, e.g. 16-19"
                    )))
                }
            }
        }
        Self::from_blocks(blocks, num_layers)
    }

    /// Validates half-open blocks.
    pub fn from_blocks(mut blocks: Vec<(usize, usize)>, num_layers: usize) -> Result<Self> {
        blocks.sort();
        for &(s, e) in &blocks {
            if e > num_layers {
                return Err(Error::invalid(format!(
                    "plan block {s}-{}: layer {} is out of range (the model has layers 0-{})",
                    e - 1,
                    e - 1,
                    num_layers.saturating_sub(1)
                )));
            }
            if e < s + 2 {
                return Err(Error::invalid(format!(
                    "plan block {s}-{}: a SuperBlock needs a lead and at least one reuse layer",
                    e.saturating_sub(1)
                )));
            }
        }
        for w in blocks.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::invalid(format!(
                    "plan blocks {}-{} and {}-{} overlap",
                    w[0].0,
                    w[0].1 - 1,
                    w[1].0,
                    w[1].1 - 1
                )));
            }
        }
        Ok(SuperBlockPlan { num_layers, blocks, reuse: ReuseKind::Uniattn })
    }

    pub fn role(&self, layer: usize) -> LayerRole {
        for &(s, e) in &self.blocks {
            if layer == s {
                return LayerRole::Lead;
            }
            if layer > s && layer < e {
                return LayerRole::Reuse { lead: s };
            }
        }
        LayerRole::Ordinary
    }

    pub fn roles(&self) -> Vec<LayerRole> {
        (0..self.num_layers).map(|l| self.role(l)).collect()
    }

    /// The reuse layers that follow `lead` in its SuperBlock; none if `lead` leads none.
    pub fn reuse_layers_of(&self, lead: usize) -> std::ops::Range<usize> {
        self.blocks.iter().find(|&&(s, _)| s == lead).map_or(0..0, |&(s, e)| s + 1..e)
    }

    pub fn reuse_layers(&self) -> Vec<usize> {
        (0..self.num_layers).filter(|&l| matches!(self.role(l), LayerRole::Reuse { .. })).collect()
    }

    /// The KV heads layer `layer` has, out of the model's `kv_heads`: fewer in the reuse
    /// layers of a [`ReuseKind::KvHeads`] plan.
    pub fn kv_heads(&self, layer: usize, kv_heads: usize) -> usize {
        match self.role(layer) {
            LayerRole::Reuse { .. } if self.reuse == ReuseKind::KvHeads => merged_kv_heads(kv_heads),
            _ => kv_heads,
        }
    }

    pub fn is_dense(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Checks the plan against a model's layer count.
    pub fn check_layers(&self, num_layers: usize, source: &Path) -> Result<()> {
        if self.num_layers != num_layers {
            return Err(Error::format(
                source,
                format!("num_layers: plan is for {} layers, the model has {num_layers}", self.num_layers),
            ));
        }
        Self::from_blocks(self.blocks.clone(), num_layers)
            .map_err(|e| Error::format(source, e.to_string()))?;
        Ok(())
    }

    pub fn with_reuse(mut self, reuse: ReuseKind) -> Self {
        self.reuse = reuse;
        self
    }

    /// `16-19,20-23` style, for display and for `--plan-blocks`.
    pub fn describe(&self) -> String {
        if self.blocks.is_empty() {
            return "dense (no SuperBlocks)".into();
        }
        self.blocks.iter().map(|(s, e)| format!("{s}-{}", e - 1)).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_example() {
        let p = SuperBlockPlan::parse_grouped("4:16:33", 32).unwrap();
        assert_eq!(p.blocks, vec![(16, 20), (20, 24), (24, 28), (28, 32)]);
        assert_eq!(p.reuse_layers().len(), 12);
        assert_eq!(p.role(16), LayerRole::Lead);
        assert_eq!(p.role(19), LayerRole::Reuse { lead: 16 });
        assert_eq!(p.reuse_layers_of(16), 17..20);
        assert!(p.reuse_layers_of(17).is_empty() && p.reuse_layers_of(15).is_empty());
        assert_eq!(p.role(15), LayerRole::Ordinary);
        assert_eq!(p.describe(), "16-19,20-23,24-27,28-31");
    }

    #[test]
    fn remainder_of_one_stays_ordinary() {
        let p = SuperBlockPlan::parse_grouped("4:16:33", 30).unwrap();
        assert_eq!(p.blocks, vec![(16, 20), (20, 24), (24, 28), (28, 30)]);
        let p = SuperBlockPlan::parse_grouped("3:20:30", 30).unwrap();
        assert_eq!(p.blocks, vec![(20, 23), (23, 26), (26, 29)]);
        assert_eq!(p.role(29), LayerRole::Ordinary);
    }

    #[test]
    fn kv_head_merging_keeps_the_largest_divisor_up_to_half() {
        let merged: Vec<usize> = [1, 2, 3, 4, 5, 6, 8, 12].map(merged_kv_heads).to_vec();
        assert_eq!(merged, [1, 1, 1, 2, 1, 3, 4, 6]);
        let p = SuperBlockPlan::parse_grouped("4:0:8", 8).unwrap().with_reuse(ReuseKind::KvHeads);
        let heads: Vec<usize> = (0..8).map(|l| p.kv_heads(l, 2)).collect();
        assert_eq!(heads, [2, 1, 1, 1, 2, 1, 1, 1]);
        assert!((0..8).all(|l| p.clone().with_reuse(ReuseKind::Cla).kv_heads(l, 2) == 2));
    }

    #[test]
    fn explicit_blocks() {
        let p = SuperBlockPlan::parse_blocks("20-23, 16-19", 30).unwrap();
        assert_eq!(p.blocks, vec![(16, 20), (20, 24)]);
    }

    #[test]
    fn invalid_plans_say_why() {
        let cases = [
            (SuperBlockPlan::parse_blocks("16-19,19-22", 30), "overlap"),
            (SuperBlockPlan::parse_blocks("16-16", 30), "at least one reuse layer"),
            (SuperBlockPlan::parse_blocks("28-31", 30), "out of range"),
            (SuperBlockPlan::parse_blocks("5-x", 30), "expected FIRST-LAST"),
            (SuperBlockPlan::parse_grouped("1:0:30", 30), "at least 2 layers"),
            (SuperBlockPlan::parse_grouped("4:40:50", 30), "begin 40"),
            (SuperBlockPlan::parse_grouped("4:16", 30), "g:begin:end"),
        ];
        for (r, want) in cases {
            let err = r.unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let p = SuperBlockPlan::parse_blocks("16-19", 30).unwrap();
        let err = p.check_layers(24, Path::new("uniattn.json")).unwrap_err().to_string();
        assert!(err.contains("uniattn.json") && err.contains("24"), "{err}");
    }
}
