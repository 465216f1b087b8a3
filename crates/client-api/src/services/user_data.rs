//! Account data (global, per room, tags), filters, profiles and OpenID tokens.

use std::{sync::Arc, time::Duration};

use ganglion_bus::Row;
use ganglion_core::{Error, Result, StreamPos, percent::percent_encode};
use ganglion_federation_client::FederationClient;
use ganglion_rooms::{Rooms, storage_error, streams::StreamWriter};
use ganglion_storage::Store;
use serde_json::{Value, json};

/// How long an OpenID token works (the spec's example and Synapse's default: an hour).
const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Random characters of an OpenID token (about 190 bits).
const OPENID_TOKEN_CHARS: usize = 32;

/// The user-data service.
#[derive(Clone, Debug)]
pub struct UserData {
    store: Store,
    rooms: Rooms,
    account_data: Arc<StreamWriter>,
    /// Other servers' users' profiles, when federation is on.
    federation: Option<FederationClient>,
}

impl UserData {
    /// The service over its dependencies; `federation` is `None` when federation is off.
    pub fn new(
        store: Store,
        rooms: Rooms,
        account_data: Arc<StreamWriter>,
        federation: Option<FederationClient>,
    ) -> UserData {
        UserData {
            store,
            rooms,
            account_data,
            federation,
        }
    }

    /// Issues an OpenID token for `user`: (token, lifetime). Only
    /// `/_matrix/federation/v1/openid/userinfo` accepts it.
    pub async fn issue_openid_token(&self, user: &ruma::UserId) -> Result<(String, Duration)> {
        use rand::{Rng, distr::Alphanumeric};
        let token: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(OPENID_TOKEN_CHARS)
            .map(char::from)
            .collect();
        let now = ganglion_core::time::now_ms();
        let lifetime_ms = i64::try_from(OPENID_TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX);
        self.store
            .insert_openid_token(&token, user.as_str(), now.saturating_add(lifetime_ms), now)
            .await
            .map_err(storage_error)?;
        Ok((token, OPENID_TOKEN_LIFETIME))
    }

    /// Sets an account data entry (`room_id` empty for global).
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
        content: &Value,
    ) -> Result<StreamPos> {
        if !content.is_object() {
            return Err(Error::bad_json(
                "account data content must be a JSON object",
            ));
        }
        let text = content.to_string();
        let row = Row {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
            kind: kind.to_owned(),
            ..Default::default()
        };
        self.account_data
            .write(vec![row], |pos| async move {
                self.store
                    .upsert_account_data(user_id, room_id, kind, &text, pos)
                    .await
                    .map_err(storage_error)
            })
            .await
    }

    /// Reads an account data entry; `M_NOT_FOUND` when unset.
    pub async fn account_data(&self, user_id: &str, room_id: &str, kind: &str) -> Result<Value> {
        let text = self
            .store
            .select_account_data(user_id, room_id, kind)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("account data not found"))?;
        serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))
    }

    /// The room's `m.tag` content (`{"tags": {}}` when unset).
    pub async fn tags(&self, user_id: &str, room_id: &str) -> Result<Value> {
        match self
            .store
            .select_account_data(user_id, room_id, "m.tag")
            .await
            .map_err(storage_error)?
        {
            Some(t) => serde_json::from_str(&t).map_err(|e| Error::internal(e.to_string())),
            None => Ok(json!({ "tags": {} })),
        }
    }

    /// Adds or replaces one tag.
    pub async fn set_tag(
        &self,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Value,
    ) -> Result<StreamPos> {
        if tag.len() > 255 {
            return Err(Error::invalid_param("tag names are at most 255 bytes"));
        }
        let mut tags = self.tags(user_id, room_id).await?;
        tags["tags"][tag] = info;
        self.set_account_data(user_id, room_id, "m.tag", &tags)
            .await
    }

    /// Removes one tag (absent tags are fine).
    pub async fn delete_tag(&self, user_id: &str, room_id: &str, tag: &str) -> Result<StreamPos> {
        let mut tags = self.tags(user_id, room_id).await?;
        if let Some(map) = tags.get_mut("tags").and_then(Value::as_object_mut) {
            map.remove(tag);
        }
        self.set_account_data(user_id, room_id, "m.tag", &tags)
            .await
    }

    /// Stores a filter, returning its id.
    pub async fn create_filter(&self, user_id: &str, filter: &Value) -> Result<String> {
        let id = self
            .store
            .insert_filter(user_id, &filter.to_string())
            .await
            .map_err(storage_error)?;
        Ok(id.to_string())
    }

    /// Loads a filter; `M_NOT_FOUND` for unknown ids.
    pub async fn filter(&self, user_id: &str, filter_id: &str) -> Result<Value> {
        let id: i64 = filter_id
            .parse()
            .map_err(|_| Error::not_found("no such filter"))?;
        let text = self
            .store
            .select_filter(user_id, id)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("no such filter"))?;
        serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))
    }

    /// A user's profile: (displayname, avatar_url). `M_NOT_FOUND` for unknown users.
    pub async fn profile(&self, user_id: &str) -> Result<(Option<String>, Option<String>)> {
        let user = self
            .store
            .select_user(user_id)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("profile not found"))?;
        Ok((user.displayname, user.avatar_url))
    }

    /// A profile: ours from the database, another server's user's by asking their
    /// server (`/query/profile`); 404 `M_NOT_FOUND` for theirs when federation is off.
    pub async fn profile_of(
        &self,
        user_id: &ruma::UserId,
    ) -> Result<(Option<String>, Option<String>)> {
        if user_id.server_name() == self.rooms.server_name() {
            return self.profile(user_id.as_str()).await;
        }
        let Some(client) = &self.federation else {
            return Err(Error::not_found("profile not found (federation is off)"));
        };
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            percent_encode(user_id.as_str())
        );
        let v = client.get(user_id.server_name().as_str(), &path).await?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok((field("displayname"), field("avatar_url")))
    }

    /// Sets one profile field and updates the user's member events.
    pub async fn set_profile_field(
        &self,
        user_id: &ruma::UserId,
        field: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let (mut name, mut avatar) = self.profile(user_id.as_str()).await?;
        match field {
            "displayname" => name = value.map(str::to_owned),
            "avatar_url" => avatar = value.map(str::to_owned),
            _ => {
                return Err(Error::new(
                    ganglion_core::ErrorKind::Unrecognized,
                    "unsupported profile field",
                ));
            }
        }
        self.store
            .update_profile(user_id.as_str(), name.as_deref(), avatar.as_deref())
            .await
            .map_err(storage_error)?;
        self.rooms.refresh_member_profile(user_id).await?;
        Ok(())
    }
}
