//! `qscope`: parse the command line, dispatch, and turn errors into one line and exit code 1.

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match &args.command {
        Some(Command::Eval(a)) => cli::eval::main(a),
        Some(Command::Sensitivity(a)) => cli::sensitivity::main(a),
        Some(Command::Inspect(a)) => cli::inspect::main(a),
        Some(Command::Export(a)) => cli::export::main(a),
        Some(Command::Plot(a)) => cli::plot::main(a),
        Some(Command::Tui(_)) | None => Err(anyhow::anyhow!("the terminal UI is not built yet; use `qscope eval`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("qscope: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
