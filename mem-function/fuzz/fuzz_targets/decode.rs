//! Feeds arbitrary bytes to every decoder of the wire protocol (frame check and parse, request,
//! response, HELLO, CHALLENGE, BYE notice) and checks that whatever decodes re-encodes to the
//! same value. The body is `mem_function::wire::fuzz_decode`, which the test
//! `tests/fuzz_decode.rs` also runs over random inputs in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mem_function::wire::fuzz_decode(data);
});
