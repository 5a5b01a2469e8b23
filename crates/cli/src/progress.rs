//! Progress bars of both binaries (indicatif): drawn on stderr only when it is a terminal, never with `-q`, so
//! pipes and logs get no escape codes.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;

/// Whether bars are drawn: not `quiet` and stderr is a terminal.
pub fn visible(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

fn bar(len: u64, quiet: bool) -> ProgressBar {
    if visible(quiet) {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    }
}

/// Sampler steps: `step 3/25 [====>   ] 4.10 it/s ETA 5s (1s)`.
pub fn steps(len: usize, quiet: bool) -> ProgressBar {
    let b = bar(len as u64, quiet);
    b.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {its} ETA {eta} ({elapsed})")
            .expect("valid template")
            .with_key("its", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.2} it/s", s.per_sec());
            })
            .progress_chars("=> "),
    );
    b
}

/// Weights streamed into a model file: bytes, rate, ETA and the tensor being written.
pub fn bytes(total: u64, quiet: bool) -> ProgressBar {
    let b = bar(total, quiet);
    b.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}
