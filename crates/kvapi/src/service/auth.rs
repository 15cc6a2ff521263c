//! The Auth service: users, roles and permissions through Raft, passwords hashed with bcrypt by
//! the member that takes the request (the log never holds a clear password), simple tokens.

use consensus::AuthError;
use mvcc::{AuthRequest, AuthResponse, Backend, Command, PermType, Permission, Response};
use rand::Rng;
use tonic::{Request, Response as Reply, Status};

use crate::authz::Caller;
use crate::error::ApiError;
use crate::pb::authpb;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::service::{handled, Shared};

const SERVICE: &str = "etcdserverpb.Auth";

/// How many times an authentication is retried when the auth state changed between the password
/// check and its commit (etcd retries until they agree).
const AUTHENTICATE_TRIES: usize = 5;

/// etcd's Auth service over a member.
pub struct AuthService<B: mvcc::Backend> {
    shared: Shared<B>,
}

impl<B: Backend> AuthService<B> {
    pub(crate) fn new(shared: Shared<B>) -> Self {
        Self { shared }
    }

    /// Proposes `req` and answers with its header and result.
    async fn propose(
        &self,
        deadline: deadline::Deadline,
        req: AuthRequest,
    ) -> Result<(Option<ResponseHeader>, AuthResponse), ApiError> {
        match self
            .shared
            .node
            .propose(Command::Auth(req), deadline)
            .await?
        {
            (revision, Response::Auth(answer)) => Ok((self.shared.header(revision), answer)),
            (_, other) => Err(ApiError::Internal(format!(
                "an auth request was answered with {other:?}"
            ))),
        }
    }

    /// Hashes `password` with `--bcrypt-cost`, off the async workers (a hash takes tens of ms).
    async fn hash(&self, password: String) -> Result<String, ApiError> {
        let cost = self.shared.config.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing a password failed: {e}")))?
            .map_err(|e| ApiError::Internal(format!("hashing a password failed: {e}")))
    }

