//! Accounts: users, access and refresh tokens, registration tokens, UIA sessions.

use ganglion_core::time::now_ms;

use crate::{Result, Store, flag};

/// A user row.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Full user id.
    pub user_id: String,
    /// Argon2 PHC string, if the user has a password.
    pub password_hash: Option<String>,
    /// Server admin.
    pub is_admin: bool,
    /// Deactivated users cannot log in.
    pub deactivated: bool,
    /// Profile display name.
    pub displayname: Option<String>,
    /// Profile avatar.
    pub avatar_url: Option<String>,
    /// Registration time (ms).
    pub created_ts: i64,
}

type UserTuple = (
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<String>,
    i64,
);

fn user_row(t: UserTuple) -> UserRow {
    UserRow {
        user_id: t.0,
        password_hash: t.1,
        is_admin: t.2 != 0,
        deactivated: t.3 != 0,
        displayname: t.4,
        avatar_url: t.5,
        created_ts: t.6,
    }
}

/// What an access token resolves to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    /// The user.
    pub user_id: String,
    /// The device the token belongs to.
    pub device_id: String,
    /// When the token stops working (ms), if it expires.
    pub expires_ts: Option<i64>,
}

/// A registration token as admins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    /// The token text.
    pub token: String,
    /// How many registrations it allows in total (`None`: unlimited).
    pub uses_allowed: Option<i64>,
    /// Registrations in progress with it.
    pub pending: i64,
    /// Registrations completed with it.
    pub completed: i64,
    /// Expiry (ms since epoch).
    pub expiry_time: Option<i64>,
}

/// A new device with its first access token, written in one transaction.
#[derive(Debug, Clone)]
pub struct NewLogin<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The device id (new or existing: an existing device keeps its name).
    pub device_id: &'a str,
    /// Display name for a new device.
    pub display_name: Option<&'a str>,
    /// The access token.
    pub access_token: &'a str,
    /// Its expiry, if refreshable.
    pub expires_ts: Option<i64>,
    /// The refresh token, if the client asked for one.
    pub refresh_token: Option<&'a str>,
    /// Client IP, for the device list.
    pub ip: Option<&'a str>,
}

