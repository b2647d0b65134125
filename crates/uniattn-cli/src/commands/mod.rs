//! One module per command (or pair of related commands): its arguments and what it runs.
pub mod bench;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod medmcqa;
pub mod model;
pub mod plot;
pub mod search_plan;
pub mod serve;
pub mod train;
