//! etcd's JWT tokens (`--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`).
//!
//! A token is signed, not stored: any member with the public key verifies it, so a token from
//! one member is good on every other, and a restarted member still honours it. Its claims are
//! etcd's: the user, the auth revision it was issued at, and its expiry. A token issued before
//! an auth change is refused on key access with `revision of auth store is old` (clients then
//! authenticate again), as etcd does.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default lifetime of a JWT token.
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// Why `--auth-token jwt,…` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--auth-token jwt: {0}")]
pub struct JwtError(String);

/// The claims of etcd's tokens.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies this member's JWT tokens.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None`: verify only (no `priv-key`), as etcd allows; Authenticate then fails.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("signs", &self.signing.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl JwtTokens {
    /// Reads the options after `jwt,` (`pub-key=PATH,priv-key=PATH,sign-method=ALG,ttl=DUR`)
    /// and the key files they name.
    ///
    /// # Errors
    /// An unknown option or method, a missing or unreadable key, a bad TTL.
    pub fn from_options(options: &str) -> Result<Self, JwtError> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_TTL);
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| JwtError(format!("option {option:?} is not NAME=VALUE")))?;
            match name {
                "pub-key" => public = Some(value.to_string()),
                "priv-key" => private = Some(value.to_string()),
                "sign-method" => method = Some(value.to_string()),
                "ttl" => ttl = parse_duration(value)?,
                other => return Err(JwtError(format!("unknown option {other:?}"))),
            }
        }
        let method = method.ok_or_else(|| JwtError("sign-method is required".into()))?;
        let algorithm: Algorithm = method
            .parse()
            .map_err(|_| JwtError(format!("unknown sign-method {method:?}")))?;
        let read = |path: &str| {
            std::fs::read(Path::new(path))
                .map_err(|e| JwtError(format!("cannot read key file {path:?}: {e}")))
        };
        let bad = |what: &str, e: jsonwebtoken::errors::Error| {
            JwtError(format!("{what} does not hold a {method} key: {e}"))
        };
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // A shared secret: the private key file's bytes sign and verify.
                let path = private
                    .ok_or_else(|| JwtError(format!("{method} needs priv-key (the secret)")))?;
                let secret = read(&path)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let path = public.ok_or_else(|| JwtError(format!("{method} needs pub-key")))?;
                let pem = read(&path)?;
                let verifying = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| bad("pub-key", e))?;
                let signing = match private {
                    None => None,
                    Some(path) => {
                        let pem = read(&path)?;
                        Some(
                            match algorithm {
                                Algorithm::ES256 | Algorithm::ES384 => {
                                    EncodingKey::from_ec_pem(&pem)
                                }
                                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                                _ => EncodingKey::from_rsa_pem(&pem),
                            }
                            .map_err(|e| bad("priv-key", e))?,
                        )
                    }
                };
                (signing, verifying)
            }
        };
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            ttl,
        };
        // A key pair that does not match would issue tokens nobody accepts: refuse it now.
        if tokens.signing.is_some() {
            let probe = tokens.sign("probe", 1)?;
            if tokens.verify(&probe).is_none() {
                return Err(JwtError("priv-key and pub-key do not match".into()));
            }
        }
        Ok(tokens)
    }

    /// A token for `user` at auth revision `revision`, expiring after the TTL.
    ///
    /// # Errors
    /// No private key was given (verify-only), or signing failed.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, JwtError> {
        let key = self
            .signing
            .as_ref()
            .ok_or_else(|| JwtError("token signing attempted with verify-only key".into()))?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| JwtError(format!("signing a token: {e}")))
    }

    /// The user and auth revision of a token signed with this key and not expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        // etcd (jwt-go) allows no leeway on the expiry.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation) {
            Ok(data) => Some((data.claims.username, data.claims.revision)),
            Err(e) => {
                tracing::debug!(cause = %e, "refused a JWT token");
                None
            }
        }
    }
}

/// Go's duration syntax as etcd's `ttl=` takes it: `300s`, `5m`, `1h30m`, `1500ms`.
fn parse_duration(text: &str) -> Result<Duration, JwtError> {
    let bad = || JwtError(format!("ttl {text:?} is not a duration such as 5m or 300s"));
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total = one
            .checked_mul(u32::try_from(number).map_err(|_| bad())?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    if total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "5", "m", "5x", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hmac_tokens_round_trip_and_a_changed_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").unwrap();
        let tokens = JwtTokens::from_options(&format!(
            "priv-key={},sign-method=HS256,ttl=1m",
            secret.display()
        ))
        .unwrap();
        let token = tokens.sign("alice", 7).unwrap();
        assert_eq!(tokens.verify(&token), Some(("alice".to_string(), 7)));
        // A character inside the signature, not its last (which may carry only padding bits).
        let mut forged: Vec<char> = token.chars().collect();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert_eq!(tokens.verify(&forged), None);
        assert!(JwtTokens::from_options("sign-method=HS256").is_err());
        assert!(JwtTokens::from_options("sign-method=XX1,priv-key=x").is_err());
    }
}
