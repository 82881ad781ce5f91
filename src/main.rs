//! `qscope`: parse the command line, dispatch, and turn errors into one line and exit code 1.

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};
use cli::out::{OutputError, errln};
use qscope::error::clip;
use std::process::ExitCode;

/// Longest error line printed (causes quoting long inputs are cut in the middle).
const LINE_MAX: usize = 1000;

fn main() -> ExitCode {
    qscope::process::keep_freed_memory();
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e
                .to_string()
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ")
                .to_string();
            errln!(
                "qscope: error: {} (see qscope --help)",
                clip(&first, LINE_MAX)
            );
            return ExitCode::from(2);
        }
    };
    let result = match &args.command {
        Some(Command::Eval(a)) => cli::eval::main(a),
        Some(Command::Sensitivity(a)) => cli::sensitivity::main(a),
        Some(Command::Inspect(a)) => cli::inspect::main(a),
        Some(Command::Export(a)) => cli::export::main(a),
        Some(Command::Plot(a)) => cli::plot::main(a),
        Some(Command::Bench(a)) => cli::bench::main(a),
        Some(Command::Mixed(a)) => cli::mixed::main(a),
        Some(Command::Tui(a)) => cli::tui::main(&a.common, a.out.as_deref()),
        None => cli::tui::main(&args.common, None),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<OutputError>()
                .is_some_and(OutputError::is_closed_pipe) =>
        {
            ExitCode::FAILURE // the reader went away: nobody to tell
        }
        Err(e) => {
            errln!("qscope: error: {}", clip(&one_line(&e), LINE_MAX));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the line already
/// holds (library errors name their cause in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
