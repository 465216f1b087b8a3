//! Building the all-in-one process and serving it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use ganglion_account_api::Accounts;
use ganglion_bus::Bus;
use ganglion_client_api::{
    ClientApi, ClientConfig, Ephemeral, UserData, push_rules::PushRulesState,
};
use ganglion_core::{Error, ErrorKind, config::Config};
use ganglion_e2ee::{E2eeApi, Keys, ToDevice, backup::Backup, dehydrated::Dehydrated};
use ganglion_federation_client::ServerKey;
use ganglion_http::{ApiError, BodyLimit, ClientIp, RateLimiter};
use ganglion_push::{Evaluator, RulesetCache};
use ganglion_rooms::{Persister, Rooms, streams::StreamWriters, typing::Typing};
use ganglion_storage::Store;
use ganglion_sync::{Notifier, SyncService};
use metrics_exporter_prometheus::PrometheusHandle;
use ruma::{OwnedServerName, RoomVersionId};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{Any, CorsLayer};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error("database: {0}")]
    Storage(#[from] ganglion_storage::Error),
    /// The signing key.
    #[error("{0}")]
    Key(#[from] ganglion_federation_client::KeyError),
    /// A service refused to start.
    #[error("{0}")]
    Service(#[from] Error),
    /// The configuration.
    #[error("{0}")]
    Config(String),
    /// A listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Everything the all-in-one process runs.
pub struct Server {
    /// The client API router (all roles merged), layers applied.
    pub app: Router,
    /// The database.
    pub store: Store,
    /// Cancels background tasks on shutdown.
    pub tasks: CancellationToken,
    /// The persister task, awaited on shutdown so queued events are written.
    pub persister_task: JoinHandle<()>,
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The accounts service (for admin subcommands).
    pub accounts: Accounts,
    /// The replication bus (flushed on shutdown).
    pub bus: Bus,
    /// main's internal listener's routes (secret checked), when `listeners.internal` is on.
    pub internal: Option<Router>,
    /// What `/ready` checks.
    pub readiness: Readiness,
    /// The federation routes and TLS configuration, when `federation.enabled`.
    pub federation: Option<(Router, rustls::ServerConfig)>,
    /// This process's membership of its role (left on shutdown, before the database
    /// closes).
    pub membership: Option<ganglion_cluster::Membership>,
}

/// What `/ready` checks: the database answers, and replication is caught up (everything
/// committed one check ago has been applied) as of a recent check.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// The database.
    pub store: Store,
    /// The notifier's replication checks.
    pub replication: tokio::sync::watch::Receiver<ganglion_sync::Replication>,
    /// How often the checks run.
    pub period: Duration,
}

/// Connects, migrates and constructs every service of the all-in-one shape.
pub async fn build_all(config: Config) -> Result<Server, StartError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        StartError::Config(format!(
            "cannot create data_dir {}: {e}",
            config.server.data_dir
        ))
    })?;
    let url = config.database_url();
    let store = Store::connect(
        &url,
        config.database.max_connections,
        Duration::from_secs(config.database.acquire_timeout_secs),
    )
    .await?;
    let applied = store.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "database migrated");
    }
    let server_name = OwnedServerName::try_from(config.server.server_name.as_str())
        .map_err(|e| StartError::Config(format!("server.server_name: {e}")))?;
    let default_version = RoomVersionId::try_from(config.server.default_room_version.as_str())
        .map_err(|e| StartError::Config(format!("server.default_room_version: {e}")))?;
    let key = Arc::new(ServerKey::load_or_generate(&config.signing_key_path())?);
    tracing::info!(key_id = %key.key_id, "signing key loaded");
    let federation_client = if config.federation.enabled {
        Some(
            ganglion_federation_client::FederationClient::new(
                &config.federation,
                key.clone(),
                server_name.as_str(),
            )
            .map_err(StartError::Config)?,
        )
    } else {
        None
    };

    let tasks = CancellationToken::new();
    let bus = match &config.bus.redis_url {
        Some(url) => {
            let bus = ganglion_bus_redis::connect(url, "main", &config.bus.key_prefix)
                .await
                .map_err(|e| StartError::Config(format!("bus.redis_url: {e}")))?;
            tracing::info!(prefix = %config.bus.key_prefix, "replication bus: Redis Streams");
            bus
        }
        None => Bus::in_process("main"),
    };
    // Push rules: the cache the evaluator reads and the /pushrules handlers refresh.
    let rulesets = RulesetCache::new(store.clone());
    let evaluator = config
        .push
        .enabled
        .then(|| Evaluator::new(store.clone(), server_name.clone(), rulesets.clone()));
    let (persister, persister_task) =
        Persister::start(store.clone(), bus.clone(), evaluator, tasks.clone()).await?;
    let writers = StreamWriters::new(&store, &bus).await?;
    let typing = Typing::new(writers.typing.clone());
    // Other servers, for the services that call them: the client and the key ring.
    let outbound =
        federation_client
            .as_ref()
            .map(|client| ganglion_federation_client::Federation {
                client: client.clone(),
                keys: ganglion_federation_client::KeyRing::new(
                    store.clone(),
                    client.clone(),
                    config.federation.trusted_key_servers.clone(),
                ),
            });
    let rooms = Rooms::new(
        store.clone(),
        persister,
        key.clone(),
        server_name.clone(),
        default_version,
        outbound.clone(),
    );
    let e2e_keys = Keys::new(
        store.clone(),
        server_name.clone(),
        writers.device_lists.clone(),
        outbound.clone(),
    );
    let to_device = ToDevice::new(
        store.clone(),
        server_name.clone(),
        writers.to_device.clone(),
        outbound.is_some(),
    );
    let federation = match &outbound {
        Some(ganglion_federation_client::Federation { client, keys }) => {
            // In the split shape the federation-sender processes send instead.
            let wakers = ganglion_federation_client::Wakers::default();
            if !config.federation.sender_workers {
                ganglion_federation_sender::start(
                    client.clone(),
                    store.clone(),
                    &bus,
                    tasks.clone(),
                    None,
                    wakers.clone(),
                );
            }
            let fed = &config.federation;
            let tls = ganglion_federation::listener::tls_config(
                fed.tls_certificate_path.as_deref().unwrap_or_default(),
                fed.tls_private_key_path.as_deref().unwrap_or_default(),
            )
            .map_err(StartError::Config)?;
            let api = ganglion_federation::FederationApi {
                server_name: server_name.to_string(),
                key: key.clone(),
                keys: keys.clone(),
                store: store.clone(),
                key_valid_ms: i64::try_from(fed.key_valid_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                old_keys: fed.old_signing_keys.clone(),
                rooms: rooms.clone(),
                typing: typing.clone(),
                receipts: writers.receipts.clone(),
                device_lists: writers.device_lists.clone(),
                e2e_keys: e2e_keys.clone(),
                to_device: to_device.clone(),
                client: client.clone(),
                wakers,
                txns: Default::default(),
            };
            Some((ganglion_federation::router(api), tls))
        }
        None => None,
    };
    let notifier = Notifier::start(store.clone(), &bus, tasks.clone()).await?;
    let readiness = Readiness {
        store: store.clone(),
        replication: notifier.monitor(store.clone(), check_period(&config), tasks.clone()),
        period: check_period(&config),
    };

    let limit = |l| {
        if config.rate_limits.enabled {
            Some(l)
        } else {
            None
        }
    };
    let user_data = UserData::new(
        store.clone(),
        rooms.clone(),
        writers.account_data.clone(),
        federation_client.clone(),
    );
    let ephemeral = Ephemeral::new(
        store.clone(),
        rooms.clone(),
        typing.clone(),
        writers.receipts.clone(),
        user_data.clone(),
    );
    let public_baseurl = config
        .server
        .public_baseurl
        .clone()
        .unwrap_or_else(|| format!("http://{}/", config.listeners.client));
    let client = ClientApi {
        rooms: rooms.clone(),
        user_data,
        ephemeral,
        config: Arc::new(ClientConfig {
            public_baseurl,
            default_room_version: config.server.default_room_version.clone(),
        }),
        message_limit: Arc::new(RateLimiter::new(limit(config.rate_limits.message))),
        room_limit: Arc::new(RateLimiter::new(limit(config.rate_limits.rooms))),
        push_rules: PushRulesState::new(rulesets),
    };
    let accounts = Accounts::new(
        store.clone(),
        rooms.clone(),
        server_name.clone(),
        config.registration.clone(),
        config.auth.clone(),
        RateLimiter::new(limit(config.rate_limits.registration)),
        RateLimiter::new(limit(config.rate_limits.login)),
        Some(writers.device_lists.clone()),
    );
    let e2ee = E2eeApi {
        dehydrated: Dehydrated::new(e2e_keys.clone(), writers.to_device.clone()),
        keys: e2e_keys,
        to_device,
        accounts: accounts.clone(),
        backup: Backup::new(store.clone()),
    };
    let sync = SyncService::new(store.clone(), rooms, notifier, Some(writers.clone()));
    let accounts_for_cli = accounts.clone();
    let bus_handle = bus.clone();

    spawn_maintenance(&tasks, typing, writers, store.clone());

    let routes = Router::new()
        .merge(ganglion_client_api::router(client))
        .merge(ganglion_sync::router(sync))
        .merge(ganglion_account_api::router(accounts.clone()))
        .merge(ganglion_e2ee::router(e2ee));
    // The internal listener serves the same routes behind the secret; the address a
    // worker forwards is the client's.
    let internal = match (config.listeners.internal, &config.cluster.internal_secret) {
        (Some(_), Some(secret)) => {
            let mut trusting = (*config).clone();
            trusting.listeners.x_forwarded = true;
            let app = with_layers(
                routes.clone(),
                &trusting,
                accounts.clone(),
                readiness.clone(),
                None,
            );
            Some(crate::internal::require_secret(app, secret))
        }
        _ => None,
    };
    let app = with_layers(routes, &config, accounts, readiness.clone(), None);
    Ok(Server {
        app,
        store,
        tasks,
        persister_task,
        config,
        accounts: accounts_for_cli,
        bus: bus_handle,
        internal,
        readiness,
        federation,
        membership: None,
    })
}

