//! Admin credentials: named admin tokens (several, so one can be rotated
//! while the other works), presented as `PRIVATE-TOKEN` (GitLab's header) or
//! `Authorization: Bearer`, compared in constant time by digest; and the web
//! page's sessions (a random cookie value mapped to the admin token's name,
//! with a CSRF token of its own).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{header, HeaderMap};

use crate::config::AdminToken;
use crate::token::Digest;

/// How long a web-page sign-in lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The configured admin tokens; a config reload replaces them, so an admin
/// token is rotated without a restart.
pub struct AdminCredentials {
    tokens: ArcSwap<Vec<AdminToken>>,
}

/// Why a request is not an admin's.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credential at all (not counted as a failed login).
    Missing,
    Wrong,
}

impl AdminCredentials {
    pub fn new(tokens: Vec<AdminToken>) -> AdminCredentials {
        AdminCredentials {
            tokens: ArcSwap::from_pointee(tokens),
        }
    }

    /// Takes a reloaded config's tokens; whether they differ from the ones held.
    pub fn replace(&self, tokens: &[AdminToken]) -> bool {
        let changed = self.tokens.load().as_slice() != tokens;
        if changed {
            self.tokens.store(std::sync::Arc::new(tokens.to_vec()));
        }
        changed
    }

    /// The name of the admin token in `PRIVATE-TOKEN` or a Bearer header.
    pub fn from_headers(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let private = headers.get("private-token").map(|v| v.as_bytes());
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let presented = match (private, bearer) {
            (None, None) => return Err(Refusal::Missing),
            (Some(p), Some(b)) if p != b => return Err(Refusal::Wrong),
            (Some(secret), _) | (None, Some(secret)) => secret,
        };
        let presented = std::str::from_utf8(presented).map_err(|_| Refusal::Wrong)?;
        self.check(presented.trim()).ok_or(Refusal::Wrong)
    }

    /// The name of the admin token `secret` is, if any. Every configured
    /// digest is compared, in constant time, whatever matches.
    pub fn check(&self, secret: &str) -> Option<String> {
        let presented = Digest::of(secret);
        let mut found = None;
        for token in self.tokens.load().iter() {
            if constant_time_eq(&token.digest.0, &presented.0) {
                found = Some(token.name.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A signed-in web-page user.
#[derive(Clone)]
pub struct Session {
    /// The admin token's name (for the audit log).
    pub admin: String,
    /// Every form carries it; a form without it is refused.
    pub csrf: String,
    expires: Instant,
}

/// Web-page sessions, in memory (a restart signs everyone out).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Live>>,
}

struct Live {
    session: Session,
    /// One-time ids of the create forms sent so far (see [`Sessions::first_sending`]).
    sent_forms: HashSet<String>,
}

/// The most form ids a session remembers; past it the oldest are forgotten
/// all at once (a page that old is a stale tab, its form long replaced).
const MAX_SENT_FORMS: usize = 1000;

/// A one-time id for a form that must not act twice.
pub fn new_form_id() -> String {
    random_hex()
}

impl Sessions {
    /// Starts a session; returns its cookie value.
    pub fn start(&self, admin: String) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            admin,
            csrf: random_hex(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut sessions = self.by_id.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, live| live.session.expires > now);
        let live = Live {
            session: session.clone(),
            sent_forms: HashSet::new(),
        };
        sessions.insert(id.clone(), live);
        (id, session)
    }

    /// Ends every session (the admin tokens they were started with changed).
    pub fn clear(&self) {
        self.by_id.lock().expect("sessions lock").clear();
    }

    /// The live session named by the request's cookie.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let sessions = self.by_id.lock().expect("sessions lock");
        sessions
            .get(id)
            .map(|live| &live.session)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// Whether the form `form_id` is sent for the first time in the
    /// request's session: a refresh of the page a create answered, or a
    /// double click, sends it again and must not make a second token.
    pub fn first_sending(&self, headers: &HeaderMap, form_id: &str) -> bool {
        let Some(id) = cookie(headers, COOKIE) else {
            return false;
        };
        let mut sessions = self.by_id.lock().expect("sessions lock");
        let Some(live) = sessions.get_mut(id) else {
            return false;
        };
        if live.sent_forms.len() >= MAX_SENT_FORMS {
            live.sent_forms.clear();
        }
        live.sent_forms.insert(form_id.to_string())
    }

    /// Lets a form be sent again: what it asked for was not done.
    pub fn unsend_form(&self, headers: &HeaderMap, form_id: &str) {
        let Some(id) = cookie(headers, COOKIE) else {
            return;
        };
        if let Some(live) = self.by_id.lock().expect("sessions lock").get_mut(id) {
            live.sent_forms.remove(form_id);
        }
    }

    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.by_id.lock().expect("sessions lock").remove(id);
        }
    }
}

/// The session cookie's name.
pub const COOKIE: &str = "tokengate_session";

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> AdminCredentials {
        AdminCredentials::new(vec![
            AdminToken {
                name: "ops".into(),
                digest: Digest::of("ops-secret-0123456789"),
            },
            AdminToken {
                name: "ops-next".into(),
                digest: Digest::of("next-secret-0123456789"),
            },
        ])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn either_header_names_the_admin_token() {
        let c = credentials();
        assert_eq!(
            c.from_headers(&headers(&[("private-token", "ops-secret-0123456789")])),
            Ok("ops".into())
        );
        assert_eq!(
            c.from_headers(&headers(&[(
                "authorization",
                "Bearer next-secret-0123456789"
            )])),
            Ok("ops-next".into())
        );
        assert_eq!(c.from_headers(&headers(&[])), Err(Refusal::Missing));
        assert_eq!(
            c.from_headers(&headers(&[("private-token", "ops-secret-012345678")])),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            c.from_headers(&headers(&[("authorization", "Basic b3BzOng=")])),
            Err(Refusal::Missing)
        );
        // Two different credentials: refused, never the better of the two.
        assert_eq!(
            c.from_headers(&headers(&[
                ("private-token", "wrong-0123456789012"),
                ("authorization", "Bearer ops-secret-0123456789")
            ])),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end() {
        let s = Sessions::default();
        let (id, session) = s.start("ops".into());
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={id}"))]);
        assert_eq!(s.find(&h).unwrap().csrf, session.csrf);
        assert!(s
            .find(&headers(&[("cookie", &format!("{COOKIE}=nope"))]))
            .is_none());
        s.end(&h);
        assert!(s.find(&h).is_none());
    }
}
