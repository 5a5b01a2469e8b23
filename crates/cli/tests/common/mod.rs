//! Helpers shared with the other crates' tests.
#![allow(unused_imports)]

pub use pixeldit_testkit::*;
