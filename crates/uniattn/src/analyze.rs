//! Cross-layer redundancy of softmax maps, and the plan it suggests.
//!
//! Metric: for layers `i` and `j`, the cosine similarity between their attention rows
//! `P_i[h, q, :]` and `P_j[h, q, :]` for the same head `h` and query `q`, averaged over heads
//! and over every query position but the first (whose row is trivially one-hot), pooled over
//! samples. Head-matched because a reuse layer's head `h` reads exactly its lead's head `h`;
//! cosine because it compares where attention goes regardless of how peaked it is, and it is
//! 1 exactly when a reuse layer would see its own map.
use crate::error::{Error, Result};
use crate::model::attention::{LeadAttention, LeadState, Want};
use crate::model::transformer::PositionContext;
use crate::model::Transformer;
use crate::plan::SuperBlockPlan;
use tch::{Kind, Tensor};

/// [`attention_similarity`]'s matrix as a heatmap (`similarity.png`), its colour scale from the
/// lowest off-diagonal value to 1.
pub fn similarity_chart(sim: &[Vec<f64>]) -> crate::plot::Chart {
    let off_diagonal =
        sim.iter().enumerate().flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, _)| *j != i));
    let lo = off_diagonal.map(|(_, v)| *v).fold(f64::MAX, f64::min);
    let labels = [
        "similarity of attention maps between layers (head-matched cosine)",
        "layer",
        "layer",
        "mean cosine similarity",
    ];
    crate::plot::Heatmap::of(labels, sim, 0, [lo.min(1.0), 1.0])
}

/// `L x L` mean head-matched cosine similarity of attention rows over `seqs`.
pub fn attention_similarity(
    model: &Transformer,
    seqs: &[Vec<u32>],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>> {
    if !model.stem.plan.is_dense() {
        return Err(Error::invalid("analyze the dense model (this one has a plan already)"));
    }
    let _guard = tch::no_grad_guard();
    let n = model.stem.cfg.num_layers;
    let mut sum = vec![vec![0f64; n]; n];
    let mut rows = 0f64;
    for (s, seq) in seqs.iter().enumerate() {
        let t = seq.len() as i64;
        if t < 2 {
            continue;
        }
        let ids = Tensor::from_slice(&seq.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(model.stem.device)
            .unsqueeze(0);
        let pc = PositionContext::full(&model.stem, t);
        let mut h = model.stem.embed(&ids);
        let mut maps = Vec::with_capacity(n);
        for (l, layer) in model.layers.iter().enumerate() {
            let o = layer.forward(&h, &pc.layer(&model.stem, l), None, Want::Probs);
            let Some(LeadState { attn: Some(LeadAttention::Probs(p)), .. }) = o.lead else {
                unreachable!("dense layers return their map when asked")
            };
            let p = p.to_kind(Kind::Float);
            // Unit rows, first query dropped: [H, t-1, t]
            let p = p.squeeze_dim(0).narrow(1, 1, t - 1);
            maps.push(&p / p.norm_scalaropt_dim(2.0, [-1], true));
            h = o.out;
        }
        for i in 0..n {
            for j in i..n {
                let c = (&maps[i] * &maps[j]).sum_dim_intlist(-1, false, Kind::Float).mean(Kind::Double);
                let v = c.double_value(&[]) * (t - 1) as f64;
                sum[i][j] += v;
                if i != j {
                    sum[j][i] += v;
                }
            }
        }
        rows += (t - 1) as f64;
        progress(s + 1, seqs.len());
    }
    if rows == 0.0 {
        return Err(Error::invalid("no sample of at least 2 tokens to analyse"));
    }
    Ok(sum.into_iter().map(|row| row.into_iter().map(|v| v / rows).collect()).collect())
}

/// The plan with exactly `reuse` reuse layers, blocks of 2..=`max_group` layers starting at
/// `min_layer` or above, that maximises the summed similarity of each reuse layer to its lead.
pub fn propose_plan(
    sim: &[Vec<f64>],
    reuse: usize,
    min_layer: usize,
    max_group: usize,
) -> Result<SuperBlockPlan> {
    let n = sim.len();
    if max_group < 2 {
        return Err(Error::invalid("--max-group must be at least 2"));
    }
    const NONE: f64 = f64::NEG_INFINITY;
    // best[i][k]: best score over layers 0..i with k reuse layers; from[i][k]: block that ends at i.
    let mut best = vec![vec![NONE; reuse + 1]; n + 1];
    let mut from: Vec<Vec<Option<usize>>> = vec![vec![None; reuse + 1]; n + 1];
    best[0][0] = 0.0;
    for i in 0..n {
        for k in 0..=reuse {
            if best[i][k] == NONE {
                continue;
            }
            if best[i][k] > best[i + 1][k] {
                best[i + 1][k] = best[i][k];
                from[i + 1][k] = None;
            }
            if i < min_layer {
                continue;
            }
            let mut score = best[i][k];
            for g in 2..=max_group {
                let e = i + g;
                let kk = k + g - 1;
                if e > n || kk > reuse {
                    break;
                }
                score += sim[i][e - 1];
                if score > best[e][kk] {
                    best[e][kk] = score;
                    from[e][kk] = Some(i);
                }
            }
        }
    }
    if best[n][reuse] == NONE {
        return Err(Error::invalid(format!(
            "no plan has {reuse} reuse layers in layers {min_layer}..{n} with blocks of at most {max_group}"
        )));
    }
    let (mut blocks, mut i, mut k) = (Vec::new(), n, reuse);
    while i > 0 {
        match from[i][k] {
            Some(s) => {
                blocks.push((s, i));
                k -= i - s - 1;
                i = s;
            }
            None => i -= 1,
        }
    }
    SuperBlockPlan::from_blocks(blocks, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_similarity() {
        // Layers 4-6 are near-identical, the rest dissimilar.
        let n = 8;
        let sim: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j || (4..7).contains(&i) && (4..7).contains(&j) { 1.0 } else { 0.1 })
                    .collect()
            })
            .collect();
        let p = propose_plan(&sim, 2, 0, 4).unwrap();
        assert_eq!(p.blocks, vec![(4, 7)]);
        let p = propose_plan(&sim, 3, 0, 4).unwrap();
        assert_eq!(p.reuse_layers().len(), 3);
        assert!(p.reuse_layers().contains(&5) && p.reuse_layers().contains(&6));
        assert!(propose_plan(&sim, 7, 4, 4).unwrap_err().to_string().contains("no plan"));
        let p = propose_plan(&sim, 1, 5, 2).unwrap();
        assert!(p.blocks.iter().all(|&(s, e)| s >= 5 && e - s == 2));
    }
}
