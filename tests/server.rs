//! Starting and stopping a real `ganglion` process for a test.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Which database the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the test's temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database, dropped afterwards.
    Postgres,
    /// The split shape: `ganglion-main` and two `ganglion-sync` workers behind nginx, over
    /// a fresh PostgreSQL database and Redis. `base` is nginx; restarts restart main.
    Split,
}

/// A running server and everything it owns.
pub struct TestServer {
    pub base: String,
    pub port: u16,
    pub dir: PathBuf,
    pub backend: Backend,
    pub db_name: Option<String>,
    pub config_path: PathBuf,
    /// Where main itself listens (differs from `base` behind nginx).
    pub main_base: String,
    child: Option<Child>,
    /// Sync workers of the split shape, in the order nginx lists them.
    extras: Vec<Worker>,
    /// nginx in front of the split shape.
    proxy: Option<Worker>,
    /// main's client port (split shape).
    main_port: u16,
}

/// The `ganglion` binary: $GANGLION_BIN, or next to the test executable's directory.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("GANGLION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe path");
    // target/debug/deps/it-<hash> -> target/debug/ganglion
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("ganglion")
}

/// Another binary of the workspace (`ganglion-sync`, …), next to `ganglion`.
pub fn sibling_binary(name: &str) -> PathBuf {
    binary().with_file_name(name)
}

/// A worker process started next to a [`TestServer`], killed when dropped.
pub struct Worker {
    pub base: String,
    child: Child,
    /// Its metrics listener (`http://host:port`), when it has one.
    pub metrics: Option<String>,
}

impl Worker {
    /// How many requests it has answered whose route contains `endpoint` (from its
    /// Prometheus metrics).
    pub async fn requests_served(&self, endpoint: &str) -> u64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with("ganglion_http_requests_total{") && l.contains(endpoint))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Its Prometheus metrics (empty without a metrics listener).
    pub async fn metrics_text(&self) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        crate::http()
            .build()
            .expect("http client")
            .get(format!("{m}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `GET /ready` on its metrics listener: the status.
    pub async fn ready_status(&self) -> u16 {
        let Some(m) = &self.metrics else { return 0 };
        crate::http()
            .build()
            .expect("http client")
            .get(format!("{m}/ready"))
            .send()
            .await
            .expect("ready")
            .status()
            .as_u16()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("worker port")
    }

    /// Stops it with SIGTERM (a clean shutdown: it drains requests and leaves its role's
    /// membership) and waits up to 30 s.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL admin URL for creating test databases.
pub fn pg_url() -> String {
    std::env::var("GANGLION_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A free loopback port no other test process has been handed in the last two minutes.
/// Test processes run in parallel and each server binds its ports a moment after
/// choosing them; without the shared claim file, two processes were seen to get the same
/// port from the kernel (one server then fails with "Address already in use").
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind port 0")
            .local_addr()
            .expect("addr")
            .port();
        if claim_port(port) {
            return port;
        }
    }
}

/// Records `port` in a file shared by every test process (under an exclusive lock);
/// false if another claimed it recently.
fn claim_port(port: u16) -> bool {
    use std::io::{Read, Seek, Write};
    let path = std::env::temp_dir().join("ganglion-test-ports");
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    else {
        return true;
    };
    if f.lock().is_err() {
        return true;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let mut live: Vec<(u16, u64)> = text
        .lines()
        .filter_map(|l| {
            let (p, t) = l.split_once(' ')?;
            Some((p.parse().ok()?, t.parse().ok()?))
        })
        .filter(|(_, t)| now.saturating_sub(*t) < 120)
        .collect();
    if live.iter().any(|(p, _)| *p == port) {
        return false;
    }
    live.push((port, now));
    let out: String = live.iter().map(|(p, t)| format!("{p} {t}\n")).collect();
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = f.write_all(out.as_bytes());
    true
}

fn unique(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let s: String = (0..10)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)).to_ascii_lowercase())
        .collect();
    format!("{prefix}_{s}")
}

