use std::fmt;
use std::time::Duration;

use crate::Layer;

/// A wait that ran out of time: the one error every layer reports the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline expired in layer {layer} after {:.3}s", .waited.as_secs_f64())]
#[non_exhaustive]
pub struct Expired {
    /// The layer whose wait expired.
    pub layer: Layer,
    /// How long the wait lasted before giving up (zero if the deadline had already passed).
    pub waited: Duration,
}

impl Expired {
    /// An expiry that happened elsewhere (another member's wait, reported back), for layers
    /// that pass it on; local waits get theirs from [`within`](crate::within).
    pub fn reported(layer: Layer, waited: Duration) -> Self {
        Self { layer, waited }
    }
}

/// A `grpc-timeout` header value that does not follow the gRPC HTTP/2 spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseTimeoutError {
    /// The header value is empty.
    #[error("grpc-timeout is empty: expected 1 to 8 digits and a unit (H, M, S, m, u, n)")]
    Empty,
    /// The value ends in a digit, so the unit is missing.
    #[error(
        "grpc-timeout {value:?} has no unit: expected one of H, M, S, m, u, n after the digits"
    )]
    MissingUnit {
        /// The header value as received.
        value: String,
    },
    /// The last character is not one of the six gRPC units.
    #[error("grpc-timeout {value:?} has unknown unit {unit:?}: expected one of H, M, S, m, u, n")]
    UnknownUnit {
        /// The header value as received.
        value: String,
        /// The character found where the unit belongs.
        unit: char,
    },
    /// The part before the unit is not 1 to 8 ASCII digits.
    #[error("grpc-timeout {value:?} must have 1 to 8 ASCII digits before the unit")]
    BadDigits {
        /// The header value as received.
        value: String,
    },
}

/// The name of a layer that [`Layer`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown layer {name:?}: expected one of api, propose, commit, read-index, apply, watch-send, peer-rpc")]
#[non_exhaustive]
pub struct ParseLayerError {
    /// The name as given.
    pub name: String,
}

/// A budget configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// A layer with a zero budget would fail every request before it starts.
    #[error("budget for layer {layer} is zero: every wait in it would expire at once")]
    Zero {
        /// The layer configured with zero.
        layer: Layer,
    },
    /// An override names a layer that does not exist.
    #[error(transparent)]
    UnknownLayer(#[from] ParseLayerError),
    /// An override entry is not of the form `layer=duration`.
    #[error("budget override {entry:?} is not of the form layer=duration (e.g. commit=2s)")]
    MissingEquals {
        /// The offending entry.
        entry: String,
    },
    /// An override's duration is not an integer followed by ms, s, m or h.
    #[error("budget override for layer {layer} has invalid duration {value:?}: expected an integer followed by ms, s, m or h (e.g. 500ms)")]
    InvalidDuration {
        /// The layer being overridden.
        layer: Layer,
        /// The duration text as given.
        value: String,
    },
    /// The same layer appears twice in one override string, which is almost surely a typo.
    #[error("budget for layer {layer} is overridden more than once")]
    Duplicate {
        /// The repeated layer.
        layer: Layer,
    },
}

/// A bounded [`send`](crate::send) that did not deliver; the value is handed back either way.
#[derive(thiserror::Error)]
pub enum SendError<T> {
    /// The channel stayed full until the deadline.
    #[error("send on full channel: {expired}")]
    Expired {
        /// The value that was not sent.
        value: T,
        /// Which layer expired and after how long.
        expired: Expired,
    },
    /// The receiver is gone, so the value can never be delivered.
    #[error("send in layer {layer} failed: the receiver is closed")]
    Closed {
        /// The value that was not sent.
        value: T,
        /// The layer that tried to send.
        layer: Layer,
    },
}

impl<T> SendError<T> {
    /// Takes back the value that was not sent, so the caller can retry or fail it explicitly.
    pub fn into_inner(self) -> T {
        match self {
            Self::Expired { value, .. } | Self::Closed { value, .. } => value,
        }
    }
}

// Hand-written so `SendError<T>` is an error (and works with `?`) even when `T` is not `Debug`,
// like tokio's own `SendError`.
impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired { expired, .. } => f
                .debug_struct("Expired")
                .field("expired", expired)
                .finish_non_exhaustive(),
            Self::Closed { layer, .. } => f
                .debug_struct("Closed")
                .field("layer", layer)
                .finish_non_exhaustive(),
        }
    }
}

/// Why [`Pending::wait`](crate::Pending::wait) returned without a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// Nobody completed the operation before the deadline.
    #[error(transparent)]
    Expired(#[from] Expired),
    /// The completer dropped the operation (e.g. `fail_all` on leader change or shutdown).
    #[error("pending operation {id} in registry {registry} was abandoned without a result")]
    Abandoned {
        /// The registry's name.
        registry: &'static str,
        /// The operation's id.
        id: u64,
    },
}

