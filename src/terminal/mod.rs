//! The peer's terminal: what a person (or a script) types, and what the peer
//! prints back.
//!
//! - [`command`]: IRC-style input lines (`/join #rust`, `/msg bob hi`, plain
//!   text) parsed into [`Command`]s, with errors that say the usage.
//! - [`output`]: every event the peer shows, as one [`Output`] enum that
//!   renders either as a JSON line (the contract scripts rely on) or as a
//!   human line.
//! - [`io`]: reading lines from stdin (rustyline when a person is at a
//!   terminal) on a dedicated thread, and a [`Printer`] that writes output
//!   without garbling the line being typed.
//! - [`screen`]: the full screen (ratatui over crossterm) a person gets on
//!   a terminal: a window per conversation, a status bar, a nick list.

pub mod command;
pub mod io;
pub mod output;
pub mod screen;

pub use command::{action_body, action_text, parse, Command, CommandError, Target, Window, HELP};
pub use io::{complete, spawn_input, Printer, DEFAULT_PROMPT};
pub use output::{mentions, Colour, MessageView, Output, RoomView};
