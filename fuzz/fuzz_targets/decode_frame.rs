//! Fuzzes the frame decoder with arbitrary bytes: decoding never panics, a frame that
//! decodes re-encodes to a frame that decodes to the same message, and a decoded value's
//! canonical hash is computable.
#![no_main]

use gamerelay::protocol::{decode_client, decode_server, encode, ClientMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_client(data) {
        let again = decode_client(&encode(&msg)).expect("a decoded client message re-encodes validly");
        assert_eq!(again, msg);
        match &msg {
            ClientMsg::Ops { ops, .. } => {
                for op in ops {
                    if let gamerelay::protocol::Op::Set { value, .. } = op {
                        let _ = value.state_hash();
                    }
                }
            }
            ClientMsg::Msg { data, .. } => {
                let _ = data.state_hash();
            }
            _ => {}
        }
    }
    if let Ok(msg) = decode_server(data) {
        let again = decode_server(&encode(&msg)).expect("a decoded server message re-encodes validly");
        assert_eq!(again, msg);
    }
});
