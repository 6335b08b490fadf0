//! Any bytes as one command line: the parser must never panic, and every
//! error must render as one well-formed reply line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaygate::smtp::command::parse_command;

fuzz_target!(|line: &[u8]| {
    match parse_command(line) {
        Ok(_) => {}
        Err(e) => {
            let wire = e.reply().to_wire();
            assert!(wire.ends_with(b"\r\n"));
            assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(!wire.contains(&0));
        }
    }
});
