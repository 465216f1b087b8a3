//! Server ACLs (Client-Server API, "Server Access Control Lists"; Server-Server API,
//! "Server Access Control Lists"): a room's `m.room.server_acl` says which servers may
//! take part. A server it denies gets 403 `M_FORBIDDEN` from every request about the
//! room, and its PDUs and EDUs for the room are dropped.

use serde_json::Value;

/// Whether the ACL `content` lets `server` (a server name, port and all) take part.
pub fn allows(content: &Value, server: &str) -> bool {
    let host = host_of(server);
    let list = |k: &str| -> Vec<&str> {
        content
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let ip_literals = content
        .get("allow_ip_literals")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !ip_literals && is_ip_literal(host) {
        return false;
    }
    if list("deny").iter().any(|g| glob(g, host)) {
        return false;
    }
    list("allow").iter().any(|g| glob(g, host))
}

/// The host part of a server name (the ACL ignores the port).
fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8448`.
        return rest.split(']').next().unwrap_or(rest);
    }
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

/// `*` (any run of characters) and `?` (one character) glob matching, case-insensitive
/// (server names are compared as DNS names).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative matching with backtracking to the last `*`: linear in practice, never
    // exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_like_the_spec_says() {
        assert!(glob("*", "matrix.org"));
        assert!(glob("*.example.com", "a.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("ex?mple.org", "EXAMPLE.org"));
        assert!(!glob("ex?mple.org", "exmple.org"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("", "") && !glob("", "x"));
    }

    #[test]
    fn deny_wins_ports_are_ignored_and_ip_literals_can_be_refused() {
        let acl = json!({ "allow": ["*"], "deny": ["evil.example", "*.bad.org"] });
        assert!(allows(&acl, "good.example:8448"));
        assert!(!allows(&acl, "evil.example:8448"));
        assert!(!allows(&acl, "x.bad.org"));
        let only = json!({ "allow": ["*.trusted.net"], "allow_ip_literals": false });
        assert!(allows(&only, "a.trusted.net"));
        assert!(!allows(&only, "other.net"));
        assert!(!allows(
            &json!({ "allow": ["*"], "allow_ip_literals": false }),
            "127.0.0.1:8448"
        ));
        assert!(!allows(
            &json!({ "allow": ["*"], "allow_ip_literals": false }),
            "[::1]:8448"
        ));
        assert!(allows(&json!({ "allow": ["*"] }), "[::1]:8448"));
        assert!(
            !allows(&json!({}), "anyone.org"),
            "no allow list allows nobody"
        );
    }
}
