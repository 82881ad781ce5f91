//! `qscope` / `qscope tui`: the interactive explorer. Refuses to start without a terminal.

use super::args::Common;
use anyhow::{Result, bail};
use std::io::IsTerminal;
use std::path::Path;

/// Runs the terminal UI on the model and data that `c` names (the bundled MLP by default).
/// `out` is where the export key writes (default: MODEL.params.json in the current folder).
pub fn main(c: &Common, out: Option<&Path>) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "the interactive UI needs a terminal, and {} is not one; for a report without a terminal use `qscope eval` (add --json for JSON)",
            if std::io::stdout().is_terminal() {
                "stdin"
            } else {
                "stdout"
            }
        );
    }
    if let Some(p) = out {
        qscope::export::check_export_target(p)?;
    }
    run(c, out)
}

#[cfg(feature = "tui")]
fn run(c: &Common, out: Option<&Path>) -> Result<()> {
    let s = super::setup::setup(c)?;
    let origin = s.params_origin.clone().unwrap_or_default();
    let seed = s.params.map(|p| (p, origin));
    qscope::tui::run(
        s.model,
        s.calib,
        s.eval,
        s.config,
        seed,
        out.map(Path::to_path_buf),
    )?;
    Ok(())
}

#[cfg(not(feature = "tui"))]
fn run(_: &Common, _: Option<&Path>) -> Result<()> {
    bail!("this qscope was built without the `tui` feature; use `qscope eval`")
}
