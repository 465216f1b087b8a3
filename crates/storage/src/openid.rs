//! OpenID tokens: issued to a user, exchanged by a third party for the user's id.

use crate::{Result, Store};

impl Store {
    /// Stores a new OpenID token for `user_id`, valid until `expires_ts` (ms), and drops
    /// the tokens that expired before `now_ms`.
    pub async fn insert_openid_token(
        &self,
        token: &str,
        user_id: &str,
        expires_ts: i64,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin("insert_openid_token").await?;
        sqlx::query("DELETE FROM openid_tokens WHERE expires_ts <= $1")
            .bind(now_ms)
            .execute(tx.conn())
            .await?;
        sqlx::query("INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token)
            .bind(user_id)
            .bind(expires_ts)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// The user an OpenID token belongs to, if it is known, has not expired at `now_ms`,
    /// and its user is not deactivated.
    pub async fn select_openid_token_owner(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT o.user_id FROM openid_tokens o JOIN users u ON u.user_id = o.user_id
             WHERE o.token = $1 AND o.expires_ts > $2 AND u.deactivated = 0",
        )
        .bind(token)
        .bind(now_ms)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(u,)| u))
    }
}
