//! Worker processes of the split shape (docs/architecture.md, "Roles and shapes"). A
//! sync worker follows the replication streams over Redis, reads the shared PostgreSQL,
//! and serves `/sync` and the stateless room reads; it never writes events (its `Rooms`
//! is read-only) and owns no stream writer. Anything else that reaches it is forwarded
//! to main's internal listener when `cluster.main_internal_url` is set.

use std::{sync::Arc, time::Duration};

use axum::Router;
use ganglion_account_api::Accounts;
use ganglion_core::{StreamKind, StreamPos, config::Config};
use ganglion_federation_client::ServerKey;
use ganglion_http::RateLimiter;
use ganglion_rooms::Rooms;
use ganglion_storage::Store;
use ganglion_sync::{Notifier, SyncService};
use ruma::{OwnedServerName, RoomVersionId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    app::{Readiness, Server, StartError, check_period, with_layers},
    internal::Forwarder,
};

/// Builds a worker over the Redis bus and the shared database: a sync worker serves
/// `/sync` and the room reads; a federation sender serves only `/health`, `/ready` and
/// metrics (its sender starts once it has joined its membership:
/// [`start_federation_sender`]).
pub async fn build_worker(
    config: Config,
    instance: &str,
    role: crate::run::Role,
) -> Result<Server, StartError> {
    let config = Arc::new(config);
    let Some(redis_url) = config.bus.redis_url.clone() else {
        return Err(StartError::Config(
            "bus.redis_url: a worker needs the Redis bus".into(),
        ));
    };
    if !config.database_url().starts_with("postgres") {
        return Err(StartError::Config(
            "database.url: workers share PostgreSQL with main".into(),
        ));
    }
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        StartError::Config(format!(
            "cannot create data_dir {}: {e}",
            config.server.data_dir
        ))
    })?;
    let store = Store::connect(
        &config.database_url(),
        config.database.max_connections,
        Duration::from_secs(config.database.acquire_timeout_secs),
    )
    .await?;
    // Migrations are idempotent and serialised by an advisory lock, so a worker that starts
    // before main waits for the schema instead of failing.
    store.migrate().await?;
    let server_name = OwnedServerName::try_from(config.server.server_name.as_str())
        .map_err(|e| StartError::Config(format!("server.server_name: {e}")))?;
    let default_version = RoomVersionId::try_from(config.server.default_room_version.as_str())
        .map_err(|e| StartError::Config(format!("server.default_room_version: {e}")))?;
    // Workers read the signing key only to format nothing they sign; they share main's key.
    let key = Arc::new(ServerKey::load_or_generate(&config.signing_key_path())?);

    let tasks = CancellationToken::new();
    let bus = ganglion_bus_redis::connect(&redis_url, instance, &config.bus.key_prefix)
        .await
        .map_err(|e| StartError::Config(format!("bus.redis_url: {e}")))?;
    let notifier = Notifier::start(store.clone(), &bus, tasks.clone()).await?;
    let readiness = Readiness {
        store: store.clone(),
        replication: notifier.monitor(store.clone(), check_period(&config), tasks.clone()),
        period: check_period(&config),
    };
    let (position_tx, position) = watch::channel(notifier.current().get(StreamKind::Events));
    let mut current = notifier.current_watch();
    let stop = tasks.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = current.changed() => if changed.is_err() { break },
                () = stop.cancelled() => break,
            }
            let events: StreamPos = current.borrow().get(StreamKind::Events);
            position_tx.send_replace(events);
        }
    });
    let rooms = Rooms::reader(
        store.clone(),
        position,
        key,
        server_name.clone(),
        default_version,
    );
    let limit = |l| {
        if config.rate_limits.enabled {
            Some(l)
        } else {
            None
        }
    };
    let accounts = Accounts::new(
        store.clone(),
        rooms.clone(),
        server_name,
        config.registration.clone(),
        config.auth.clone(),
        RateLimiter::new(limit(config.rate_limits.registration)),
        RateLimiter::new(limit(config.rate_limits.login)),
        None,
    );
    let routes = if role == crate::run::Role::Sync {
        let sync = SyncService::new(store.clone(), rooms.clone(), notifier, None);
        Router::new()
            .merge(ganglion_sync::router(sync))
            .merge(ganglion_client_api::read_router(rooms))
    } else {
        Router::new()
    };
    let forward = match (
        &config.cluster.main_internal_url,
        &config.cluster.internal_secret,
    ) {
        (Some(url), Some(secret)) => Some(
            Forwarder::new(url, secret, config.server.max_request_bytes)
                .map_err(StartError::Config)?,
        ),
        _ => None,
    };
    // A federation sender serves no client requests: nothing to forward.
    let forward = forward.filter(|_| role == crate::run::Role::Sync);
    let routes = hand_over_to_main(routes, forward.clone());
    let forwarding = forward.is_some();
    let app = with_layers(
        routes,
        &config,
        accounts.clone(),
        readiness.clone(),
        forward,
    );
    tracing::info!(instance, role = role.name(), forwarding, "worker built");
    Ok(Server {
        app,
        store,
        tasks,
        persister_task: tokio::spawn(async {}),
        config,
        accounts,
        bus,
        internal: None,
        readiness,
        federation: None,
        membership: None,
    })
}

/// Starts a federation sender's sending: the destinations it owns in `membership`, each
/// from its cursor.
pub fn start_federation_sender(
    server: &Server,
    membership: ganglion_cluster::Membership,
) -> Result<(), StartError> {
    let config = &server.config;
    if !config.federation.enabled {
        return Err(StartError::Config(
            "federation.enabled: a federation sender needs federation on".into(),
        ));
    }
    let server_name = config.server.server_name.as_str();
    let key = Arc::new(ServerKey::load_or_generate(&config.signing_key_path())?);
    let client =
        ganglion_federation_client::FederationClient::new(&config.federation, key, server_name)
            .map_err(StartError::Config)?;
    ganglion_federation_sender::start(
        client,
        server.store.clone(),
        &server.bus,
        server.tasks.clone(),
        Some(membership),
        // No inbound listener here to learn that a destination is back.
        ganglion_federation_client::Wakers::default(),
    );
    tracing::info!("federation sender started");
    Ok(())
}

/// A read a worker answered with [`NEEDS_MAIN_HEADER`] (a `/messages` page that ran past
/// our earliest event of a room with more history elsewhere, which only main may fetch)
/// is sent to main instead, and main's answer goes back. The header never leaves.
fn hand_over_to_main(routes: Router, forward: Option<Forwarder>) -> Router {
    use axum::{body::Body, extract::Request, middleware::Next};
    use ganglion_client_api::rooms::read::NEEDS_MAIN_HEADER;
    routes.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let forward = forward.clone();
            async move {
                let copy = (req.method() == http::Method::GET).then(|| {
                    let (parts, _) = Request::new(()).into_parts();
                    let mut r = Request::from_parts(parts, Body::empty());
                    *r.method_mut() = req.method().clone();
                    *r.uri_mut() = req.uri().clone();
                    *r.headers_mut() = req.headers().clone();
                    r.extensions_mut().clone_from(req.extensions());
                    r
                });
                let mut resp = next.run(req).await;
                if resp.headers_mut().remove(NEEDS_MAIN_HEADER).is_none() {
                    return resp;
                }
                match (forward, copy) {
                    (Some(f), Some(copy)) => {
                        metrics::counter!("ganglion_worker_handed_to_main_total").increment(1);
                        Forwarder::handle(axum::extract::State(f), copy).await
                    }
                    _ => resp,
                }
            }
        },
    ))
}
