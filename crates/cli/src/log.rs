//! What the binaries print besides errors: notes on stderr ([`note!`](crate::note)) and results on stdout
//! ([`say!`](crate::say)), both silenced by `-q` ([`set_quiet`]), which leaves nothing but errors.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences [`note!`](crate::note) and [`say!`](crate::say) for the rest of the process (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `eprintln!` unless `-q`: progress notes, warnings, which backend runs.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::log::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// `println!` unless `-q`: summaries of what was written.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::log::quiet() {
            println!($($arg)*);
        }
    };
}
