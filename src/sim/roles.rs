//! Users, call members and what their roles may do.
//!
//! A user token's caller gets a role in the call: its call-level (member) role if it has one, else its app-level
//! role, else a default from the user id (ids starting with `host` are hosts, everyone else a plain user; this keeps
//! tests that predate explicit roles working). The role's capabilities are those of Stream's `livestream` call type,
//! applied to every call type.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// What hosts and admins may do.
pub const HOST_CAPABILITIES: &[&str] = &[
    "create-call",
    "end-call",
    "join-backstage",
    "join-call",
    "read-call",
    "send-audio",
    "send-video",
    "start-broadcast-call",
    "stop-broadcast-call",
    "update-call",
];

/// What plain users (viewers) may do.
pub const USER_CAPABILITIES: &[&str] = &["join-call", "read-call"];

/// The capabilities of a role; unknown roles get a plain user's.
pub fn capabilities(role: &str) -> &'static [&'static str] {
    match role {
        "host" | "admin" => HOST_CAPABILITIES,
        _ => USER_CAPABILITIES,
    }
}

/// The role of a user nobody registered.
pub fn default_role(user_id: &str) -> &'static str {
    if user_id.starts_with("host") {
        "host"
    } else {
        "user"
    }
}

/// App-level users and call members, with their roles.
#[derive(Default)]
pub struct Roles {
    users: Mutex<HashMap<String, String>>,
    /// (call type, call id) → user id → call-level role.
    members: Mutex<HashMap<(String, String), BTreeMap<String, String>>>,
}

impl Roles {
    pub fn add_user(&self, user_id: &str, role: &str) {
        lock(&self.users).insert(user_id.to_owned(), role.to_owned());
    }

    pub fn add_member(&self, call_type: &str, id: &str, user_id: &str, role: &str) {
        lock(&self.members)
            .entry((call_type.to_owned(), id.to_owned()))
            .or_default()
            .insert(user_id.to_owned(), role.to_owned());
    }

    /// The user's role in the call: member role, else app role, else `default_role`.
    pub fn role(&self, call_type: &str, id: &str, user_id: &str) -> String {
        let member = lock(&self.members)
            .get(&(call_type.to_owned(), id.to_owned()))
            .and_then(|m| m.get(user_id).cloned());
        member
            .or_else(|| lock(&self.users).get(user_id).cloned())
            .unwrap_or_else(|| default_role(user_id).to_owned())
    }

    /// The call's registered members and their call-level roles, by user id.
    pub fn members(&self, call_type: &str, id: &str) -> Vec<(String, String)> {
        lock(&self.members)
            .get(&(call_type.to_owned(), id.to_owned()))
            .map(|m| m.iter().map(|(u, r)| (u.clone(), r.clone())).collect())
            .unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_role_beats_app_role_beats_the_default() {
        let roles = Roles::default();
        assert_eq!(roles.role("livestream", "a", "host-1"), "host");
        assert_eq!(roles.role("livestream", "a", "bob"), "user");

        roles.add_user("bob", "admin");
        roles.add_user("host-2", "user");
        assert_eq!(roles.role("livestream", "a", "bob"), "admin");
        assert_eq!(
            roles.role("livestream", "a", "host-2"),
            "user",
            "registered users lose the id rule"
        );

        roles.add_member("livestream", "a", "bob", "user");
        roles.add_member("livestream", "a", "carol", "host");
        assert_eq!(roles.role("livestream", "a", "bob"), "user");
        assert_eq!(roles.role("livestream", "a", "carol"), "host");
        assert_eq!(
            roles.role("livestream", "b", "bob"),
            "admin",
            "members are per call"
        );
        assert_eq!(
            roles.members("livestream", "a"),
            vec![
                ("bob".into(), "user".into()),
                ("carol".into(), "host".into())
            ]
        );
    }

    #[test]
    fn hosts_and_admins_may_broadcast_and_end_users_may_not() {
        for role in ["host", "admin"] {
            for cap in [
                "start-broadcast-call",
                "stop-broadcast-call",
                "update-call",
                "end-call",
            ] {
                assert!(capabilities(role).contains(&cap), "{role} {cap}");
            }
        }
        assert_eq!(capabilities("user"), ["join-call", "read-call"]);
        assert_eq!(capabilities("martian"), capabilities("user"));
    }
}