/// How often replication is checked (and `/ready` refreshed): the membership heartbeat.
pub(crate) fn check_period(config: &Config) -> Duration {
    Duration::from_millis(config.cluster.heartbeat_ms.max(100))
}

/// The layers every client-facing process puts around its routes: JSON 404/405, access
/// tokens, request ids, client IPs and the per-IP limit, metrics, CORS, caught panics;
/// and the probes, which bypass all of it (a load balancer checks often). Requests no
/// route claims go to `forward` (a worker's way to main) or get 404 `M_UNRECOGNIZED`.
pub(crate) fn with_layers(
    routes: Router,
    config: &Config,
    accounts: Accounts,
    readiness: Readiness,
    forward: Option<crate::internal::Forwarder>,
) -> Router {
    let limit = if config.rate_limits.enabled {
        Some(config.rate_limits.per_ip)
    } else {
        None
    };
    let per_ip = Arc::new(RateLimiter::new(limit));
    let body_limit = config.server.max_request_bytes;
    let x_forwarded = config.listeners.x_forwarded;
    let routes = match forward {
        // Unknown paths, and other methods on paths a worker serves only for reading
        // (a PUT of state through a proxy that routes by path alone), go to main.
        Some(f) => {
            let g = f.clone();
            routes
                .fallback(move |req: Request| {
                    crate::internal::Forwarder::handle(State(f.clone()), req)
                })
                .method_not_allowed_fallback(move |req: Request| {
                    crate::internal::Forwarder::handle(State(g.clone()), req)
                })
        }
        None => routes
            .fallback(unrecognized)
            .method_not_allowed_fallback(method_not_allowed),
    };
    let app = routes
        .layer(middleware::from_fn_with_state(
            accounts,
            ganglion_account_api::auth_middleware,
        ))
        .layer(middleware::from_fn(move |req, next| {
            request_context(req, next, body_limit, x_forwarded, per_ip.clone())
        }))
        .layer(middleware::from_fn(record_metrics))
        .layer(cors())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready).with_state(readiness))
        .merge(app)
}

