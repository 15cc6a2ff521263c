//! etcd's auth state (enabled flag, users, roles, permissions, revision): replicated through the
//! log and kept with the applied position, so that a restart and a snapshot carry it; published
//! here with each member's simple tokens for the request path to check against.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mvcc::{AuthError, AuthRequest, AuthResponse, Permission};
use serde::{Deserialize, Serialize};

/// The user every auth management request needs, and the role that makes a user it.
pub const ROOT: &str = "root";

/// A user as the auth state keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash of the password; `None` for a user without password (who cannot
    /// authenticate with one).
    pub hash: Option<String>,
    /// Its roles.
    pub roles: BTreeSet<String>,
}

/// The replicated auth state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Bumped by every change.
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name, with their permissions in etcd's order (by key).
    pub roles: BTreeMap<String, Vec<Permission>>,
}

/// What a request needs on a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Range or watch.
    Read,
    /// Put or delete.
    Write,
}

/// What applying an auth request does to the member's tokens, after it is durable.
#[derive(Debug)]
pub(crate) enum TokenChange {
    /// Record a token for a user.
    Assign(String, String),
    /// Forget a user's tokens.
    ForgetUser(String),
    /// Forget every token.
    ForgetAll,
}

impl AuthState {
    /// Whether `user` exists and has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// etcd's check of an auth management request by `user` (`None`: no token).
    ///
    /// # Errors
    /// [`AuthError::UserEmpty`], [`AuthError::UserNotFound`] or
    /// [`AuthError::PermissionDenied`].
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let found = self.users.get(user).ok_or(AuthError::UserNotFound)?;
        if found.roles.contains(ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's check of `access` to `[key, range_end)` (etcd's conventions: an empty end is the
    /// key alone, `[0]` every key from `key` on) by `user` (`None`: no token).
    ///
    /// # Errors
    /// [`AuthError::UserEmpty`] or [`AuthError::PermissionDenied`].
    pub fn check_range(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let found = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if found.roles.contains(ROOT) {
            return Ok(());
        }
        let granted: Vec<Interval> = found
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| match access {
                Access::Read => p.perm_type.reads(),
                Access::Write => p.perm_type.writes(),
            })
            .map(|p| Interval::of(&p.key, &p.range_end))
            .collect();
        if covers(granted, &Interval::of(key, range_end)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Applies `req` with etcd 3.4's answers; the token changes it implies are returned for
    /// the caller to make once the new state is durable.
    pub(crate) fn apply(
        &mut self,
        req: &AuthRequest,
        changes: &mut Vec<TokenChange>,
    ) -> Result<AuthResponse, AuthError> {
        let answer = self.apply_inner(req, changes)?;
        let read_only = matches!(
            req,
            AuthRequest::Authenticate { .. }
                | AuthRequest::UserGet { .. }
                | AuthRequest::UserList
                | AuthRequest::RoleGet { .. }
                | AuthRequest::RoleList
        );
        if !read_only {
            self.revision += 1;
        }
        Ok(answer)
    }

    /// Applies `req` as `AuthState::apply` does, for a log replayed offline (no member's
    /// tokens to change): etcd's migration from its WAL.
    ///
    /// # Errors
    /// etcd's answer for a refused request (the state is unchanged then).
    pub fn replay(&mut self, req: &AuthRequest) -> Result<AuthResponse, AuthError> {
        self.apply(req, &mut Vec::new())
    }

    fn apply_inner(
        &mut self,
        req: &AuthRequest,
        changes: &mut Vec<TokenChange>,
    ) -> Result<AuthResponse, AuthError> {
        use AuthRequest as R;
        match req {
            R::Enable => {
                if !self.enabled {
                    let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                    if !root.roles.contains(ROOT) {
                        return Err(AuthError::RootRoleNotExist);
                    }
                    self.enabled = true;
                }
                Ok(AuthResponse::Done)
            }
            R::Disable => {
                self.enabled = false;
                changes.push(TokenChange::ForgetAll);
                Ok(AuthResponse::Done)
            }
            R::Authenticate {
                name,
                token,
                revision,
            } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
                if user.hash.is_none() {
                    return Err(AuthError::AuthFailed);
                }
                if *revision != self.revision {
                    return Err(AuthError::AuthOldRevision);
                }
                changes.push(TokenChange::Assign(token.clone(), name.clone()));
                Ok(AuthResponse::Token(token.clone()))
            }
            R::UserAdd { name, hash } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        hash: hash.clone(),
                        roles: BTreeSet::new(),
                    },
                );
                Ok(AuthResponse::Done)
            }
            R::UserGet { name } => {
                let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
                Ok(AuthResponse::Names(user.roles.iter().cloned().collect()))
            }
            R::UserList => Ok(AuthResponse::Names(self.users.keys().cloned().collect())),
            R::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                changes.push(TokenChange::ForgetUser(name.clone()));
                Ok(AuthResponse::Done)
            }
            R::UserChangePassword { name, hash } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.hash = Some(hash.clone());
                changes.push(TokenChange::ForgetUser(name.clone()));
                Ok(AuthResponse::Done)
            }
            R::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                // etcd lets root be granted before the root role is created.
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                if let Some(u) = self.users.get_mut(user) {
                    u.roles.insert(role.clone());
                }
                Ok(AuthResponse::Done)
            }
            R::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !user.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
                Ok(AuthResponse::Done)
            }
            R::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Vec::new());
                Ok(AuthResponse::Done)
            }
            R::RoleGet { role } => {
                if role == ROOT {
                    // Root may do anything; etcd lists no permissions for it.
                    return Ok(AuthResponse::Perms(Vec::new()));
                }
                let perms = self.roles.get(role).ok_or(AuthError::RoleNotFound)?;
                Ok(AuthResponse::Perms(perms.clone()))
            }
            R::RoleList => Ok(AuthResponse::Names(self.roles.keys().cloned().collect())),
            R::RoleDelete { role } => {
                if self.enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(role).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(role);
                }
                Ok(AuthResponse::Done)
            }
            R::RoleGrantPermission { name, perm } => {
                let perms = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                match perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(same) => same.perm_type = perm.perm_type,
                    None => {
                        let at = perms.partition_point(|p| p.key <= perm.key);
                        perms.insert(at, perm.clone());
                    }
                }
                Ok(AuthResponse::Done)
            }
            R::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let perms = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| !(&p.key == key && &p.range_end == range_end));
                if perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                Ok(AuthResponse::Done)
            }
        }
    }
}

