//! One module per subcommand: `XArgs` (clap) and `run(args, &Ctx)`.

pub mod base;
pub mod demo;
pub mod eval;
pub mod export;
pub mod gc;
pub mod inspect;
pub mod install;
pub mod list;
pub mod migrate;
pub mod pack;
pub mod pin;
pub mod plugin;
pub mod pull;
pub mod push;
pub mod quantize;
pub mod remove;
pub mod run;
pub mod scan;
pub mod serve;
pub mod show;
pub mod toy;
pub mod train;
pub mod verify;
