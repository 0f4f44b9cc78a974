//! The configuration file parser never panics, whatever the file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| airamp::config::parse_for_fuzz(data));
