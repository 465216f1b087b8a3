//! sync: `/sync`, the notifier, token clamping and waiting (docs/architecture.md, "Token formats").
//!
//! Depends on `core`, `storage`, `bus`, `rooms` (history reads and event formatting) and
//! `http`. Writes nothing but to-device acknowledgements.

pub mod compute;
mod e2ee;
pub mod filter;
pub mod notifier;
mod rooms;
mod unread;

use std::time::Duration;

use axum::{Json, Router, extract::State};
use ganglion_core::{Error, StreamKind, SyncToken};
use ganglion_http::{ApiResult, Authed, RumaResponse, route};
use ganglion_rooms::storage_error;
use ruma::{
    OwnedUserId,
    api::client::{filter::FilterDefinition, keys::get_key_changes, sync::sync_events},
};
use serde_json::Value;

pub use compute::SyncService;
pub use notifier::{Notifier, Replication};

use crate::{compute::SyncRequest, filter::SyncFilter, notifier::Wake};

/// The longest long-poll we honour.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a worker waits to catch up with a token it has not seen yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The `/sync` routes, with state applied.
pub fn router(sync: SyncService) -> Router {
    let r = Router::new();
    let r = route::<sync_events::v3::Request, _, _, _>(r, sync_events);
    let r = route::<get_key_changes::v3::Request, _, _, _>(r, get_key_changes);
    r.with_state(sync)
}

async fn load_filter(
    sync: &SyncService,
    user_id: &str,
    filter: Option<&sync_events::v3::Filter>,
) -> ApiResult<SyncFilter> {
    let def: FilterDefinition = match filter {
        None => return Ok(SyncFilter::default()),
        Some(sync_events::v3::Filter::FilterDefinition(d)) => d.clone(),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let id: i64 = id
                .parse()
                .map_err(|_| Error::invalid_param("unknown filter id"))?;
            let text = sync
                .store()
                .select_filter(user_id, id)
                .await
                .map_err(storage_error)?
                .ok_or_else(|| Error::invalid_param("unknown filter id"))?;
            serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))?
        }
    };
    Ok(SyncFilter::from_definition(&def))
}

/// `GET /_matrix/client/v3/sync`. Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync>
pub async fn sync_events(
    State(sync): State<SyncService>,
    req: Authed<sync_events::v3::Request>,
) -> ApiResult<Json<compute::SyncBody>> {
    let b = &req.body;
    let user_id = req.user().as_str();
    let device_id = req.device().as_str();
    let filter = load_filter(&sync, user_id, b.filter.as_ref()).await?;
    let notifier = sync.notifier();
    let since: Option<SyncToken> = match &b.since {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| compute::bad_token())?),
    };
    if let Some(s) = since {
        // A token from another worker may be ahead of us: wait for our view to cover it.
        // Positions never allocated (a token from before a database reset) are clamped.
        if !notifier.wait_for(&s, CATCH_UP_WAIT).await {
            tracing::debug!(since = %s, "since token ahead of this worker after waiting; clamping");
        }
        // The client acknowledged to-device messages up to its token.
        sync.store()
            .delete_to_device(user_id, device_id, s.get(StreamKind::ToDevice).0)
            .await
            .map_err(storage_error)?;
    }
    let timeout = b.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wakes = notifier.subscribe();
    // Requests that answer at once read the committed positions (read-your-writes across
    // processes); long-polls are woken by the bus instead.
    let immediate = since.is_none() || b.full_state || timeout.is_zero();
    loop {
        let now = sync.now(immediate).await?;
        // Never hand out a token below the client's: clamp each stream to what we know.
        let since_clamped = since.map(|s| s.min(&now));
        let outcome = sync
            .compute(&SyncRequest {
                user_id,
                device_id,
                since: since_clamped,
                now,
                full_state: b.full_state,
                filter: &filter,
            })
            .await?;
        let done = !outcome.is_empty
            || since.is_none()
            || b.full_state
            || tokio::time::Instant::now() >= deadline;
        if done {
            let mut next = now.with(
                StreamKind::ToDevice,
                ganglion_core::StreamPos(outcome.to_device_upto),
            );
            if let Some(s) = since {
                // Streams this worker has not caught up on keep the client's position.
                for kind in StreamKind::ALL {
                    if s.get(kind) > next.get(kind) && kind != StreamKind::Typing {
                        next.set(kind, s.get(kind));
                    }
                }
            }
            let mut body = outcome.body;
            body.rest
                .insert("next_batch".into(), Value::String(next.to_string()));
            return Ok(Json(body));
        }
        // Wait for something that concerns this user, or the deadline.
        loop {
            let wake = tokio::select! {
                w = wakes.recv() => w,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match wake {
                Ok(Wake::Entry(entry)) => {
                    let relevant = entry.rows.iter().any(|row| {
                        outcome.joined.contains(&row.room_id)
                            || (!row.user_id.is_empty() && row.user_id == user_id)
                    });
                    if relevant {
                        break;
                    }
                }
                Ok(Wake::All) | Err(_) => break,
            }
        }
    }
}

/// `GET /_matrix/client/v3/keys/changes`: the device-list changes between two `/sync`
/// tokens, as `/sync`'s `device_lists` would report them.
/// Spec: <https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3keyschanges>
pub async fn get_key_changes(
    State(sync): State<SyncService>,
    req: Authed<get_key_changes::v3::Request>,
) -> ApiResult<RumaResponse<get_key_changes::v3::Response>> {
    let token = |s: &str| {
        s.parse::<SyncToken>()
            .map_err(|_| Error::invalid_param(format!("not a sync token: {s}")))
    };
    let (from, to) = (token(&req.body.from)?, token(&req.body.to)?);
    let (changed, left) =
        e2ee::device_list_delta(sync.store(), req.user().as_str(), &from, &to).await?;
    let ids = |v: std::collections::BTreeSet<String>| -> Vec<OwnedUserId> {
        v.into_iter()
            .filter_map(|u| OwnedUserId::try_from(u).ok())
            .collect()
    };
    Ok(RumaResponse(get_key_changes::v3::Response::new(
        ids(changed),
        ids(left),
    )))
}
