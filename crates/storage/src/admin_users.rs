//! Lookups the account service needs beyond `accounts`: resolving an access token to its
//! owner together with the owner's admin flag, in one query, because the auth middleware
//! runs it on every client request.

use crate::{Result, Store};

/// Who an access token belongs to, with what the auth middleware needs about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The user.
    pub user_id: String,
    /// The device the token belongs to.
    pub device_id: String,
    /// When the token stops working (ms since the epoch), if it expires.
    pub expires_ts: Option<i64>,
    /// Whether the user is a server admin.
    pub is_admin: bool,
}

impl Store {
    /// Resolves an access token to its owner and the owner's admin flag. `None` if the
    /// token is unknown (or its user row is gone).
    pub async fn select_token_identity(&self, token: &str) -> Result<Option<TokenIdentity>> {
        let row: Option<(String, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT t.user_id, t.device_id, t.expires_ts, u.is_admin
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id
             WHERE t.token = $1",
        )
        .bind(token)
        .fetch_optional(self.reader())
        .await?;
        Ok(
            row.map(|(user_id, device_id, expires_ts, is_admin)| TokenIdentity {
                user_id,
                device_id,
                expires_ts,
                is_admin: is_admin != 0,
            }),
        )
    }
}
