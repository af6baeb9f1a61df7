//! Stable error codes (in `error` and `reject` frames) and WebSocket close codes.
//!
//! Codes are part of the protocol: never renumber or rename one, only add.

use std::fmt;

/// A stable, machine-readable error code, sent as its snake_case string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not a valid message (not MessagePack, not a map, unknown `t`, bad fields).
    BadFrame,
    /// The first frame was not `hello`, or `hello` came twice.
    HandshakeRequired,
    /// `hello.v` is a version this node does not speak.
    UnsupportedVersion,
    /// The message needs a joined room.
    NotJoined,
    /// The connection already joined a room (one room per connection in v1).
    AlreadyJoined,
    /// Room id or room type is malformed or unknown, or differs from the existing room's type.
    BadRoom,
    /// The room has as many players as it may hold.
    RoomFull,
    /// The node holds as many rooms as it may.
    TooManyRooms,
    /// The session token is unknown or its grace has expired; join afresh.
    SessionExpired,
    /// The op writes a path this player may not write, or the join token does not allow
    /// the room (then close 4003).
    Forbidden,
    /// The path is malformed, too deep, has too long a key, or crosses a non-map value.
    BadPath,
    /// The value is not allowed there (wrong type, out of range, refused by the room type).
    BadValue,
    /// The cid is not above this player's last cid and was never applied.
    StaleCid,
    /// More ops in one batch than allowed.
    TooManyOps,
    /// The change would make the room state larger than allowed.
    StateTooLarge,
    /// The ephemeral message's recipient is not in the room.
    UnknownPlayer,
    /// The message exceeds the rate limit; retry later.
    RateLimited,
    /// The room or node cannot take changes right now; retry (same cid) later.
    Unavailable,
    /// A bug on the server.
    Internal,
    /// The join token is missing, malformed, not signed by a known key, or names an invalid
    /// player id (then close 4003).
    Unauthorized,
    /// The join token has expired; get a new one (then close 4003).
    TokenExpired,
    /// The node is past its load limit and admits no new players; retry after `retry_ms`,
    /// preferably on another node.
    Overloaded,
    /// A resume whose `attempt` is not above the latest attempt the room saw for this
    /// session: a newer connection of the session is (or was) attached; this one is not.
    StaleResume,
}

impl ErrorCode {
    /// Every code, for docs and tests.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadFrame,
        ErrorCode::HandshakeRequired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::BadRoom,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::SessionExpired,
        ErrorCode::Forbidden,
        ErrorCode::BadPath,
        ErrorCode::BadValue,
        ErrorCode::StaleCid,
        ErrorCode::TooManyOps,
        ErrorCode::StateTooLarge,
        ErrorCode::UnknownPlayer,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Overloaded,
        ErrorCode::StaleResume,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::BadValue => "bad_value",
            ErrorCode::StaleCid => "stale_cid",
            ErrorCode::TooManyOps => "too_many_ops",
            ErrorCode::StateTooLarge => "state_too_large",
            ErrorCode::UnknownPlayer => "unknown_player",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::StaleResume => "stale_resume",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::Overloaded
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a WebSocket, with its close code.
///
/// Codes 4000-4099 mean "do not reconnect automatically"; 4100-4199 mean "reconnect and
/// resume". Among standard codes, 1001, 1011, 1012 and 1013 mean reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client left the room.
    Normal,
    /// 1009: a frame exceeded the maximum frame size.
    FrameTooLarge,
    /// 1011: an unexpected server error; reconnect.
    InternalError,
    /// 1012: the node is shutting down or draining; reconnect (after the hinted delay).
    ServiceRestart,
    /// 4000: a newer connection resumed this session.
    Replaced,
    /// 4001: the client broke the protocol (handshake, repeated bad frames).
    ProtocolError,
    /// 4002: the client's protocol version is not supported.
    UnsupportedVersion,
    /// 4003: authentication failed.
    Unauthorized,
    /// 4004: removed from the room by the server (admin kick).
    Kicked,
    /// 4005: the client kept exceeding its rate limits.
    RateLimited,
    /// 4006: the game backend closed the room (admin API); it is gone.
    RoomClosed,
    /// 4100: no `hello` + `join` within the handshake timeout.
    HandshakeTimeout,
    /// 4101: nothing received within the idle timeout.
    IdleTimeout,
    /// 4102: the client could not keep up with the room for too long.
    SlowConsumer,
    /// 4103: the room moved to another node (failover, handoff); reconnect and resume.
    RoomMoved,
}

impl CloseCode {
    /// Every close code, for docs and tests.
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Normal,
        CloseCode::FrameTooLarge,
        CloseCode::InternalError,
        CloseCode::ServiceRestart,
        CloseCode::Replaced,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedVersion,
        CloseCode::Unauthorized,
        CloseCode::Kicked,
        CloseCode::RateLimited,
        CloseCode::RoomClosed,
        CloseCode::HandshakeTimeout,
        CloseCode::IdleTimeout,
        CloseCode::SlowConsumer,
        CloseCode::RoomMoved,
    ];

    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::FrameTooLarge => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::Replaced => 4000,
            CloseCode::ProtocolError => 4001,
            CloseCode::UnsupportedVersion => 4002,
            CloseCode::Unauthorized => 4003,
            CloseCode::Kicked => 4004,
            CloseCode::RateLimited => 4005,
            CloseCode::RoomClosed => 4006,
            CloseCode::HandshakeTimeout => 4100,
            CloseCode::IdleTimeout => 4101,
            CloseCode::SlowConsumer => 4102,
            CloseCode::RoomMoved => 4103,
        }
    }

    /// The close reason's stable prefix (the reason may add `: detail`).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "left",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::InternalError => "internal_error",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::Replaced => "replaced",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Kicked => "kicked",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::RoomClosed => "room_closed",
            CloseCode::HandshakeTimeout => "handshake_timeout",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::RoomMoved => "room_moved",
        }
    }

    /// Looks up a numeric code.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect (and resume) after this close.
    pub fn should_reconnect(self) -> bool {
        should_reconnect(self.code())
    }
}

/// Whether a client should reconnect after a close with this numeric code, including codes
/// this build does not know (by range).
pub fn should_reconnect(code: u16) -> bool {
    matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 4100..=4199)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn close_codes_are_unique_and_classified_by_range() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            let expect = matches!(
                c,
                CloseCode::InternalError
                    | CloseCode::ServiceRestart
                    | CloseCode::HandshakeTimeout
                    | CloseCode::IdleTimeout
                    | CloseCode::SlowConsumer
                    | CloseCode::RoomMoved
            );
            assert_eq!(c.should_reconnect(), expect, "{c:?}");
        }
    }
}
