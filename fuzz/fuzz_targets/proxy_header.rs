//! Any bytes as the start of a connection to a PROXY binding: the parser
//! must never panic, never claim more bytes than it was given, and give
//! the same answer when the same header arrives in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaygate::smtp::proxy_header::{ProxyParse, V2_MAX, parse};

fuzz_target!(|input: &[u8]| {
    let whole = parse(input);
    match &whole {
        ProxyParse::Done { consumed, .. } => {
            assert!(*consumed <= input.len() && *consumed <= V2_MAX);
            // Every strict prefix of a whole header asks for more (or is
            // already refused: never a different header).
            for cut in [1, *consumed / 2, consumed.saturating_sub(1)] {
                if cut < *consumed {
                    assert!(!matches!(parse(&input[..cut]), ProxyParse::Done { .. }));
                }
            }
        }
        ProxyParse::Incomplete => assert!(input.len() <= V2_MAX),
        ProxyParse::Refused(why) => assert!(!why.is_empty()),
    }
});
