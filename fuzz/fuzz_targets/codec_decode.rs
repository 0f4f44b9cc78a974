//! Compressed payloads arrive from the network: decoding any bytes of any length
//! either works or returns an error.
#![no_main]

use airamp::codec::{encoded_len, Codec, WireFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, wire)) = data.split_first() else { return };
    let n = usize::from(n);
    for format in WireFormat::ALL {
        let codec = Codec::new(format);
        let mut acc = vec![0f32; n];
        let r = codec.decode_accumulate_wire(wire, &mut acc);
        assert_eq!(r.is_ok(), wire.len() == encoded_len(format, n));
    }
});
