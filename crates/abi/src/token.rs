//! Tokens name one asynchronous fault: `(id << 12) | vcpu_id`.

/// Bits of a token that carry the vCPU id.
pub const TOKEN_VCPU_BITS: u32 = 12;
/// Largest vCPU id a token can carry.
pub const TOKEN_MAX_VCPU: u32 = (1 << TOKEN_VCPU_BITS) - 1;
/// The broadcast token: wake every sleeper of this vCPU.
pub const TOKEN_WAKE_ALL: u32 = 0xFFFF_FFFF;

/// A token as the guest sees it. Never 0 (the "free" value) for a real fault,
/// and [`Token::WAKE_ALL`] only for a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u32);

impl Token {
    /// The broadcast token.
    pub const WAKE_ALL: Token = Token(TOKEN_WAKE_ALL);

    /// Composes `(id << 12) | vcpu`. Returns `None` when the result would be one of
    /// the two reserved values (0 or `~0`) or the vCPU id does not fit in 12 bits;
    /// the id is taken modulo 2^20.
    pub const fn compose(id: u32, vcpu: u32) -> Option<Token> {
        if vcpu > TOKEN_MAX_VCPU {
            return None;
        }
        let raw = (id << TOKEN_VCPU_BITS) | vcpu;
        if raw == 0 || raw == TOKEN_WAKE_ALL {
            None
        } else {
            Some(Token(raw))
        }
    }

    /// The vCPU id carried in the low 12 bits.
    pub const fn vcpu(self) -> u32 {
        self.0 & TOKEN_MAX_VCPU
    }

    /// The per-vCPU sequence number carried in the high 20 bits.
    pub const fn id(self) -> u32 {
        self.0 >> TOKEN_VCPU_BITS
    }

    /// Whether this is the broadcast token.
    pub const fn is_wake_all(self) -> bool {
        self.0 == TOKEN_WAKE_ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_values_are_never_composed() {
        assert_eq!(Token::compose(0, 0), None);
        assert_eq!(Token::compose(1 << 20, 0), None, "id wraps to 0 for vCPU 0");
        assert_eq!(Token::compose(0xF_FFFF, TOKEN_MAX_VCPU), None);
        assert_eq!(Token::compose(1, TOKEN_MAX_VCPU + 1), None);
        let t = Token::compose(5, 3).unwrap();
        assert_eq!((t.id(), t.vcpu(), t.0), (5, 3, 0x5003));
    }
}