impl Store {
    /// Creates a user. `Conflict` if the id is taken.
    pub async fn insert_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        is_admin: bool,
    ) -> Result<()> {
        let mut tx = self.begin("insert_user").await?;
        sqlx::query("INSERT INTO users (user_id, password_hash, is_admin, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(user_id)
            .bind(password_hash)
            .bind(flag(is_admin))
            .bind(now_ms())
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Loads a user.
    pub async fn select_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(
            "SELECT user_id, password_hash, is_admin, deactivated, displayname, avatar_url, created_ts
             FROM users WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(user_row))
    }

    /// Loads a user by localpart, case-insensitively (Synapse lower-cases on login).
    pub async fn select_user_case_insensitive(&self, user_id: &str) -> Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(
            "SELECT user_id, password_hash, is_admin, deactivated, displayname, avatar_url, created_ts
             FROM users WHERE LOWER(user_id) = LOWER($1) ORDER BY user_id LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(user_row))
    }

    /// Counts users (for first-run messages and admin stats).
    pub async fn count_users(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.reader())
            .await?;
        Ok(n)
    }

    /// Replaces a user's password hash.
    pub async fn update_password(&self, user_id: &str, hash: &str) -> Result<()> {
        let mut tx = self.begin("update_password").await?;
        sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(hash)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Marks a user admin or not.
    pub async fn update_user_admin(&self, user_id: &str, admin: bool) -> Result<()> {
        let mut tx = self.begin("update_user_admin").await?;
        sqlx::query("UPDATE users SET is_admin = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(flag(admin))
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Deactivates a user: no password, no devices, no tokens.
    pub async fn deactivate_user(&self, user_id: &str) -> Result<()> {
        let mut tx = self.begin("deactivate_user").await?;
        sqlx::query("UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(tx.conn())
            .await?;
        for sql in [
            "DELETE FROM access_tokens WHERE user_id = $1",
            "DELETE FROM refresh_tokens WHERE user_id = $1",
            "DELETE FROM devices WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(tx.conn()).await?;
        }
        tx.commit().await
    }

    /// Sets display name and avatar (either may be cleared with `None`).
    pub async fn update_profile(
        &self,
        user_id: &str,
        displayname: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin("update_profile").await?;
        sqlx::query("UPDATE users SET displayname = $2, avatar_url = $3 WHERE user_id = $1")
            .bind(user_id)
            .bind(displayname)
            .bind(avatar_url)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Creates (or reuses) a device and issues an access token for it.
    pub async fn insert_login(&self, login: NewLogin<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin("insert_login").await?;
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts)
             VALUES ($1, $2, $3, $4, $5, $4)
             ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = $4, last_seen_ip = $5",
        )
        .bind(login.user_id)
        .bind(login.device_id)
        .bind(login.display_name)
        .bind(now)
        .bind(login.ip)
        .execute(tx.conn())
        .await?;
        // A device has one live access token: logging in again to it replaces the old one.
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(login.user_id)
            .bind(login.device_id)
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(login.user_id)
            .bind(login.device_id)
            .execute(tx.conn())
            .await?;
        insert_tokens(&mut tx, &login, now).await?;
        tx.commit().await
    }

    /// Resolves an access token.
    pub async fn select_token_owner(&self, token: &str) -> Result<Option<TokenOwner>> {
        let row: Option<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT user_id, device_id, expires_ts FROM access_tokens WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|(user_id, device_id, expires_ts)| TokenOwner {
            user_id,
            device_id,
            expires_ts,
        }))
    }

    /// Exchanges a refresh token for a new pair. Returns the owner, or `None` if the refresh
    /// token is unknown (already used or revoked).
    pub async fn rotate_refresh_token(
        &self,
        old_refresh: &str,
        access_token: &str,
        refresh_token: &str,
        expires_ts: i64,
    ) -> Result<Option<(String, String)>> {
        let mut tx = self.begin("rotate_refresh_token").await?;
        let owner: Option<(String, String)> = sqlx::query_as(
            "DELETE FROM refresh_tokens WHERE token = $1 RETURNING user_id, device_id",
        )
        .bind(old_refresh)
        .fetch_optional(tx.conn())
        .await?;
        let Some((user_id, device_id)) = owner else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM access_tokens WHERE refresh_token = $1")
            .bind(old_refresh)
            .execute(tx.conn())
            .await?;
        let login = NewLogin {
            user_id: &user_id,
            device_id: &device_id,
            display_name: None,
            access_token,
            expires_ts: Some(expires_ts),
            refresh_token: Some(refresh_token),
            ip: None,
        };
        insert_tokens(&mut tx, &login, now_ms()).await?;
        tx.commit().await?;
        Ok(Some((user_id, device_id)))
    }

    /// Deletes the tokens (and optionally the device) behind one access token.
    pub async fn delete_device_tokens(&self, user_id: &str, device_id: &str) -> Result<()> {
        let mut tx = self.begin("delete_device_tokens").await?;
        for sql in [
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2",
        ] {
            sqlx::query(sql)
                .bind(user_id)
                .bind(device_id)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await
    }

    /// Deletes every token of a user except those of `keep_device`.
    pub async fn delete_user_tokens(&self, user_id: &str, keep_device: Option<&str>) -> Result<()> {
        let mut tx = self.begin("delete_user_tokens").await?;
        for sql in [
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2",
            "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id <> $2",
        ] {
            sqlx::query(sql)
                .bind(user_id)
                .bind(keep_device.unwrap_or(""))
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await
    }

    // ---- registration tokens -------------------------------------------------------

    /// Creates a registration token. `Conflict` if it exists.
    pub async fn insert_registration_token(&self, t: &RegistrationToken) -> Result<()> {
        let mut tx = self.begin("insert_registration_token").await?;
        sqlx::query("INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time) VALUES ($1, $2, 0, 0, $3)")
            .bind(&t.token)
            .bind(t.uses_allowed)
            .bind(t.expiry_time)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Loads one registration token.
    pub async fn select_registration_token(
        &self,
        token: &str,
    ) -> Result<Option<RegistrationToken>> {
        let row: Option<(String, Option<i64>, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| RegistrationToken {
            token: r.0,
            uses_allowed: r.1,
            pending: r.2,
            completed: r.3,
            expiry_time: r.4,
        }))
    }

    /// Lists every registration token.
    pub async fn select_registration_tokens(&self) -> Result<Vec<RegistrationToken>> {
        let rows: Vec<(String, Option<i64>, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens ORDER BY token",
        )
        .fetch_all(self.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RegistrationToken {
                token: r.0,
                uses_allowed: r.1,
                pending: r.2,
                completed: r.3,
                expiry_time: r.4,
            })
            .collect())
    }

    /// Updates a token's limits.
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        let mut tx = self.begin("update_registration_token").await?;
        let n = sqlx::query(
            "UPDATE registration_tokens SET uses_allowed = $2, expiry_time = $3 WHERE token = $1",
        )
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_time)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Deletes a token.
    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let mut tx = self.begin("delete_registration_token").await?;
        let n = sqlx::query("DELETE FROM registration_tokens WHERE token = $1")
            .bind(token)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Counts a completed registration against a token, if it is still valid. Returns
    /// whether the use was granted.
    pub async fn use_registration_token(&self, token: &str) -> Result<bool> {
        let mut tx = self.begin("use_registration_token").await?;
        let n = sqlx::query(
            "UPDATE registration_tokens SET completed = completed + 1
             WHERE token = $1 AND (uses_allowed IS NULL OR completed + pending < uses_allowed)
               AND (expiry_time IS NULL OR expiry_time > $2)",
        )
        .bind(token)
        .bind(now_ms())
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- user-interactive auth sessions --------------------------------------------

    /// Creates a UIA session.
    pub async fn insert_uia_session(&self, session_id: &str, user_id: Option<&str>) -> Result<()> {
        let mut tx = self.begin("insert_uia_session").await?;
        sqlx::query("INSERT INTO uia_sessions (session_id, user_id, completed, created_ts) VALUES ($1, $2, '[]', $3)")
            .bind(session_id)
            .bind(user_id)
            .bind(now_ms())
            .execute(tx.conn())
            .await?;
        // Sessions older than a day are abandoned.
        sqlx::query("DELETE FROM uia_sessions WHERE created_ts < $1")
            .bind(now_ms() - 86_400_000)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Loads a UIA session: (user it belongs to, completed stages as JSON).
    pub async fn select_uia_session(
        &self,
        session_id: &str,
    ) -> Result<Option<(Option<String>, String)>> {
        Ok(
            sqlx::query_as("SELECT user_id, completed FROM uia_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(self.reader())
                .await?,
        )
    }

    /// Records the completed stages of a session (JSON list).
    pub async fn update_uia_session(&self, session_id: &str, completed: &str) -> Result<()> {
        let mut tx = self.begin("update_uia_session").await?;
        sqlx::query("UPDATE uia_sessions SET completed = $2 WHERE session_id = $1")
            .bind(session_id)
            .bind(completed)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Deletes a finished session.
    pub async fn delete_uia_session(&self, session_id: &str) -> Result<()> {
        let mut tx = self.begin("delete_uia_session").await?;
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
            .bind(session_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}

async fn insert_tokens(tx: &mut crate::Txn, login: &NewLogin<'_>, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO access_tokens (token, user_id, device_id, expires_ts, refresh_token, created_ts) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(login.access_token)
        .bind(login.user_id)
        .bind(login.device_id)
        .bind(login.expires_ts)
        .bind(login.refresh_token)
        .bind(now)
        .execute(tx.conn())
        .await?;
    if let Some(refresh) = login.refresh_token {
        sqlx::query("INSERT INTO refresh_tokens (token, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(refresh)
            .bind(login.user_id)
            .bind(login.device_id)
            .bind(now)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}
