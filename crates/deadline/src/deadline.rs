use std::time::Duration;

use tokio::time::Instant;

use crate::ParseTimeoutError;

/// The gRPC spec caps `grpc-timeout` values at 8 digits.
const MAX_GRPC_DIGITS: usize = 8;
const MAX_GRPC_VALUE: u64 = 99_999_999;

/// The point in time by which a caller wants an answer, or none for "no deadline".
///
/// Built on tokio's clock so that tests under `tokio::time::pause()` are deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: waits are bounded only by the layer budgets they pass through.
    pub const fn none() -> Self {
        Self(None)
    }

    /// A deadline `timeout` from now; one too far away to represent counts as none.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now().checked_add(timeout))
    }

    /// A deadline at a given instant.
    pub const fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// The deadline carried by a `grpc-timeout` header value (e.g. `"250m"`), measured from now.
    ///
    /// Accepts 1 to 8 ASCII digits and one unit: `H`, `M`, `S`, `m`, `u`, `n`. The spec says
    /// "positive integer" but grpc-go and others send and accept `0n`, so zero is taken and
    /// yields an already expired deadline.
    pub fn from_grpc_timeout(value: &str) -> Result<Self, ParseTimeoutError> {
        parse_grpc_timeout(value).map(Self::after)
    }

    /// The instant of the deadline, or `None` when there is none.
    pub const fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Time left: `None` when unbounded, `Some(ZERO)` once expired.
    pub fn remaining(self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed; never true for [`Deadline::none`].
    pub fn is_expired(self) -> bool {
        self.0.is_some_and(|at| at <= Instant::now())
    }

    /// The earlier of two deadlines; none is later than every instant.
    #[must_use]
    pub fn earliest(self, other: Self) -> Self {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Self(Some(a.min(b))),
            (a, b) => Self(a.or(b)),
        }
    }

    /// The remaining time as a `grpc-timeout` header value, to pass the deadline on to a peer.
    ///
    /// `None` when there is no deadline (send no header). Picks the finest unit that fits in 8
    /// digits and rounds up, as grpc-go does, so the peer never gets less time than we have.
    pub fn to_grpc_timeout(self) -> Option<String> {
        self.remaining().map(encode_grpc_timeout)
    }
}

fn parse_grpc_timeout(value: &str) -> Result<Duration, ParseTimeoutError> {
    let mut chars = value.chars();
    let unit = chars.next_back().ok_or(ParseTimeoutError::Empty)?;
    let digits = chars.as_str();
    if unit.is_ascii_digit() {
        return Err(ParseTimeoutError::MissingUnit {
            value: value.to_owned(),
        });
    }
    let from_n: fn(u64) -> Duration = match unit {
        // At most 8 digits, so these multiplications never overflow.
        'H' => |n| Duration::from_secs(n * 3600),
        'M' => |n| Duration::from_secs(n * 60),
        'S' => Duration::from_secs,
        'm' => Duration::from_millis,
        'u' => Duration::from_micros,
        'n' => Duration::from_nanos,
        _ => {
            return Err(ParseTimeoutError::UnknownUnit {
                value: value.to_owned(),
                unit,
            })
        }
    };
    let bad_digits = || ParseTimeoutError::BadDigits {
        value: value.to_owned(),
    };
    if digits.is_empty()
        || digits.len() > MAX_GRPC_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad_digits());
    }
    digits.parse().map(from_n).map_err(|_| bad_digits())
}