fn spawn_maintenance(
    tasks: &CancellationToken,
    typing: Typing,
    writers: StreamWriters,
    store: Store,
) {
    let token = tasks.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = token.cancelled() => break,
            }
            typing.expire().await;
            writers.heartbeat().await;
            let (size, idle) = store.pool_stats();
            metrics::gauge!("ganglion_db_pool_connections").set(f64::from(size));
            metrics::gauge!("ganglion_db_pool_idle").set(idle as f64);
        }
    });
}

/// CORS as the spec asks (Client-Server API, "Web Browser Clients").
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ])
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError(Error::internal("handler panicked")).into_response()
}

async fn unrecognized() -> ApiError {
    ApiError(Error::new(ErrorKind::Unrecognized, "Unrecognized request"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(
        ErrorKind::MethodNotAllowed,
        "Unrecognized request",
    ))
}

async fn health() -> &'static str {
    "OK"
}

async fn ready(State(r): State<Readiness>) -> Response {
    if !r.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response();
    }
    let rep = *r.replication.borrow();
    let age = ganglion_core::time::now_ms() - rep.checked_ms;
    let stale = age > 3 * i64::try_from(r.period.as_millis()).unwrap_or(i64::MAX);
    if !rep.caught_up || stale {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "replication not caught up (or not checked recently)",
        )
            .into_response();
    }
    (StatusCode::OK, "OK").into_response()
}