/// Why [`Registry::register_with`](crate::Registry::register_with) refused an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Someone already waits on this id; two waiters for one result would lose one of them.
    #[error("id {id} is already pending in registry {registry}")]
    Duplicate {
        /// The registry's name.
        registry: &'static str,
        /// The id already in use.
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn expired_display() {
        let e = Expired {
            layer: Layer::Commit,
            waited: secs(2),
        };
        assert_eq!(
            e.to_string(),
            "deadline expired in layer commit after 2.000s"
        );
        let e = Expired {
            layer: Layer::PeerRpc,
            waited: Duration::from_micros(1500),
        };
        assert_eq!(
            e.to_string(),
            "deadline expired in layer peer-rpc after 0.002s"
        );
    }

    #[test]
    fn parse_timeout_error_display() {
        assert_eq!(
            ParseTimeoutError::Empty.to_string(),
            "grpc-timeout is empty: expected 1 to 8 digits and a unit (H, M, S, m, u, n)"
        );
        let e = ParseTimeoutError::MissingUnit { value: "12".into() };
        assert_eq!(
            e.to_string(),
            "grpc-timeout \"12\" has no unit: expected one of H, M, S, m, u, n after the digits"
        );
        let e = ParseTimeoutError::UnknownUnit {
            value: "1x".into(),
            unit: 'x',
        };
        assert_eq!(
            e.to_string(),
            "grpc-timeout \"1x\" has unknown unit 'x': expected one of H, M, S, m, u, n"
        );
        let e = ParseTimeoutError::BadDigits {
            value: "123456789S".into(),
        };
        assert_eq!(
            e.to_string(),
            "grpc-timeout \"123456789S\" must have 1 to 8 ASCII digits before the unit"
        );
    }

    #[test]
    fn parse_layer_error_display() {
        let e = ParseLayerError {
            name: "comit".into(),
        };
        assert_eq!(
            e.to_string(),
            "unknown layer \"comit\": expected one of api, propose, commit, read-index, apply, \
             watch-send, peer-rpc"
        );
    }

    #[test]
    fn budget_error_display() {
        assert_eq!(
            BudgetError::Zero {
                layer: Layer::Apply
            }
            .to_string(),
            "budget for layer apply is zero: every wait in it would expire at once"
        );
        let unknown = ParseLayerError { name: "x".into() };
        assert_eq!(
            BudgetError::from(unknown.clone()).to_string(),
            unknown.to_string()
        );
        assert_eq!(
            BudgetError::MissingEquals {
                entry: "commit".into()
            }
            .to_string(),
            "budget override \"commit\" is not of the form layer=duration (e.g. commit=2s)"
        );
        assert_eq!(
            BudgetError::InvalidDuration {
                layer: Layer::Commit,
                value: "2 s".into()
            }
            .to_string(),
            "budget override for layer commit has invalid duration \"2 s\": expected an integer \
             followed by ms, s, m or h (e.g. 500ms)"
        );
        assert_eq!(
            BudgetError::Duplicate { layer: Layer::Api }.to_string(),
            "budget for layer api is overridden more than once"
        );
    }

    #[test]
    fn send_error_display_and_value() {
        let e = SendError::Expired {
            value: 7,
            expired: Expired {
                layer: Layer::WatchSend,
                waited: secs(10),
            },
        };
        assert_eq!(
            e.to_string(),
            "send on full channel: deadline expired in layer watch-send after 10.000s"
        );
        assert_eq!(e.into_inner(), 7);
        let e = SendError::Closed {
            value: 8,
            layer: Layer::Propose,
        };
        assert_eq!(
            e.to_string(),
            "send in layer propose failed: the receiver is closed"
        );
        assert_eq!(format!("{e:?}"), "Closed { layer: Propose, .. }");
        assert_eq!(e.into_inner(), 8);
    }

    #[test]
    fn wait_error_display() {
        let expired = Expired {
            layer: Layer::Apply,
            waited: secs(7),
        };
        assert_eq!(WaitError::from(expired).to_string(), expired.to_string());
        assert_eq!(
            WaitError::Abandoned {
                registry: "proposals",
                id: 42
            }
            .to_string(),
            "pending operation 42 in registry proposals was abandoned without a result"
        );
    }

    #[test]
    fn register_error_display() {
        assert_eq!(
            RegisterError::Duplicate {
                registry: "reads",
                id: 9
            }
            .to_string(),
            "id 9 is already pending in registry reads"
        );
    }
}
