//! Progress on stderr, shown only when stderr is a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// A spinner with a message, or nothing when stderr is not a terminal.
pub fn spinner(msg: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(80));
    Some(pb)
}

/// A bar of `total` steps, or nothing when stderr is not a terminal.
pub fn bar(total: u64, msg: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    Some(pb)
}

/// A bar over `total` bytes with the throughput, or nothing when stderr is not a terminal.
pub fn bytes_bar(total: u64, msg: &str) -> Option<ProgressBar> {
    let pb = bar(total, msg)?;
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Some(pb)
}

/// `cancel` reporting the methods' steps as the spinner's message (unchanged without one).
pub fn with_spinner(
    cancel: qscope::pipeline::Cancel,
    pb: Option<&ProgressBar>,
) -> qscope::pipeline::Cancel {
    match pb {
        Some(pb) => {
            let pb = pb.clone();
            cancel.with_progress(std::sync::Arc::new(move |m: &str| {
                pb.set_message(m.to_string())
            }))
        }
        None => cancel,
    }
}
