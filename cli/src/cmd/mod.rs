//! One module per subcommand: `XArgs` (clap) and `run(args, &Ctx)`.

pub mod export;
pub mod gc;
pub mod inspect;
pub mod install;
pub mod list;
pub mod migrate;
pub mod pack;
pub mod pin;
pub mod remove;
pub mod run;
pub mod show;
pub mod verify;
