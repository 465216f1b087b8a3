//! What other servers' directories say, for our clients: a page of another server's
//! public room list (Server-Server API, "Public Room Directory"), and the room an alias
//! of another server names (`/query/directory`, "Querying for information").

use ganglion_core::{Error, ErrorKind, Result, percent::percent_encode};
use ganglion_federation_client::{FedError, Federation, Method};
use ruma::{OwnedRoomId, RoomAliasId, ServerName};
use serde_json::{Map, Value, json};

use crate::{
    Rooms,
    directory::{DirectoryQuery, MAX_DIRECTORY_PAGE, Network},
    storage_error,
};

impl Rooms {
    /// A page of the public room directory for a client: ours, or (`server` another's)
    /// that server's over federation; 403 `M_FORBIDDEN` for another's when federation
    /// is off.
    pub async fn directory_page(
        &self,
        server: Option<&ServerName>,
        q: DirectoryQuery,
    ) -> Result<Value> {
        match server.filter(|s| *s != self.server_name()) {
            None => Ok(self.public_rooms(&q, |_| true).await?.to_json()),
            Some(remote) => {
                let fed = self.inner.federation.as_ref().ok_or_else(|| {
                    Error::forbidden("querying other servers' directories needs federation")
                })?;
                remote_public_rooms(fed, remote, &q).await
            }
        }
    }

    /// The room an alias names and the servers to join it through
    /// (`GET /directory/room/{roomAlias}`): ours from the database (this server), another
    /// server's by asking it; 404 `M_NOT_FOUND` for another's when federation is off.
    pub async fn alias_room(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<String>)> {
        if alias.server_name() != self.server_name() {
            let Some(fed) = &self.inner.federation else {
                return Err(Error::not_found("room alias not found (federation is off)"));
            };
            return query_directory(fed, alias).await;
        }
        let (room_id, _) = self
            .inner
            .store
            .select_alias(alias.as_str())
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("room alias not found"))?;
        let room_id = OwnedRoomId::try_from(room_id)
            .map_err(|_| Error::internal("stored room id is invalid"))?;
        Ok((room_id, vec![self.server_name().to_string()]))
    }
}

/// Resolves another server's room alias (`/query/directory`): the room and the servers
/// to join it through (the alias's own server last).
pub(crate) async fn query_directory(
    fed: &Federation,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<String>)> {
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        percent_encode(alias.as_str())
    );
    let v = fed.client.get(alias.server_name().as_str(), &path).await?;
    let room_id = v
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or_else(|| Error::not_found("the alias's server gave no room id"))?;
    let mut servers: Vec<String> = v
        .get("servers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|s| ServerName::parse(s).is_ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let own = alias.server_name().to_string();
    if !servers.contains(&own) {
        servers.push(own);
    }
    Ok((room_id, servers))
}

/// Most rooms of another server's answer passed on to a client.
const MAX_REMOTE_CHUNK: usize = 2 * MAX_DIRECTORY_PAGE;

/// A page of another server's directory. With a filter, asks with `POST` (MSC2197);
/// a server that does not know it (404, 405, `M_UNRECOGNIZED`) is asked with `GET`
/// for its whole list, filtered here and not paginated (Synapse
/// `handlers/room_list.py`, `get_remote_public_room_list`).
async fn remote_public_rooms(
    fed: &Federation,
    server: &ServerName,
    q: &DirectoryQuery,
) -> Result<Value> {
    let path = "/_matrix/federation/v1/publicRooms";
    let server = server.as_str();
    let (all, instance) = match &q.network {
        Network::Matrix => (false, None),
        Network::All => (true, None),
        Network::ThirdParty(i) => (false, Some(i.as_str())),
    };
    let filtered = q.search.is_some() || q.room_types.is_some();
    if filtered {
        let mut body = json!({ "include_all_networks": all, "filter": {} });
        if let Some(i) = instance {
            body["third_party_instance_id"] = json!(i);
        }
        if let Some(l) = q.limit.filter(|l| *l > 0) {
            body["limit"] = json!(l);
        }
        if let Some(s) = &q.since {
            body["since"] = json!(s);
        }
        if let Some(t) = &q.search {
            body["filter"]["generic_search_term"] = json!(t);
        }
        if let Some(t) = &q.room_types {
            body["filter"]["room_types"] = json!(t);
        }
        match fed
            .client
            .request(Method::POST, server, path, Some(&body))
            .await
        {
            Ok(v) => return Ok(checked_page(&v, |_| true)),
            Err(FedError::Remote { status, body, .. })
                if status == 404
                    || status == 405
                    || body.get("errcode").and_then(Value::as_str) == Some("M_UNRECOGNIZED") =>
            {
                tracing::debug!(%server, "no filtered /publicRooms; filtering here");
            }
            Err(e) => return Err(remote_error(server, e)),
        }
    }
    let mut query = vec![format!("include_all_networks={all}")];
    if let Some(i) = instance {
        query.push(format!("third_party_instance_id={}", percent_encode(i)));
    }
    if !filtered {
        if let Some(l) = q.limit.filter(|l| *l > 0) {
            query.push(format!("limit={l}"));
        }
        if let Some(s) = &q.since {
            query.push(format!("since={}", percent_encode(s)));
        }
    }
    let v = fed
        .client
        .get(server, &format!("{path}?{}", query.join("&")))
        .await
        .map_err(|e| remote_error(server, e))?;
    if !filtered {
        return Ok(checked_page(&v, |_| true));
    }
    let term = q.search.as_deref().map(str::to_lowercase);
    let mut page = checked_page(&v, |e| {
        entry_matches(e, term.as_deref(), q.room_types.as_deref())
    });
    // The whole list, filtered here: no tokens into it.
    if let Some(o) = page.as_object_mut() {
        o.remove("next_batch");
        o.remove("prev_batch");
        o.remove("total_room_count_estimate");
    }
    Ok(page)
}

