//! The command line: argument parsing, one module per subcommand, table output.

pub mod args;
pub mod bench;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod mixed;
pub mod out;
pub mod plot;
pub mod progress;
pub mod sensitivity;
pub mod setup;
pub mod table;
pub mod tui;