async fn pg_admin(sql: &str) {
    use sqlx::Connection;
    let url = format!("{}/postgres", pg_url());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL (set GANGLION_TEST_PG)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

impl TestServer {
    /// Starts a server with open registration and rate limits off, plus `extra` TOML.
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, "").await
    }

    /// Starts a server with extra configuration appended (TOML sections).
    pub async fn start_with(backend: Backend, extra: &str) -> TestServer {
        Self::start_opts(backend, extra, None).await
    }

    /// Starts the split shape on a Redis of the test's own (`redis://host:port`).
    pub async fn start_split_on_redis(redis: &str) -> TestServer {
        Self::start_opts(Backend::Split, "", Some(redis)).await
    }

    /// Runs `sql` (a query returning one text column) on this server's PostgreSQL database.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        use sqlx::Connection;
        let name = self.db_name.as_deref().expect("a PostgreSQL server");
        let mut c = sqlx::PgConnection::connect(&format!("{}/{name}", pg_url()))
            .await
            .expect("connect to the test database");
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut c)
            .await
            .expect("query");
        rows.into_iter().map(|r| r.0).collect()
    }

    /// Starts a federating server: its server name is `localhost:FEDPORT`, where FEDPORT
    /// is its TLS federation listener (certificate `ca_dir/ganglion.pem`, made by
    /// tests/federation/make-ca.sh), trusting only `ca_dir/ca.pem` outbound and allowed to
    /// call loopback. Returns it and its server name.
    pub async fn start_federating(backend: Backend, ca_dir: &Path) -> (TestServer, String) {
        let fed_port = free_port();
        let name = format!("localhost:{fed_port}");
        let srv = Self::start_federating_as(backend, ca_dir, &name, fed_port, "").await;
        (srv, name)
    }

    /// A federating server named `name` (which other servers must be able to resolve to
    /// its federation listener on `fed_port`), with `fed_extra` appended to its
    /// `[federation]` section.
    pub async fn start_federating_as(
        backend: Backend,
        ca_dir: &Path,
        name: &str,
        fed_port: u16,
        fed_extra: &str,
    ) -> TestServer {
        let c = ca_dir.display();
        let extra = format!(
            "[federation]\nenabled = true\ntls_certificate_path = \"{c}/ganglion.pem\"\ntls_private_key_path = \"{c}/ganglion.key\"\nca_file = \"{c}/ca.pem\"\nallow_private_addresses = true\nrequest_timeout_secs = 10\n{fed_extra}\n"
        );
        Self::start_full(backend, &extra, None, Some((name, fed_port))).await
    }

    /// A federating server in the split shape (main, two sync workers, nginx, Redis),
    /// whose outbound transactions are left to `ganglion-federation-sender` processes
    /// (`federation.sender_workers`): start them with [`TestServer::worker`].
    pub async fn start_federating_split(ca_dir: &Path) -> (TestServer, String) {
        let fed_port = free_port();
        let name = format!("localhost:{fed_port}");
        let c = ca_dir.display();
        let extra = format!(
            "[federation]\nenabled = true\nsender_workers = true\ntls_certificate_path = \"{c}/ganglion.pem\"\ntls_private_key_path = \"{c}/ganglion.key\"\nca_file = \"{c}/ca.pem\"\nallow_private_addresses = true\nrequest_timeout_secs = 10\n\n"
        );
        let srv = Self::start_full(Backend::Split, &extra, None, Some((&name, fed_port))).await;
        (srv, name)
    }

    async fn start_opts(backend: Backend, extra: &str, redis: Option<&str>) -> TestServer {
        Self::start_full(backend, extra, redis, None).await
    }

    async fn start_full(
        backend: Backend,
        extra: &str,
        redis: Option<&str>,
        federation: Option<(&str, u16)>,
    ) -> TestServer {
        let dir = std::env::temp_dir().join(unique("ganglion-it"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let main_port = if backend == Backend::Split {
            free_port()
        } else {
            port
        };
        let (db_url, db_name) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/ganglion.db", dir.display()), None),
            Backend::Postgres | Backend::Split => {
                let name = unique("ganglion_it");
                pg_admin(&format!("CREATE DATABASE {name}")).await;
                (format!("{}/{name}", pg_url()), Some(name))
            }
        };
        let has = |section: &str| extra.contains(&format!("[{section}]"));
        let internal_port = free_port();
        let server_name =
            federation.map_or_else(|| format!("localhost:{port}"), |(n, _)| n.to_owned());
        let mut listeners = String::new();
        if backend == Backend::Split {
            listeners.push_str(&format!(
                "x_forwarded = true\ninternal = \"127.0.0.1:{internal_port}\"\n"
            ));
        }
        if let Some((_, fed_port)) = federation {
            listeners.push_str(&format!("federation = \"127.0.0.1:{fed_port}\"\n"));
        }
        let mut config = format!(
            "[server]\nserver_name = \"{server_name}\"\ndata_dir = \"{}\"\n\n[listeners]\nclient = \"127.0.0.1:{main_port}\"\n{listeners}\n[database]\nurl = \"{db_url}\"\n\n",
            dir.display(),
        );
        if backend == Backend::Split {
            let redis = redis.map(str::to_owned).unwrap_or_else(|| {
                std::env::var("GANGLION_TEST_REDIS")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
            });
            config.push_str(&format!(
                "[bus]\nredis_url = \"{redis}\"\nkey_prefix = \"{}\"\n\n",
                unique("it-split")
            ));
            // Workers forward what they do not serve to main's internal listener.
            config.push_str(&format!(
                "[cluster]\ninternal_secret = \"{}\"\nmain_internal_url = \"http://127.0.0.1:{internal_port}\"\nheartbeat_ms = 500\nlease_ms = 2000\n\n",
                unique("secret")
            ));
        }
        if !has("registration") {
            config.push_str("[registration]\nenabled = true\nshared_secret = \"test-secret\"\n\n");
        }
        if !has("rate_limits") {
            config.push_str("[rate_limits]\nenabled = false\n\n");
        }
        config.push_str(extra);
        let config_path = dir.join("ganglion.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut srv = TestServer {
            base: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            backend,
            db_name,
            config_path,
            main_base: format!("http://127.0.0.1:{main_port}"),
            child: None,
            extras: Vec::new(),
            proxy: None,
            main_port,
        };
        srv.spawn().await;
        if backend == Backend::Split {
            srv.start_split_front().await;
        }
        srv
    }

    /// Writes nginx's upstreams from the route table for the current workers.
    fn write_proxy_conf(&self) {
        let sync: Vec<String> = self
            .extras
            .iter()
            .map(|w| format!("127.0.0.1:{}", w.port()))
            .collect();
        let out = Command::new(binary())
            .args([
                "generate-proxy",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--main",
                &format!("127.0.0.1:{}", self.main_port),
            ])
            .arg("--sync")
            .arg(sync.join(","))
            .output()
            .expect("generate-proxy");
        assert!(out.status.success(), "generate-proxy failed");
        std::fs::write(self.dir.join("proxy.conf"), &out.stdout).expect("proxy conf");
    }

    /// Makes nginx take the current workers (SIGHUP: a graceful reload; no Ganglion
    /// process restarts, in-flight requests finish on the old nginx workers).
    fn reload_proxy(&self) {
        self.write_proxy_conf();
        let pid = std::fs::read_to_string(self.dir.join("nginx.pid")).expect("nginx pid");
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(pid.trim())
            .status()
            .expect("kill -HUP");
        assert!(ok.success(), "nginx reload failed");
    }

    /// Adds a sync worker under `instance` and puts it behind nginx. Returns its index.
    pub async fn add_sync_worker(&mut self, instance: &str) -> usize {
        let w = self.worker("ganglion-sync", instance).await;
        self.extras.push(w);
        self.reload_proxy();
        self.extras.len() - 1
    }

    /// Takes sync worker `idx` out of nginx, then stops it cleanly (SIGTERM).
    pub fn remove_sync_worker(&mut self, idx: usize) -> Option<std::process::ExitStatus> {
        let w = self.extras.remove(idx);
        self.reload_proxy();
        // Let nginx's new workers take over before the old upstream goes away.
        std::thread::sleep(Duration::from_millis(300));
        w.terminate()
    }

    /// The sync workers' base URLs, in nginx's order.
    pub fn sync_workers(&self) -> Vec<String> {
        self.extras.iter().map(|w| w.base.clone()).collect()
    }

    /// Sync worker `idx`.
    pub fn sync_worker(&self, idx: usize) -> &Worker {
        &self.extras[idx]
    }

    /// Two sync workers and nginx in front of main (the split shape).
    async fn start_split_front(&mut self) {
        let w1 = self.worker("ganglion-sync", "sync-1").await;
        let w2 = self.worker("ganglion-sync", "sync-2").await;
        self.extras.push(w1);
        self.extras.push(w2);
        self.write_proxy_conf();
        let d = self.dir.display();
        std::fs::create_dir_all(self.dir.join("tmp")).expect("tmp");
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/tmp/body;\n proxy_temp_path {d}/tmp/proxy;\n fastcgi_temp_path {d}/tmp/fcgi;\n uwsgi_temp_path {d}/tmp/uwsgi;\n scgi_temp_path {d}/tmp/scgi;\n include {d}/proxy.conf;\n}}\n"
        );
        std::fs::write(self.dir.join("nginx.conf"), conf).expect("nginx conf");
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (install it: tests/run does)");
        self.proxy = Some(Worker {
            base: self.base.clone(),
            child,
            metrics: None,
        });
        let http = crate::http().build().expect("http client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "nginx did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or restarts) the process and waits until it answers.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let bin = if self.backend == Backend::Split {
            sibling_binary("ganglion-main")
        } else {
            binary()
        };
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60)).await;
    }

    /// Starts a worker binary (`ganglion-sync`) on the same configuration and a port of its
    /// own, and waits until it answers.
    pub async fn worker(&self, bin: &str, instance: &str) -> Worker {
        self.worker_on(bin, instance, free_port()).await
    }

    /// Kills split-shape worker `idx` (0 or 1) with SIGKILL and starts it again on the same
    /// port, so nginx finds it where it was.
    pub async fn restart_sync_worker(&mut self, idx: usize) {
        let old = self.extras.remove(idx);
        let port = old.port();
        drop(old);
        let w = self
            .worker_on("ganglion-sync", &format!("sync-{}", idx + 1), port)
            .await;
        self.extras.insert(idx, w);
    }

    /// The Redis key prefix of a split-shape server.
    pub fn bus_prefix(&self) -> Option<String> {
        let cfg = std::fs::read_to_string(&self.config_path).ok()?;
        let line = cfg.lines().find(|l| l.starts_with("key_prefix"))?;
        Some(line.split('"').nth(1)?.to_owned())
    }

    async fn worker_on(&self, bin: &str, instance: &str, port: u16) -> Worker {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{instance}.log")))
            .expect("log file");
        let metrics_port = free_port();
        let child = Command::new(sibling_binary(bin))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("GANGLION_LISTENERS__CLIENT", format!("127.0.0.1:{port}"))
            .env(
                "GANGLION_LISTENERS__METRICS",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("GANGLION_CLUSTER__INSTANCE", instance)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let worker = Worker {
            base: format!("http://127.0.0.1:{port}"),
            child,
            metrics: Some(format!("http://127.0.0.1:{metrics_port}")),
        };
        let http = crate::http().build().expect("http client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", worker.base)).send().await
                && r.status().is_success()
            {
                return worker;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("{instance}.log")))
                    .unwrap_or_default();
                panic!("{bin} did not become healthy:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/health` answers, or panics with the log.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let http = crate::http().build().expect("http client");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.main_base)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("server did not become healthy:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// A client with no token.
    pub fn client(&self) -> crate::Client {
        crate::Client::new(&self.base)
    }

    /// Registers a user with a random suffix and returns a logged-in client.
    pub async fn user(&self, name: &str) -> crate::Client {
        let localpart = unique(name);
        let c = self.client();
        c.register(&localpart, "password-123").await
    }

    /// Drops the PostgreSQL database and the temporary directory.
    pub async fn cleanup(mut self) {
        self.kill9();
        self.extras.clear();
        self.proxy = None;
        if let Some(name) = self.db_name.take() {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
