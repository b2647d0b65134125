//! Charts from data: the scripts' figures come from the same code as the tool's own plots.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(
    after_help = "The JSON holds one chart, e.g.\n  {\"kind\": \"bars\", \"title\": \"decode\", \"y_label\": \"tokens/s\", \"categories\": [\"b1\", \"b32\"],\n   \"series\": [{\"name\": \"ours\", \"values\": [829, 21426]}]}\n(kinds: lines, scatter, bars, heatmap; fields in docs/guide.md).\n\nExample:\n  uniattn plot chart.json --out chart.svg"
)]
pub struct PlotArgs {
    /// The chart as JSON: a file, or - for standard input
    pub spec: PathBuf,
    /// Where to draw it: SVG for a .svg name, PNG otherwise
    #[arg(long)]
    pub out: PathBuf,
}

pub fn plot(a: PlotArgs) -> Result<()> {
    uniattn::plot::Chart::read(&a.spec)?.save(&a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
