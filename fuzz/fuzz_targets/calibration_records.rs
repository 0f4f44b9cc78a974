//! Everything calibration reads that another party wrote: a member's
//! report (from the network) and a node-local record (from a file). Each
//! must be accepted with in-range figures or rejected, never panic; what
//! is accepted combines without panicking either.
#![no_main]

use airamp::collnet::calibrate::{combine, Agreed, MemberReport, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    if let Ok(r) = MemberReport::decode(rest, u32::from(head)) {
        assert!(r.figures.is_none_or(|f| f.is_valid()));
    }
    let records: Vec<Record> = rest.chunks(72).filter_map(Record::decode).collect();
    for r in &records {
        if let Agreed::Measured(f) = r.agreed {
            assert!(f.is_valid());
        }
    }
    let _ = combine(&records);
});