    /// The caller, which must be allowed to manage auth.
    async fn admin<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        let caller = self.shared.caller(req).await?;
        caller.admin()?;
        Ok(caller)
    }

    /// An admin change: the caller must be allowed to manage auth; `build` makes the request
    /// from the message, which is proposed, and `reply` the answer from its header. A failure
    /// is logged as `method`.
    async fn change<T: Send, R>(
        &self,
        method: &'static str,
        request: Request<T>,
        build: impl FnOnce(T) -> Result<AuthRequest, ApiError> + Send,
        reply: impl FnOnce(Option<ResponseHeader>) -> R + Send,
    ) -> Result<Reply<R>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            self.admin(&request).await?;
            let (header, _) = self.propose(deadline, build(request.into_inner())?).await?;
            Ok(reply(header))
        }
        .await;
        handled(
            SERVICE,
            method,
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn serve_authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<AuthenticateResponse, ApiError> {
        let deadline = self.shared.deadline(&req);
        let r = req.into_inner();
        if let Some(jwt) = self.shared.config.jwt.clone() {
            return self.authenticate_jwt(&jwt, deadline, r).await;
        }
        for _ in 0..AUTHENTICATE_TRIES {
            let state = self.shared.node.auth().state();
            if !state.enabled {
                return Err(AuthError::AuthNotEnabled.into());
            }
            let hash = state
                .users
                .get(&r.name)
                .and_then(|u| u.hash.clone())
                .ok_or(AuthError::AuthFailed)?;
            let password = r.password.clone();
            let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .map_err(|e| ApiError::Internal(format!("checking a password failed: {e}")))?
                .unwrap_or(false);
            if !matches {
                return Err(AuthError::AuthFailed.into());
            }
            let token = new_token(self.shared.node.store().current_revision());
            let request = AuthRequest::Authenticate {
                name: r.name.clone(),
                token,
                revision: state.revision,
            };
            match self.propose(deadline, request).await {
                Ok((header, AuthResponse::Token(token))) => {
                    return Ok(AuthenticateResponse { header, token })
                }
                Ok((_, other)) => {
                    return Err(ApiError::Internal(format!(
                        "authenticate was answered with {other:?}"
                    )))
                }
                // The password may have changed meanwhile: check it again.
                Err(ApiError::Refused(mvcc::Refusal::Auth(AuthError::AuthOldRevision))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AuthError::AuthOldRevision.into())
    }
}

impl<B: Backend> AuthService<B> {
    /// Authenticate with JWT tokens: nothing to record, the token is signed here. The auth
    /// state is brought up to date first, so the token carries the current auth revision and a
    /// password changed on another member is not accepted here afterwards.
    async fn authenticate_jwt(
        &self,
        jwt: &crate::JwtTokens,
        deadline: deadline::Deadline,
        r: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, ApiError> {
        self.shared.node.read_index(deadline).await?;
        let state = self.shared.node.auth().state();
        if !state.enabled {
            return Err(AuthError::AuthNotEnabled.into());
        }
        let hash = state
            .users
            .get(&r.name)
            .and_then(|u| u.hash.clone())
            .ok_or(AuthError::AuthFailed)?;
        let password = r.password;
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| ApiError::Internal(format!("checking a password failed: {e}")))?
            .unwrap_or(false);
        if !matches {
            return Err(AuthError::AuthFailed.into());
        }
        let token = jwt
            .sign(&r.name, state.revision)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(AuthenticateResponse {
            header: self
                .shared
                .header(self.shared.node.store().current_revision()),
            token,
        })
    }
}

/// A simple token: 16 random letters, a dot, and a number, as etcd's look.
fn new_token(seq: i64) -> String {
    let letters: String = rand::rng()
        .sample_iter(rand::distr::Alphabetic)
        .take(16)
        .map(char::from)
        .collect();
    format!("{letters}.{seq}")
}

/// A permission from the wire; an unknown type is refused as etcd's gRPC layer would.
fn perm_from_pb(p: authpb::Permission) -> Result<Permission, ApiError> {
    let perm_type = PermType::from_number(p.perm_type)
        .ok_or_else(|| ApiError::Internal(format!("unknown permission type {}", p.perm_type)))?;
    Ok(Permission {
        perm_type,
        key: p.key,
        range_end: p.range_end,
    })
}

fn perm_to_pb(p: Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm_type.number(),
        key: p.key,
        range_end: p.range_end,
    }
}

fn names(answer: AuthResponse) -> Vec<String> {
    match answer {
        AuthResponse::Names(n) => n,
        _ => Vec::new(),
    }
}

#[tonic::async_trait]
impl<B: Backend> Auth for AuthService<B> {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Reply<AuthEnableResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            let (header, _) = self.propose(deadline, AuthRequest::Enable).await?;
            Ok(AuthEnableResponse { header })
        }
        .await;
        handled(
            SERVICE,
            "AuthEnable",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Reply<AuthDisableResponse>, Status> {
        self.change(
            "AuthDisable",
            request,
            |_| Ok(AuthRequest::Disable),
            |header| AuthDisableResponse { header },
        )
        .await
    }

    async fn auth_status(
        &self,
        _request: Request<AuthStatusRequest>,
    ) -> Result<Reply<AuthStatusResponse>, Status> {
        let state = self.shared.node.auth().state();
        let revision = self.shared.node.store().current_revision();
        let result: Result<_, ApiError> = Ok(AuthStatusResponse {
            header: self.shared.header(revision),
            enabled: state.enabled,
            auth_revision: state.revision,
        });
        handled(
            SERVICE,
            "AuthStatus",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Reply<AuthenticateResponse>, Status> {
        let result = self.serve_authenticate(request).await;
        handled(
            SERVICE,
            "Authenticate",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Reply<AuthUserAddResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            self.admin(&request).await?;
            let r = request.into_inner();
            if r.name.is_empty() {
                return Err(AuthError::UserEmpty.into());
            }
            let no_password = r.options.is_some_and(|o| o.no_password);
            let hash = if no_password {
                None
            } else if !r.hashed_password.is_empty() {
                Some(r.hashed_password)
            } else {
                Some(self.hash(r.password).await?)
            };
            let add = AuthRequest::UserAdd { name: r.name, hash };
            let (header, _) = self.propose(deadline, add).await?;
            Ok(AuthUserAddResponse { header })
        }
        .await;
        handled(
            SERVICE,
            "UserAdd",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Reply<AuthUserGetResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            let caller = self.shared.caller(&request).await?;
            let r = request.into_inner();
            // A user may read itself.
            if let Err(e) = caller.admin() {
                if caller.user() != Some(r.name.as_str()) {
                    return Err(e.into());
                }
            }
            let (header, answer) = self
                .propose(deadline, AuthRequest::UserGet { name: r.name })
                .await?;
            Ok(AuthUserGetResponse {
                header,
                roles: names(answer),
            })
        }
        .await;
        handled(
            SERVICE,
            "UserGet",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Reply<AuthUserListResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            self.admin(&request).await?;
            let (header, answer) = self.propose(deadline, AuthRequest::UserList).await?;
            Ok(AuthUserListResponse {
                header,
                users: names(answer),
            })
        }
        .await;
        handled(
            SERVICE,
            "UserList",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Reply<AuthUserDeleteResponse>, Status> {
        self.change(
            "UserDelete",
            request,
            |r| Ok(AuthRequest::UserDelete { name: r.name }),
            |header| AuthUserDeleteResponse { header },
        )
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Reply<AuthUserChangePasswordResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            self.admin(&request).await?;
            let r = request.into_inner();
            // Refused before the (slow) hash when the user does not exist.
            if !self.shared.node.auth().state().users.contains_key(&r.name) {
                return Err(AuthError::UserNotFound.into());
            }
            let hash = if r.hashed_password.is_empty() {
                self.hash(r.password).await?
            } else {
                r.hashed_password
            };
            let change = AuthRequest::UserChangePassword { name: r.name, hash };
            let (header, _) = self.propose(deadline, change).await?;
            Ok(AuthUserChangePasswordResponse { header })
        }
        .await;
        handled(
            SERVICE,
            "UserChangePassword",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Reply<AuthUserGrantRoleResponse>, Status> {
        self.change(
            "UserGrantRole",
            request,
            |r| {
                Ok(AuthRequest::UserGrantRole {
                    user: r.user,
                    role: r.role,
                })
            },
            |header| AuthUserGrantRoleResponse { header },
        )
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Reply<AuthUserRevokeRoleResponse>, Status> {
        self.change(
            "UserRevokeRole",
            request,
            |r| {
                Ok(AuthRequest::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                })
            },
            |header| AuthUserRevokeRoleResponse { header },
        )
        .await
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Reply<AuthRoleAddResponse>, Status> {
        self.change(
            "RoleAdd",
            request,
            |r| Ok(AuthRequest::RoleAdd { name: r.name }),
            |header| AuthRoleAddResponse { header },
        )
        .await
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Reply<AuthRoleGetResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            let caller = self.shared.caller(&request).await?;
            let role = request.into_inner().role;
            // A user may read the roles it has.
            if let Err(e) = caller.admin() {
                let has = caller
                    .user()
                    .and_then(|u| caller.state().users.get(u))
                    .is_some_and(|u| u.roles.contains(&role));
                if !has {
                    return Err(e.into());
                }
            }
            let (header, answer) = self
                .propose(deadline, AuthRequest::RoleGet { role })
                .await?;
            let perm = match answer {
                AuthResponse::Perms(p) => p.into_iter().map(perm_to_pb).collect(),
                _ => Vec::new(),
            };
            Ok(AuthRoleGetResponse { header, perm })
        }
        .await;
        handled(
            SERVICE,
            "RoleGet",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Reply<AuthRoleListResponse>, Status> {
        let result: Result<_, ApiError> = async {
            let deadline = self.shared.deadline(&request);
            self.admin(&request).await?;
            let (header, answer) = self.propose(deadline, AuthRequest::RoleList).await?;
            Ok(AuthRoleListResponse {
                header,
                roles: names(answer),
            })
        }
        .await;
        handled(
            SERVICE,
            "RoleList",
            result.map(Reply::new).map_err(|e| e.status()),
        )
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Reply<AuthRoleDeleteResponse>, Status> {
        self.change(
            "RoleDelete",
            request,
            |r| Ok(AuthRequest::RoleDelete { role: r.role }),
            |header| AuthRoleDeleteResponse { header },
        )
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Reply<AuthRoleGrantPermissionResponse>, Status> {
        self.change(
            "RoleGrantPermission",
            request,
            |r| {
                // etcd answers a grant without a permission with its own error.
                let perm = r
                    .perm
                    .ok_or_else(|| ApiError::Internal("permission is not given".into()))?;
                Ok(AuthRequest::RoleGrantPermission {
                    name: r.name,
                    perm: perm_from_pb(perm)?,
                })
            },
            |header| AuthRoleGrantPermissionResponse { header },
        )
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Reply<AuthRoleRevokePermissionResponse>, Status> {
        self.change(
            "RoleRevokePermission",
            request,
            |r| {
                Ok(AuthRequest::RoleRevokePermission {
                    role: r.role,
                    key: r.key,
                    range_end: r.range_end,
                })
            },
            |header| AuthRoleRevokePermissionResponse { header },
        )
        .await
    }
}
