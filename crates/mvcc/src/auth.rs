//! etcd's auth requests as the log carries them: users, roles, key-range permissions.
//!
//! Passwords never travel: a request carries a bcrypt hash made by the member that took it.

use serde::{Deserialize, Serialize};

/// What a permission allows, as etcd's `authpb.Permission.Type` (0 read, 1 write, 2 both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    /// Range and watch.
    #[default]
    Read,
    /// Put and delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermType {
    /// etcd's number for it.
    pub fn number(self) -> i32 {
        match self {
            PermType::Read => 0,
            PermType::Write => 1,
            PermType::ReadWrite => 2,
        }
    }

    /// The type for etcd's number; `None` for an unknown one.
    pub fn from_number(n: i32) -> Option<PermType> {
        match n {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    /// Whether it allows reads.
    pub fn reads(self) -> bool {
        matches!(self, PermType::Read | PermType::ReadWrite)
    }

    /// Whether it allows writes.
    pub fn writes(self) -> bool {
        matches!(self, PermType::Write | PermType::ReadWrite)
    }
}

/// A key-range permission of a role: one key (empty `range_end`), `[key, range_end)`, or every
/// key from `key` on (`range_end` is `[0]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub perm_type: PermType,
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the range, as etcd's `range_end`.
    pub range_end: Vec<u8>,
}

/// A change to (or a linearizable read of) the auth state, as etcd's auth requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Turn auth on (needs a root user with the root role).
    Enable,
    /// Turn auth off.
    Disable,
    /// Record `token` for `name` on every member, if the auth state is still at `revision`
    /// (the one the password was checked against).
    Authenticate {
        /// The user.
        name: String,
        /// The simple token made by the member that checked the password.
        token: String,
        /// The auth revision the password was checked at.
        revision: u64,
    },
    /// Add a user.
    UserAdd {
        /// Its name.
        name: String,
        /// Its bcrypt hash; `None` for a user without password.
        hash: Option<String>,
    },
    /// Read a user's roles.
    UserGet {
        /// The user.
        name: String,
    },
    /// List the users.
    UserList,
    /// Delete a user.
    UserDelete {
        /// The user.
        name: String,
    },
    /// Change a user's password.
    UserChangePassword {
        /// The user.
        name: String,
        /// The new bcrypt hash.
        hash: String,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// Add a role.
    RoleAdd {
        /// Its name.
        name: String,
    },
    /// Read a role's permissions.
    RoleGet {
        /// The role.
        role: String,
    },
    /// List the roles.
    RoleList,
    /// Delete a role (and take it from every user).
    RoleDelete {
        /// The role.
        role: String,
    },
    /// Grant a permission to a role (replacing the type of one on the same range).
    RoleGrantPermission {
        /// The role.
        name: String,
        /// The permission.
        perm: Permission,
    },
    /// Revoke the permission on exactly this range from a role.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The range's first key.
        key: Vec<u8>,
        /// The range's end.
        range_end: Vec<u8>,
    },
}

/// The answer to an applied [`AuthRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthResponse {
    /// Done.
    Done,
    /// A token was recorded.
    Token(String),
    /// Names: a user's roles, or every user, or every role (sorted).
    Names(Vec<String>),
    /// A role's permissions, in etcd's order.
    Perms(Vec<Permission>),
}

/// etcd's auth errors, with its texts (clients match on them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthError {
    /// Enabling auth without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// Enabling auth while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// A user name that is empty, or a request without a user while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// Adding a user that exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// Naming a user that does not exist.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// Adding a role that exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// Naming a role that does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// A wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticating while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token this member does not know (or that expired).
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Removing root, or root's root role, while auth is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed between the password check and its commit.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}