/// A remote directory error for our client: a refusal stays a refusal; anything else
/// says which server failed.
fn remote_error(server: &str, e: FedError) -> Error {
    match &e {
        FedError::Remote { status: 403, .. } => Error::forbidden(format!(
            "You are not allowed to view the public rooms list of {server}"
        )),
        FedError::Remote { .. } | FedError::BadResponse { .. } => Error::new(
            ErrorKind::Unavailable,
            format!("Failed to fetch the room list of {server}: {e}"),
        ),
        _ => e.into(),
    }
}

/// Whether a remote chunk entry matches a filter (for servers that cannot filter).
fn entry_matches(e: &Value, term: Option<&str>, types: Option<&[Option<String>]>) -> bool {
    if let Some(types) = types
        && !types.is_empty()
    {
        let kind = e
            .get("room_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !types.contains(&kind) {
            return false;
        }
    }
    let Some(term) = term.filter(|t| !t.is_empty()) else {
        return true;
    };
    ["name", "topic", "canonical_alias"]
        .iter()
        .filter_map(|k| e.get(*k).and_then(Value::as_str))
        .any(|s| s.to_lowercase().contains(term))
}

/// Another server's directory page, rebuilt from the fields the spec defines, with the
/// right types: entries without a valid room id are dropped.
fn checked_page(v: &Value, keep: impl Fn(&Value) -> bool) -> Value {
    let chunk: Vec<Value> = v
        .get("chunk")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(checked_entry)
                .filter(|e| keep(e))
                .take(MAX_REMOTE_CHUNK)
                .collect()
        })
        .unwrap_or_default();
    let mut out = json!({ "chunk": chunk });
    for k in ["next_batch", "prev_batch"] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            out[k] = json!(s);
        }
    }
    if let Some(n) = v.get("total_room_count_estimate").and_then(Value::as_u64) {
        out["total_room_count_estimate"] = json!(n);
    }
    out
}

fn checked_entry(e: &Value) -> Option<Value> {
    let room_id = e.get("room_id").and_then(Value::as_str)?;
    ruma::RoomId::parse(room_id).ok()?;
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room_id));
    out.insert(
        "num_joined_members".into(),
        json!(
            e.get("num_joined_members")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        ),
    );
    for k in ["world_readable", "guest_can_join"] {
        out.insert(
            k.into(),
            json!(e.get(k).and_then(Value::as_bool).unwrap_or(false)),
        );
    }
    for k in [
        "name",
        "topic",
        "canonical_alias",
        "avatar_url",
        "join_rule",
        "room_type",
    ] {
        if let Some(s) = e.get(k).and_then(Value::as_str) {
            out.insert(k.into(), json!(s));
        }
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_pages_keep_only_the_specs_fields() {
        let v = json!({
            "chunk": [
                { "room_id": "!a:x", "num_joined_members": 3, "world_readable": true, "name": "A", "evil": 1 },
                { "room_id": "not a room", "num_joined_members": 1 },
                { "room_id": "!b:x", "num_joined_members": "many", "topic": 5, "room_type": "m.space" },
                "garbage",
            ],
            "next_batch": "n1",
            "prev_batch": 7,
            "total_room_count_estimate": 2,
        });
        let p = checked_page(&v, |_| true);
        assert_eq!(p["chunk"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            p["chunk"][0],
            json!({ "room_id": "!a:x", "num_joined_members": 3, "world_readable": true, "guest_can_join": false, "name": "A" })
        );
        assert_eq!(p["chunk"][1]["num_joined_members"], 0);
        assert!(p["chunk"][1].get("topic").is_none());
        assert_eq!(p["next_batch"], "n1");
        assert!(p.get("prev_batch").is_none());
        let spaces = checked_page(&v, |e| {
            entry_matches(e, None, Some(&[Some("m.space".into())]))
        });
        assert_eq!(spaces["chunk"][0]["room_id"], "!b:x");
        let named = checked_page(&v, |e| entry_matches(e, Some("a"), None));
        assert_eq!(named["chunk"][0]["room_id"], "!a:x");
        assert_eq!(named["chunk"].as_array().map(Vec::len), Some(1));
    }
}
