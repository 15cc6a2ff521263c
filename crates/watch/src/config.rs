//! How the hub catches slow watchers up.

use std::time::Duration;

use crate::HubError;

/// Settings of a [`Hub`](crate::Hub).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Events read from history per unsynced watcher per read (whole revisions are kept, so a
    /// read may return a little more). Also bounds the size of one catch-up delivery.
    pub catch_up_batch: usize,
    /// How often the catch-up task looks at unsynced watchers when nothing woke it; this is
    /// how soon a watcher whose queue was full notices that its reader made room.
    pub catch_up_interval: Duration,
    /// Bytes of events (keys and values, previous ones too) that may wait for one watcher's
    /// reader, in its queue and in the responses made from it; past that its deliveries
    /// wait in history and it catches up. A catch-up read stops at a revision boundary past
    /// it; a single revision larger than it still goes, alone.
    pub max_queued_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            catch_up_batch: 1000,
            catch_up_interval: Duration::from_millis(50),
            max_queued_bytes: 16 << 20,
        }
    }
}

impl HubConfig {
    /// Checks that every field is usable.
    ///
    /// # Errors
    /// [`HubError::Config`] naming the first bad field.
    pub fn validate(&self) -> Result<(), HubError> {
        if self.catch_up_batch == 0 {
            return Err(HubError::Config {
                field: "catch_up_batch",
                problem: "must be at least 1",
            });
        }
        if self.max_queued_bytes == 0 {
            return Err(HubError::Config {
                field: "max_queued_bytes",
                problem: "must be at least 1",
            });
        }
        if self.catch_up_interval.is_zero() {
            return Err(HubError::Config {
                field: "catch_up_interval",
                problem: "must be more than zero",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_zeroes_are_not() {
        assert_eq!(HubConfig::default().validate(), Ok(()));
        let zero_batch = HubConfig {
            catch_up_batch: 0,
            ..HubConfig::default()
        };
        assert!(matches!(
            zero_batch.validate(),
            Err(HubError::Config {
                field: "catch_up_batch",
                ..
            })
        ));
        let zero_interval = HubConfig {
            catch_up_interval: Duration::ZERO,
            ..HubConfig::default()
        };
        assert!(matches!(
            zero_interval.validate(),
            Err(HubError::Config {
                field: "catch_up_interval",
                ..
            })
        ));
    }
}
