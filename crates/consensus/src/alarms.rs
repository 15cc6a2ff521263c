//! etcd's alarms (NOSPACE, CORRUPT, per member): replicated through the log, kept with the
//! applied position so that a restart and a snapshot carry them, and published here for the
//! request path to consult without a lock held across anything.

use std::collections::BTreeSet;
use std::sync::RwLock;

use mvcc::{alarm_kind, AlarmAction, AlarmMember, AlarmRequest};

/// The raised alarms, as the state machine last applied them.
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    active: RwLock<Vec<AlarmMember>>,
}

impl Alarms {
    /// Every raised alarm, ordered by member then kind.
    pub(crate) fn list(&self) -> Vec<AlarmMember> {
        self.active.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Whether any member raised an alarm of `kind`.
    pub(crate) fn any(&self, kind: i32) -> bool {
        self.active
            .read()
            .map(|a| a.iter().any(|m| m.alarm == kind))
            .unwrap_or(false)
    }

    /// Makes `set` the published alarms.
    pub(crate) fn publish(&self, set: &BTreeSet<AlarmMember>) {
        if let Ok(mut a) = self.active.write() {
            *a = set.iter().copied().collect();
        }
    }
}

/// Applies `req` to `set` with etcd 3.4's answers: GET lists the alarms of its kind (every kind
/// for `NONE`); ACTIVATE answers the alarm, raised now or already; DEACTIVATE answers the alarm
/// it cleared, or nothing when there was none.
pub(crate) fn apply(set: &mut BTreeSet<AlarmMember>, req: &AlarmRequest) -> Vec<AlarmMember> {
    let member = AlarmMember {
        member_id: req.member_id,
        alarm: req.alarm,
    };
    match req.action {
        AlarmAction::Get => set
            .iter()
            .filter(|m| req.alarm == alarm_kind::NONE || m.alarm == req.alarm)
            .copied()
            .collect(),
        AlarmAction::Activate => {
            set.insert(member);
            vec![member]
        }
        AlarmAction::Deactivate => {
            if set.remove(&member) {
                vec![member]
            } else {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: AlarmAction, member_id: u64, alarm: i32) -> AlarmRequest {
        AlarmRequest {
            action,
            member_id,
            alarm,
        }
    }

    #[test]
    fn answers_as_etcd() {
        let mut set = BTreeSet::new();
        let nospace = AlarmMember {
            member_id: 7,
            alarm: alarm_kind::NOSPACE,
        };
        let corrupt = AlarmMember {
            member_id: 3,
            alarm: alarm_kind::CORRUPT,
        };
        assert_eq!(apply(&mut set, &req(AlarmAction::Get, 0, 0)), vec![]);
        assert_eq!(
            apply(&mut set, &req(AlarmAction::Activate, 7, 1)),
            vec![nospace]
        );
        // Raising it again answers the same alarm and adds nothing.
        assert_eq!(
            apply(&mut set, &req(AlarmAction::Activate, 7, 1)),
            vec![nospace]
        );
        apply(&mut set, &req(AlarmAction::Activate, 3, 2));
        assert_eq!(
            apply(&mut set, &req(AlarmAction::Get, 0, 0)),
            vec![corrupt, nospace]
        );
        assert_eq!(
            apply(&mut set, &req(AlarmAction::Get, 0, alarm_kind::NOSPACE)),
            vec![nospace]
        );
        // Another member's or another kind's alarm is not cleared.
        assert_eq!(apply(&mut set, &req(AlarmAction::Deactivate, 3, 1)), vec![]);
        assert_eq!(
            apply(&mut set, &req(AlarmAction::Deactivate, 7, 1)),
            vec![nospace]
        );
        assert_eq!(apply(&mut set, &req(AlarmAction::Get, 0, 0)), vec![corrupt]);
    }
}
