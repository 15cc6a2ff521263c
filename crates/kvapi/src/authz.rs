//! Who is asking, and whether they may: etcd's token lookup and permission checks, against the
//! auth state this member last applied (a permission change reaches tokens issued before it).

use std::sync::Arc;

use consensus::{Access, AuthError, AuthState};
use tonic::metadata::MetadataMap;

use crate::error::ApiError;
use crate::pb::etcdserverpb::{request_op, RequestOp, TxnRequest};

/// The metadata keys a token comes in: clientv3's, then the gRPC gateway's.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// The common name of the client certificate a request came with, put in the request's
/// extensions by the server only under `--client-cert-auth`: with auth enabled and no token,
/// etcd takes it as the user (kube-apiserver-style clients need no password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertUser(pub String);

/// The caller of one request, with the auth state it is checked against.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    state: Arc<AuthState>,
    user: Option<String>,
    /// The auth revision a JWT token was issued at: older than the state's, key access is
    /// refused with `revision of auth store is old`, as etcd does.
    token_revision: Option<u64>,
}

impl Caller {
    /// Identifies the caller by its token, or without one by its certificate's common name
    /// (`cert`), as etcd does: a token, even a bad one, wins over the certificate. With auth
    /// disabled every check passes and tokens are ignored, as in etcd.
    ///
    /// # Errors
    /// `invalid auth token` for a token this member does not know (or that expired).
    pub(crate) fn identify(
        auth: &consensus::Auth,
        jwt: Option<&crate::JwtTokens>,
        metadata: &MetadataMap,
        cert: Option<&CertUser>,
    ) -> Result<Self, ApiError> {
        let state = auth.state();
        if !state.enabled {
            return Ok(Caller {
                state,
                user: None,
                token_revision: None,
            });
        }
        let token = TOKEN_KEYS
            .iter()
            .find_map(|k| metadata.get(*k))
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        let invalid = || ApiError::from(AuthError::InvalidAuthToken);
        let (user, token_revision) = match (token, jwt) {
            (None, _) => (cert.map(|c| c.0.clone()), None),
            (Some(t), None) => (Some(auth.tokens().user(t).ok_or_else(invalid)?), None),
            (Some(t), Some(jwt)) => {
                let (user, revision) = jwt.verify(t).ok_or_else(invalid)?;
                (Some(user), Some(revision))
            }
        };
        Ok(Caller {
            state,
            user,
            token_revision,
        })
    }

    /// The user, if a token named one.
    pub(crate) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The auth state this caller is checked against.
    pub(crate) fn state(&self) -> &AuthState {
        &self.state
    }

    /// etcd's check of an auth management request.
    pub(crate) fn admin(&self) -> Result<(), AuthError> {
        self.state.check_admin(self.user())
    }

    /// `command`, to be applied only if auth has not changed since this caller was checked
    /// (etcd's re-check at apply); as it is while auth is disabled.
    pub(crate) fn guard(&self, command: mvcc::Command) -> mvcc::Command {
        if !self.state.enabled {
            return command;
        }
        mvcc::Command::Guarded {
            auth_revision: self.state.revision,
            command: Box::new(command),
        }
    }

    /// etcd's revision check of key access: a token from before the last auth change is old.
    fn current(&self) -> Result<(), AuthError> {
        match self.token_revision {
            Some(revision) if self.state.enabled && revision < self.state.revision => {
                Err(AuthError::AuthOldRevision)
            }
            _ => Ok(()),
        }
    }

    /// Read access to `[key, range_end)`.
    pub(crate) fn read(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.current()?;
        self.state
            .check_range(self.user(), key, range_end, Access::Read)
    }

    /// Write access to `[key, range_end)`.
    pub(crate) fn write(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.current()?;
        self.state
            .check_range(self.user(), key, range_end, Access::Write)
    }

    /// A put: write on the key, and read too when it asks for the previous value.
    pub(crate) fn put(&self, key: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.write(key, &[])?;
        if prev_kv {
            self.read(key, &[])?;
        }
        Ok(())
    }

    /// A delete: write on the range, and read too when it asks for the previous values.
    pub(crate) fn delete(
        &self,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<(), AuthError> {
        if prev_kv {
            self.read(key, range_end)?;
        }
        self.write(key, range_end)
    }

    /// A txn: read on every compared key, and every op of both branches, nested txns too.
    pub(crate) fn txn(&self, txn: &TxnRequest) -> Result<(), AuthError> {
        if !self.state.enabled {
            return Ok(());
        }
        for c in &txn.compare {
            self.read(&c.key, &c.range_end)?;
        }
        self.ops(&txn.success)?;
        self.ops(&txn.failure)
    }

    fn ops(&self, ops: &[RequestOp]) -> Result<(), AuthError> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.read(&r.key, &r.range_end)?,
                Some(request_op::Request::RequestPut(p)) => self.put(&p.key, p.prev_kv)?,
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    self.delete(&d.key, &d.range_end, d.prev_kv)?
                }
                Some(request_op::Request::RequestTxn(t)) => self.txn(t)?,
                None => {}
            }
        }
        Ok(())
    }
}
