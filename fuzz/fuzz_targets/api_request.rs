#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_node::fuzzing::api_request(data));
