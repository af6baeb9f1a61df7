//! Protocol v1: the messages, their MessagePack encoding, error and close codes, and the
//! state value type with its canonical hash. Pure data: no I/O, no async.
//!
//! Shared by the server, the Rust client and the load generator, so all three always
//! speak the same protocol. `docs/PROTOCOL.md` is the normative description.

pub mod codec;
pub mod codes;
pub mod doc;
pub mod messages;
pub mod path;

pub use codec::{batch_frame, decode_client, decode_server, encode, DecodeError};
pub use codes::{should_reconnect, CloseCode, ErrorCode};
pub use doc::{Doc, DocError, DocMap};
pub use messages::{
    ClientMsg, Delta, Join, MemberInfo, Op, PresenceStatus, RoomListing, ServerMsg, Snapshot,
    PROTOCOL_VERSION,
};
pub use path::{apply_resolved, Path, PathError};