/// A key interval `[start, end)`; `end` `None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval etcd means by `key` and `range_end`.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }
}

/// Whether the union of `granted` holds all of `want`.
fn covers(mut granted: Vec<Interval>, want: &Interval) -> bool {
    granted.sort();
    // Walk the intervals in order, extending how far from `want.start` on is covered.
    let mut reach: Option<Option<Vec<u8>>> = None;
    for g in granted {
        match &reach {
            None => {
                if g.start.as_slice() <= want.start.as_slice() && ends_after(&g.end, &want.start) {
                    reach = Some(g.end);
                }
            }
            Some(Some(r)) => {
                if g.start.as_slice() <= r.as_slice() && end_le(&Some(r.clone()), &g.end) {
                    reach = Some(g.end);
                }
            }
            Some(None) => break,
        }
    }
    match reach {
        None => false,
        Some(r) => end_le(&want.end, &r),
    }
}

/// Whether an interval ending at `end` holds `key`.
fn ends_after(end: &Option<Vec<u8>>, key: &[u8]) -> bool {
    end.as_ref().is_none_or(|e| e.as_slice() > key)
}

/// `a <= b` for ends, unbounded being the largest.
fn end_le(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a <= b,
    }
}

/// A member's simple tokens: which user each names, until it goes unused for the TTL.
#[derive(Debug)]
pub struct Tokens {
    live: Mutex<HashMap<String, (String, Instant)>>,
    ttl_ms: AtomicU64,
}

/// etcd's `--auth-token-ttl` default.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            live: Mutex::default(),
            ttl_ms: AtomicU64::new(DEFAULT_TOKEN_TTL.as_millis() as u64),
        }
    }
}

impl Tokens {
    /// Sets how long a token lives unused (`--auth-token-ttl`).
    pub fn set_ttl(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms.store(ms, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The user `token` names, refreshing its TTL as etcd does on every use; `None` for an
    /// unknown or expired token.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut live = self.live.lock().ok()?;
        let (user, expires) = live.get_mut(token)?;
        if *expires <= now {
            live.remove(token);
            return None;
        }
        *expires = now + self.ttl();
        Some(user.clone())
    }

    pub(crate) fn change(&self, change: TokenChange) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        match change {
            TokenChange::Assign(token, user) => {
                let now = Instant::now();
                // Expired tokens go when new ones come, so the map stays as small as the live set.
                if live.len() >= 64 && live.len().is_power_of_two() {
                    live.retain(|_, (_, expires)| *expires > now);
                }
                live.insert(token, (user, now + self.ttl()));
            }
            TokenChange::ForgetUser(user) => live.retain(|_, (u, _)| *u != user),
            TokenChange::ForgetAll => live.clear(),
        }
    }
}

/// The auth state as this member last applied it, and its tokens.
#[derive(Debug, Default)]
pub struct Auth {
    state: RwLock<Arc<AuthState>>,
    tokens: Tokens,
}

