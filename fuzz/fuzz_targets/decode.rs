//! `decode`: arbitrary bytes into the input decoders.
//!
//! Checks, for every input:
//! - `rapport::codec::decode` (format detection: JSON, Confluent framing, plain protobuf) and
//!   `rapport::codec::json::decode_json` never panic, whatever the bytes;
//! - every event either of them accepts survives a round trip: re-encoded with
//!   `codec::json::encode_event` and with `codec::proto::encode_event` (plain, and inside a
//!   Confluent frame), each form decodes back through `codec::decode` to an equal `Event`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rapport::codec::{self, DecodeLimits, json, proto};
use rapport::domain::event::Event;

const LIMITS: DecodeLimits = DecodeLimits {
    max_record_bytes: 1 << 20,
    max_id_bytes: 256,
};

/// For decoding the re-encoded forms: the same id limit (ids are unchanged by re-encoding), but
/// no record-size limit, since JSON escaping can make a record that was just under
/// `max_record_bytes` longer than it.
const REDECODE: DecodeLimits = DecodeLimits {
    max_record_bytes: usize::MAX,
    max_id_bytes: 256,
};

fn round_trip(ev: &Event, via: &str, input: &[u8]) {
    let mut js = Vec::new();
    json::encode_event(ev, &mut js);
    match codec::decode(&js, &REDECODE) {
        Ok(back) => assert_eq!(
            &back,
            ev,
            "JSON round trip changed the event ({via}); input {:?}, re-encoded {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&js)
        ),
        Err(r) => panic!(
            "JSON re-encoding of an accepted event is rejected ({via}): {r}; event {ev:?}; input {:?}; re-encoded {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&js)
        ),
    }

    let pb = proto::encode_event(ev);
    match codec::decode(&pb, &REDECODE) {
        Ok(back) => assert_eq!(
            &back, ev,
            "protobuf round trip changed the event ({via}); input {input:?}, re-encoded {pb:?}"
        ),
        Err(r) => panic!(
            "protobuf re-encoding of an accepted event is rejected ({via}): {r}; event {ev:?}; input {input:?}; re-encoded {pb:?}"
        ),
    }

    // The same two forms inside the Confluent Schema Registry frame.
    for (framed, what) in [
        (proto::frame_confluent(7, true, &pb), "framed protobuf"),
        (proto::frame_confluent(7, false, &js), "framed JSON"),
    ] {
        match codec::decode(&framed, &REDECODE) {
            Ok(back) => assert_eq!(&back, ev, "{what} round trip changed the event ({via})"),
            Err(r) => panic!("{what} re-encoding of an accepted event is rejected ({via}): {r}; event {ev:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let auto = codec::decode(data, &LIMITS);
    if let Ok(ev) = &auto {
        round_trip(ev, "codec::decode", data);
    }
    let js = json::decode_json(data, &LIMITS);
    if let Ok(ev) = &js {
        round_trip(ev, "json::decode_json", data);
    }
    // Rejections are sentences (the dead-letter contract); building the Display must not panic.
    for r in [auto.err(), js.err()].into_iter().flatten() {
        let _ = r.to_string();
    }
});
