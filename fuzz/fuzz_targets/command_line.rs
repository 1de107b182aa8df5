//! Arbitrary UTF-8 through the terminal's command parser: it answers every
//! line with a command, nothing, or an error, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley::terminal::{parse, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse(line) {
        Ok(Some(Command::Say(text))) => {
            // What is said is never empty and never over the limit.
            assert!(parley::names::check_body(&text).is_ok());
        }
        Ok(Some(Command::Msg(_, text))) => {
            assert!(parley::names::check_body(&text).is_ok());
        }
        Ok(_) => {}
        Err(e) => {
            // Every error has a readable message.
            assert!(!e.to_string().is_empty());
        }
    }
});