fn encode_grpc_timeout(timeout: Duration) -> String {
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let nanos = timeout.as_nanos();
    for (unit_nanos, unit) in UNITS {
        let n = nanos.div_ceil(unit_nanos);
        if n <= u128::from(MAX_GRPC_VALUE) {
            return format!("{n}{unit}");
        }
    }
    // Over 11,000 years: the largest value the header can carry.
    format!("{MAX_GRPC_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
            ("0n", Duration::ZERO),
            ("00000005S", Duration::from_secs(5)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (value, want) in cases {
            assert_eq!(parse_grpc_timeout(value), Ok(want), "{value}");
        }
    }

    #[test]
    fn rejects_malformed_values() {
        use ParseTimeoutError::*;
        let bad_digits = |v: &str| BadDigits { value: v.into() };
        let cases = [
            ("", Empty),
            ("5", MissingUnit { value: "5".into() }),
            (
                "123456789",
                MissingUnit {
                    value: "123456789".into(),
                },
            ),
            ("S", bad_digits("S")),
            ("123456789S", bad_digits("123456789S")),
            ("-1S", bad_digits("-1S")),
            ("+1S", bad_digits("+1S")),
            (" 1S", bad_digits(" 1S")),
            ("1.5S", bad_digits("1.5S")),
            ("١S", bad_digits("١S")),
            (
                "1s",
                UnknownUnit {
                    value: "1s".into(),
                    unit: 's',
                },
            ),
            (
                "1h",
                UnknownUnit {
                    value: "1h".into(),
                    unit: 'h',
                },
            ),
            (
                "1S ",
                UnknownUnit {
                    value: "1S ".into(),
                    unit: ' ',
                },
            ),
            (
                "1é",
                UnknownUnit {
                    value: "1é".into(),
                    unit: 'é',
                },
            ),
        ];
        for (value, want) in cases {
            assert_eq!(parse_grpc_timeout(value), Err(want), "{value:?}");
        }
    }

    #[test]
    fn encodes_with_finest_fitting_unit_rounding_up() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_secs(7), "7000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_nanos(7_000_000_001), "7000001u"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666667M"),
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (timeout, want) in cases {
            assert_eq!(encode_grpc_timeout(timeout), want, "{timeout:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn from_grpc_timeout_is_measured_from_now() {
        let start = Instant::now();
        let d = Deadline::from_grpc_timeout("1500m").unwrap();
        assert_eq!(d.instant(), Some(start + Duration::from_millis(1500)));
        assert_eq!(d.to_grpc_timeout().as_deref(), Some("1500000u"));
        assert!(Deadline::from_grpc_timeout("0n").unwrap().is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_and_expiry_follow_the_clock() {
        let d = Deadline::after(Duration::from_secs(2));
        assert_eq!(d.remaining(), Some(Duration::from_secs(2)));
        assert!(!d.is_expired());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(d.remaining(), Some(Duration::ZERO));
        assert!(d.is_expired());
        assert_eq!(d.to_grpc_timeout().as_deref(), Some("0n"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.remaining(), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn none_is_unbounded() {
        let d = Deadline::none();
        assert_eq!(d, Deadline::default());
        assert_eq!(d.remaining(), None);
        assert_eq!(d.instant(), None);
        assert!(!d.is_expired());
        assert_eq!(d.to_grpc_timeout(), None);
        assert_eq!(Deadline::after(Duration::MAX), Deadline::none());
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_prefers_the_sooner_and_treats_none_as_latest() {
        let now = Instant::now();
        let soon = Deadline::at(now + Duration::from_secs(1));
        let late = Deadline::at(now + Duration::from_secs(5));
        assert_eq!(soon.earliest(late), soon);
        assert_eq!(late.earliest(soon), soon);
        assert_eq!(late.earliest(Deadline::none()), late);
        assert_eq!(Deadline::none().earliest(late), late);
        assert_eq!(
            Deadline::none().earliest(Deadline::none()),
            Deadline::none()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(value in any::<String>()) {
            let _ = parse_grpc_timeout(&value);
        }

        #[test]
        fn near_miss_strings_never_panic(value in "[0-9+\\- ]{0,12}[HMSmunxh0-9 ]?") {
            let _ = parse_grpc_timeout(&value);
        }

        #[test]
        fn valid_values_parse_exactly(n in 0u64..=MAX_GRPC_VALUE, unit_index in 0usize..6) {
            let (unit, nanos_per_unit) = [
                ('H', 3_600_000_000_000u128),
                ('M', 60_000_000_000),
                ('S', 1_000_000_000),
                ('m', 1_000_000),
                ('u', 1_000),
                ('n', 1),
            ][unit_index];
            let parsed = parse_grpc_timeout(&format!("{n}{unit}")).unwrap();
            prop_assert_eq!(parsed.as_nanos(), u128::from(n) * nanos_per_unit);
        }

        #[test]
        fn encoding_round_trips_without_losing_time(nanos in any::<u64>()) {
            let timeout = Duration::from_nanos(nanos);
            let encoded = encode_grpc_timeout(timeout);
            let decoded = parse_grpc_timeout(&encoded).unwrap();
            prop_assert!(decoded >= timeout, "{encoded} decoded to {decoded:?} < {timeout:?}");
            // A unit is at most 1000x the one below, which did not fit in 8 digits, so rounding
            // up adds less than one part in 10^5.
            prop_assert!(decoded - timeout <= timeout / 99_999);
        }
    }
}
