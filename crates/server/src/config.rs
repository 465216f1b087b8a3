//! Loading the configuration: defaults in code, then the TOML file, then the environment
//! (`GANGLION_<SECTION>__<KEY>`). Unknown keys and bad values are refused with their name.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ganglion_core::config::Config;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown or a value has the wrong type (the message names the key).
    #[error("configuration error: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parses but cannot work.
    #[error("configuration error: {0}")]
    Invalid(#[from] ganglion_core::config::InvalidConfig),
    /// The file could not be written.
    #[error("could not write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Only GANGLION_<SECTION>__<KEY>: other GANGLION_* variables are not configuration.
fn environment() -> Env {
    Env::prefixed("GANGLION_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

/// Loads the configuration from `path` (if any) and the environment, and validates it.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(p) = path {
        fig = fig.merge(Toml::file_exact(p));
    }
    let config: Config = fig.merge(environment()).extract().map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

/// The configuration of one process: the shared file, then its `[processes.<instance>]`
/// section, then the environment (which wins over both). The instance name is `instance`
/// (the `--instance` flag), else `cluster.instance`, else `<role>-<host>-<pid>`. Returns
/// the role the section names, if any.
pub fn load_process(
    path: Option<&Path>,
    instance: Option<&str>,
    role: &str,
) -> Result<(Config, Option<String>), ConfigError> {
    let shared = load(path)?;
    let name = instance
        .map(str::to_owned)
        .or_else(|| shared.cluster.instance.clone())
        .unwrap_or_else(|| default_instance(role));
    let mut with_section = shared;
    let section_role = with_section.select_process(&name);
    let mut config: Config = Figment::from(Serialized::defaults(with_section))
        .merge(environment())
        .extract()
        .map_err(Box::new)?;
    config.cluster.instance = Some(name);
    config.validate()?;
    Ok((config, section_role))
}

/// `<role>-<host name>-<pid>`, the host cut so the name stays within 64 characters.
fn default_instance(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let host: String = host.chars().take(40).collect();
    format!("{role}-{host}-{}", std::process::id())
}

/// The documented example configuration (`config/ganglion.example.toml`).
pub const EXAMPLE: &str = include_str!("../../../config/ganglion.example.toml");

/// Writes a fresh configuration file for a server name.
pub fn generate(path: &Path, server_name: &str) -> Result<(), ConfigError> {
    let text = EXAMPLE.replace(
        "server_name = \"localhost:8008\"",
        &format!("server_name = \"{server_name}\""),
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| ConfigError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_matches_the_defaults() {
        let from_example: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(EXAMPLE))
            .extract()
            .expect("example parses");
        from_example.validate().expect("example validates");
        let a = toml::to_string(&from_example).expect("ser");
        let b = toml::to_string(&Config::default()).expect("ser");
        assert_eq!(
            a, b,
            "config/ganglion.example.toml drifted from the defaults in code"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[server]\nserver_nmae = \"x\"\n"))
            .extract::<Config>()
            .expect_err("unknown key refused");
        assert!(err.to_string().contains("server_nmae"), "{err}");
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[database]\nmax_connections = \"lots\"\n"))
            .extract::<Config>()
            .expect_err("bad type refused");
        assert!(err.to_string().contains("max_connections"), "{err}");
    }
}
