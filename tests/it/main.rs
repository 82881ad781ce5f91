//! Integration tests: one binary, one module per area.

mod bad_input;
mod engine;
mod figures;
mod tui;
mod util;