impl Auth {
    /// The state as last applied.
    pub fn state(&self) -> Arc<AuthState> {
        self.state
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    /// This member's tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub(crate) fn publish(&self, state: &AuthState) {
        if let Ok(mut s) = self.state.write() {
            *s = Arc::new(state.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvcc::PermType;

    /// A write checked against the auth state before an auth change that is applied first is
    /// refused at apply, as etcd re-checks the auth revision there; one checked after is
    /// applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_checked_before_an_auth_change_is_refused_at_apply() {
        let (node, _dir) = crate::validate::tests::single().await;
        let d = || deadline::Deadline::after(Duration::from_secs(5));
        let put = |key: &str| {
            Box::new(mvcc::Command::Put(mvcc::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            }))
        };
        for r in [
            AuthRequest::UserAdd {
                name: ROOT.into(),
                hash: None,
            },
            AuthRequest::RoleAdd { name: ROOT.into() },
            AuthRequest::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthRequest::Enable,
        ] {
            node.propose(mvcc::Command::Auth(r.clone()), d())
                .await
                .unwrap_or_else(|e| panic!("{r:?}: {e}"));
        }
        let checked_at = node.auth().state().revision;
        let change = AuthRequest::UserAdd {
            name: "alice".into(),
            hash: None,
        };
        node.propose(mvcc::Command::Auth(change), d())
            .await
            .unwrap();
        assert!(node.auth().state().revision > checked_at);
        let late = node
            .propose(
                mvcc::Command::Guarded {
                    auth_revision: checked_at,
                    command: put("late"),
                },
                d(),
            )
            .await;
        assert!(
            matches!(&late, Err(e) if e.to_string() == "etcdserver: revision of auth store is old"),
            "{late:?}"
        );
        let current = node.auth().state().revision;
        let fresh = node
            .propose(
                mvcc::Command::Guarded {
                    auth_revision: current,
                    command: put("fresh"),
                },
                d(),
            )
            .await;
        assert!(
            matches!(fresh, Ok((_, mvcc::Response::Put(_)))),
            "{fresh:?}"
        );
        let late_kept = node.store().range(&mvcc::RangeRequest {
            key: b"late".to_vec(),
            ..Default::default()
        });
        assert!(
            late_kept.is_ok_and(|(r, _)| r.kvs.is_empty()),
            "the refused write changed nothing"
        );
        node.shutdown().await.unwrap();
    }

    fn perm(t: PermType, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: t,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    fn apply(s: &mut AuthState, r: AuthRequest) -> Result<AuthResponse, AuthError> {
        s.apply(&r, &mut Vec::new())
    }

    #[test]
    fn enable_needs_root_with_root_role_and_root_stays() {
        let mut s = AuthState::default();
        assert_eq!(
            apply(&mut s, AuthRequest::Enable),
            Err(AuthError::RootUserNotExist)
        );
        let add = AuthRequest::UserAdd {
            name: ROOT.into(),
            hash: Some("h".into()),
        };
        apply(&mut s, add).unwrap();
        assert_eq!(
            apply(&mut s, AuthRequest::Enable),
            Err(AuthError::RootRoleNotExist)
        );
        let grant = AuthRequest::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        apply(&mut s, grant).unwrap();
        apply(&mut s, AuthRequest::Enable).unwrap();
        assert!(s.enabled);
        let delete = AuthRequest::UserDelete { name: ROOT.into() };
        assert_eq!(apply(&mut s, delete), Err(AuthError::InvalidAuthMgmt));
    }

    #[test]
    fn ranges_are_checked_against_the_union_of_grants() {
        let mut s = AuthState {
            enabled: true,
            ..AuthState::default()
        };
        s.roles.insert(
            "r".into(),
            vec![
                perm(PermType::Read, "a", b"c"),
                perm(PermType::ReadWrite, "c", b"e"),
                perm(PermType::Write, "zz", &[0]),
                perm(PermType::Read, "k", b""),
            ],
        );
        let mut user = User::default();
        user.roles.insert("r".into());
        s.users.insert("u".into(), user);
        let check = |k: &str, e: &[u8], a| s.check_range(Some("u"), k.as_bytes(), e, a);
        assert_eq!(check("a", b"e", Access::Read), Ok(()));
        assert_eq!(check("b", b"", Access::Read), Ok(()));
        assert_eq!(check("k", b"", Access::Read), Ok(()));
        assert_eq!(
            check("a", b"f", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            check("a", b"", Access::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(check("d", b"", Access::Write), Ok(()));
        assert_eq!(check("zzz", &[0], Access::Write), Ok(()));
        assert_eq!(
            check("zz", &[0], Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            s.check_range(None, b"a", b"", Access::Read),
            Err(AuthError::UserEmpty)
        );
    }

    #[test]
    fn a_grant_on_the_same_range_replaces_its_type_and_keeps_key_order() {
        let mut s = AuthState::default();
        apply(&mut s, AuthRequest::RoleAdd { name: "r".into() }).unwrap();
        for p in [
            perm(PermType::ReadWrite, "foo", b""),
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "foo", b""),
        ] {
            let grant = AuthRequest::RoleGrantPermission {
                name: "r".into(),
                perm: p,
            };
            apply(&mut s, grant).unwrap();
        }
        assert_eq!(
            s.roles["r"],
            vec![
                perm(PermType::Read, "a", b"c"),
                perm(PermType::Read, "foo", b"")
            ]
        );
    }
}