/// Per request: a request id (taken from `X-Request-Id` or made up, and echoed), the
/// client IP, the body limit, and the coarse per-IP flood guard.
async fn request_context(
    mut req: Request,
    next: Next,
    body_limit: usize,
    x_forwarded: bool,
    per_ip: Arc<RateLimiter>,
) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..16)
                .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                .collect()
        });
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // Behind a reverse proxy every peer is the proxy: take the client from the header the
    // proxy sets (its right-most entry is the one the proxy itself saw).
    let forwarded = x_forwarded
        .then(|| req.headers().get("x-forwarded-for"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
    let ip = forwarded.or(peer);
    if let Some(ip) = ip {
        req.extensions_mut().insert(ClientIp(ip));
        if let Err(e) = per_ip.check(&ip.to_string()) {
            return ApiError(e).into_response();
        }
    }
    req.extensions_mut().insert(BodyLimit(body_limit));
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.uri().path());
    let mut resp = {
        let _enter = span.enter();
        tracing::debug!("request");
        drop(_enter);
        tracing::Instrument::instrument(next.run(req), span.clone()).await
    };
    if let Some(detail) = resp
        .extensions()
        .get::<ganglion_http::error::InternalDetail>()
    {
        let _enter = span.enter();
        tracing::error!(request_id = %request_id, detail = %detail.0, status = %resp.status(), "request failed");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Requests by endpoint and status, and latency histograms.
async fn record_metrics(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("ganglion_http_requests_total", "endpoint" => endpoint.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("ganglion_http_request_duration_seconds", "endpoint" => endpoint, "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Serves the client API on `listener` (and metrics on `metrics`) until `shutdown`
/// resolves; then drains requests (bounded), stops tasks and closes the database.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    metrics: Option<(TcpListener, PrometheusHandle)>,
    internal: Option<TcpListener>,
    federation_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Server {
        app,
        store,
        tasks,
        persister_task,
        config,
        bus,
        internal: internal_app,
        readiness,
        federation,
        membership,
        ..
    } = server;
    let stop = CancellationToken::new();
    if let Some((l, handle)) = metrics {
        let metrics_app = Router::new()
            .route("/metrics", get(move || std::future::ready(handle.render())))
            .route("/health", get(health))
            .route("/ready", get(ready).with_state(readiness));
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, metrics_app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    if let (Some(l), Some((router, tls))) = (federation_listener, federation) {
        tokio::spawn(ganglion_federation::listener::serve(
            l,
            tls,
            router,
            stop.clone(),
        ));
    }
    if let (Some(l), Some(internal_app)) = (internal, internal_app) {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(
                l,
                internal_app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        });
    }
    let stop_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_signal.cancel();
    });
    let started = std::time::Instant::now();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let handle = tokio::spawn(async move { server.await });
    stop.cancelled().await;
    tracing::info!("shutting down: draining requests");
    match tokio::time::timeout(grace, handle).await {
        Ok(_) => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "requests drained"
        ),
        Err(_) => tracing::warn!("requests still running after the grace period; closing them"),
    }
    let t = std::time::Instant::now();
    tasks.cancel();
    let _ = tokio::time::timeout(grace, persister_task).await;
    if let Some(m) = membership {
        // The lease is dropped with the database still open.
        let _ = tokio::time::timeout(grace, m.left()).await;
    }
    tracing::info!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "background tasks stopped; queued events written"
    );
    let t = std::time::Instant::now();
    let _ = tokio::time::timeout(grace, bus.flush()).await;
    tracing::info!(elapsed_ms = t.elapsed().as_millis() as u64, "bus flushed");
    store.close().await;
    tracing::info!("database closed; goodbye");
    Ok(())
}
