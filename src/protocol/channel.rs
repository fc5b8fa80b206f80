//! Channel names: validation and the channel type read from the prefix.

/// The channel type, from its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No auth.
    Public,
    /// `private-`: signed `socket_id:channel`.
    Private,
    /// `private-encrypted-`: like private; payloads are end-to-end encrypted by clients.
    Encrypted,
    /// `presence-`: signed with `channel_data`, members tracked.
    Presence,
    /// `#server-to-user-<id>`: only for the connection signed in as `<id>`.
    ServerToUser,
}

/// What a channel name says about the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelType {
    /// Auth and membership rules.
    pub kind: ChannelKind,
    /// A cache channel keeps its last HTTP-triggered event.
    pub cache: bool,
}

impl ChannelType {
    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        matches!(
            self.kind,
            ChannelKind::Private | ChannelKind::Encrypted | ChannelKind::Presence
        )
    }

    /// Whether clients may send `client-` events on it.
    pub fn allows_client_events(self) -> bool {
        self.needs_auth()
    }
}

/// Prefix of the per-user channel.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("channel name must not be empty")]
    Empty,
    /// Longer than the configured limit.
    #[error("channel name is longer than {0} characters")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_-=@,.;]`.
    #[error("channel name contains a character outside [A-Za-z0-9_\\-=@,.;]")]
    BadChar,
    /// `#` names are reserved.
    #[error("channel names starting with # are reserved")]
    Reserved,
}

/// Whether `b` may appear in a channel name or user id.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// Validates a channel name and classifies it.
pub fn classify(name: &str, max_len: usize) -> Result<ChannelType, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong(max_len));
    }
    if let Some(user) = name.strip_prefix(SERVER_TO_USER_PREFIX) {
        if user.is_empty() || !user.bytes().all(is_name_byte) {
            return Err(NameError::BadChar);
        }
        return Ok(ChannelType {
            kind: ChannelKind::ServerToUser,
            cache: false,
        });
    }
    if name.starts_with('#') {
        return Err(NameError::Reserved);
    }
    if !name.bytes().all(is_name_byte) {
        return Err(NameError::BadChar);
    }
    Ok(type_of(name))
}

/// The type of an already-valid name.
pub fn type_of(name: &str) -> ChannelType {
    let (kind, rest) = if let Some(r) = name.strip_prefix("private-encrypted-") {
        (ChannelKind::Encrypted, r)
    } else if let Some(r) = name.strip_prefix("private-") {
        (ChannelKind::Private, r)
    } else if let Some(r) = name.strip_prefix("presence-") {
        (ChannelKind::Presence, r)
    } else if name.starts_with(SERVER_TO_USER_PREFIX) {
        (ChannelKind::ServerToUser, "")
    } else {
        (ChannelKind::Public, name)
    };
    ChannelType {
        kind,
        cache: rest.starts_with("cache-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases = [
            ("my-channel", ChannelKind::Public, false),
            ("cache-x", ChannelKind::Public, true),
            ("private-chat.51", ChannelKind::Private, false),
            ("private-cache-x", ChannelKind::Private, true),
            ("private-encrypted-x", ChannelKind::Encrypted, false),
            ("private-encrypted-cache-x", ChannelKind::Encrypted, true),
            ("presence-room", ChannelKind::Presence, false),
            ("presence-cache-room", ChannelKind::Presence, true),
            ("#server-to-user-42", ChannelKind::ServerToUser, false),
        ];
        for (name, kind, cache) in cases {
            assert_eq!(
                classify(name, 200),
                Ok(ChannelType { kind, cache }),
                "{name}"
            );
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(classify("", 200), Err(NameError::Empty));
        assert_eq!(classify("a b", 200), Err(NameError::BadChar));
        assert_eq!(classify("a$", 200), Err(NameError::BadChar));
        assert_eq!(classify("#other", 200), Err(NameError::Reserved));
        assert_eq!(
            classify(&"a".repeat(201), 200),
            Err(NameError::TooLong(200))
        );
        assert!(classify(&"a".repeat(200), 200).is_ok());
    }
}
