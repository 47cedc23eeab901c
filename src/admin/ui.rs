//! The web page: the seed's flow on one server-rendered page that needs no
//! build step and loads nothing from elsewhere. Sign in with an admin token
//! (kept in an HttpOnly, SameSite=Strict session cookie, Secure on TLS),
//! choose a project or group, create a token (shown once, with a copy
//! button), see the active tokens and revoke one after a confirmation.
//! Every form carries the session's CSRF token.

use std::fmt::Write;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use http::{header, HeaderValue, Method, Response, StatusCode};

use super::credentials::{new_form_id, Session, COOKIE};
use super::{Admin, AdminRequest, AdminResponse, Params};
use crate::store::ListFilter;
use crate::token::{OwnerKind, Scope, Secret, TokenRecord};
use crate::tokens::{CreateRequest, ManageError};

const SENT_TWICE: &str = "This form was sent already (a refresh or a second click): no second token was made. A token created the first time is listed below; revoke it if its secret was not saved.";
const SAVE_WARNING: &str = "Save the deploy token somewhere safe. Once you leave or refresh the page, you won't be able to access it again.";

/// The page's only script: the copy button and the revoke confirmation.
/// Allowed by its hash in the Content-Security-Policy; nothing inline else.
const SCRIPT: &str = r#"
document.querySelectorAll("[data-copy]").forEach(function (b) {
  b.addEventListener("click", function () {
    var field = document.getElementById(b.getAttribute("data-copy"));
    field.select();
    if (navigator.clipboard) { navigator.clipboard.writeText(field.value); } else { document.execCommand("copy"); }
    b.textContent = "Copied";
  });
});
document.querySelectorAll("form.revoke").forEach(function (f) {
  f.addEventListener("submit", function (e) {
    if (!confirm("Revoke deploy token " + f.getAttribute("data-name") + "? Clients using it stop working at once.")) { e.preventDefault(); }
  });
});
"#;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:60rem;margin-inline:auto;color:#1f1f1f}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}.card h2{margin-top:0}
form.card,section.card{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}
label{display:block;margin:.6rem 0 .2rem;font-weight:600}
input[type=text],input[type=password],input[type=date],select{width:100%;max-width:28rem;padding:.4rem;box-sizing:border-box}
.scope{display:flex;gap:.5rem;align-items:flex-start;margin:.4rem 0;font-weight:normal}
.scope small{display:block;color:#555}
button{padding:.45rem 1rem;margin-top:.8rem;cursor:pointer}
.warning{background:#fff4e5;border-left:4px solid #e69500;padding:.6rem}
.error{background:#fdecea;border-left:4px solid #c62828;padding:.6rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem;border-bottom:1px solid #ddd;vertical-align:top;overflow-wrap:anywhere}
.row{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center}
@media (max-width:40rem){table,thead,tbody,tr,th,td{display:block}thead{display:none}tr{border:1px solid #ddd;margin:.5rem 0;padding:.3rem}td{border:0}td::before{content:attr(data-label) ": ";font-weight:600}}
"#;

pub(super) async fn handle(admin: &Admin, req: &AdminRequest) -> AdminResponse {
    let session = admin.sessions.find(&req.headers);
    match (req.method.clone(), req.path.as_str(), session) {
        (Method::POST, "/ui/login", _) => login(admin, req),
        (Method::GET, "/ui", None) => page(StatusCode::OK, &sign_in(None)),
        (_, _, None) => redirect("/ui"),
        (Method::GET, "/ui", Some(session)) => {
            let form = Params::form(req.query.as_deref().unwrap_or(""));
            let owner = owner(&form);
            show(admin, &session, owner.as_ref(), None, None).await
        }
        (Method::POST, path, Some(session)) => {
            let Ok(text) = std::str::from_utf8(&req.body) else {
                return page(StatusCode::BAD_REQUEST, "<p>Bad form.</p>");
            };
            let form = Params::form(text);
            if form.first("csrf") != Some(session.csrf.as_str()) {
                return page(
                    StatusCode::FORBIDDEN,
                    "<p class=\"error\">This form has expired. <a href=\"/ui\">Reload the page</a> and try again.</p>",
                );
            }
            match path {
                "/ui/logout" => {
                    admin.sessions.end(&req.headers);
                    let mut response = redirect("/ui");
                    set_cookie(&mut response, "", 0, admin.secure_cookies);
                    response
                }
                "/ui/tokens" => {
                    let form_id = form.first("form").unwrap_or("");
                    if form_id.is_empty() || !admin.sessions.first_sending(&req.headers, form_id) {
                        let owner = owner(&form);
                        return show(admin, &session, owner.as_ref(), None, Some(SENT_TWICE)).await;
                    }
                    // Not made (invalid, store down): the same form may be sent again.
                    create(admin, &session, &form).await.unwrap_or_else(|page| {
                        admin.sessions.unsend_form(&req.headers, form_id);
                        page
                    })
                }
                path => match path
                    .strip_prefix("/ui/tokens/")
                    .and_then(|rest| rest.strip_suffix("/revoke"))
                    .and_then(|id| id.parse::<i64>().ok())
                {
                    Some(id) => revoke(admin, &session, &form, id).await,
                    None => page(StatusCode::NOT_FOUND, "<p>Not found.</p>"),
                },
            }
        }
        _ => page(StatusCode::NOT_FOUND, "<p>Not found.</p>"),
    }
}

fn login(admin: &Admin, req: &AdminRequest) -> AdminResponse {
    // Before anything counts: a page elsewhere could otherwise send wrong
    // sign-ins from the admin's browser until the address is locked out.
    if sent_by_another_site(&req.headers) {
        return page(
            StatusCode::FORBIDDEN,
            &sign_in(Some(
                "A sign-in sent from another site is refused. Sign in on this page.",
            )),
        );
    }
    let ip = req.peer.ip();
    if admin.failures.is_blocked(ip) {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            &sign_in(Some(
                "Too many failed sign-ins from this address. Try again later.",
            )),
        );
    }
    let form = Params::form(std::str::from_utf8(&req.body).unwrap_or(""));
    let Some(name) = form
        .first("token")
        .and_then(|t| admin.credentials.check(t.trim()))
    else {
        admin.failures.record_failure(ip);
        tracing::warn!(target: "tokengate::audit", event = "admin_login_failed", client = %ip, path = "/ui/login");
        return page(
            StatusCode::UNAUTHORIZED,
            &sign_in(Some("That is not an admin token.")),
        );
    };
    tracing::info!(target: "tokengate::audit", event = "admin_signed_in", actor = %name, client = %ip);
    let (id, _) = admin.sessions.start(name);
    let mut response = redirect("/ui");
    set_cookie(&mut response, &id, 8 * 3600, admin.secure_cookies);
    response
}

/// Creates a token from the form: `Err` with the page to show when none was made.
async fn create(
    admin: &Admin,
    session: &Session,
    form: &Params,
) -> Result<AdminResponse, AdminResponse> {
    let Some(owner) = owner(form) else {
        return Err(show(
            admin,
            session,
            None,
            None,
            Some("Choose a project or group."),
        )
        .await);
    };
    let request = CreateRequest {
        owner_kind: owner.0,
        owner_path: owner.1.clone(),
        name: form.first("name").unwrap_or("").to_string(),
        scopes: form.all("scopes"),
        username: form
            .first("username")
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        expires_at: form
            .first("expires_at")
            .filter(|e| !e.is_empty())
            .map(str::to_string),
    };
    if request.scopes.is_empty() {
        return Err(show(
            admin,
            session,
            Some(&owner),
            None,
            Some("Choose at least one scope."),
        )
        .await);
    }
    match admin.tokens.create(&session.admin, request).await {
        Ok((record, secret)) => {
            Ok(show(admin, session, Some(&owner), Some((&record, &secret)), None).await)
        }
        Err(ManageError::Invalid(e)) => {
            Err(show(admin, session, Some(&owner), None, Some(&e.to_string())).await)
        }
        Err(ManageError::Store(e)) => {
            tracing::warn!(error = %e, "web page: token store failed");
            Err(show(
                admin,
                session,
                Some(&owner),
                None,
                Some("The token store is unavailable; nothing was created."),
            )
            .await)
        }
    }
}

async fn revoke(admin: &Admin, session: &Session, form: &Params, id: i64) -> AdminResponse {
    let owner = owner(form);
    let error = match admin.tokens.revoke(&session.admin, id).await {
        Ok(Some(_)) => None,
        Ok(None) => Some("No such deploy token."),
        Err(e) => {
            tracing::warn!(error = %e, "web page: revoke failed");
            Some("The token store is unavailable; nothing was revoked.")
        }
    };
    if error.is_none() {
        if let Some((kind, path)) = owner {
            return redirect(&format!(
                "/ui?kind={}&path={}",
                kind.as_str(),
                url_encode(&path)
            ));
        }
    }
    show(admin, session, owner.as_ref(), None, error).await
}

/// The signed-in page: owner picker, and for a chosen owner the create form,
/// a just-created token, and the active tokens.
async fn show(
    admin: &Admin,
    session: &Session,
    owner: Option<&(OwnerKind, String)>,
    created: Option<(&TokenRecord, &Secret)>,
    error: Option<&str>,
) -> AdminResponse {
    let mut html = String::new();
    let csrf = esc(&session.csrf);
    let (kind, path) = owner.map_or(("project", ""), |(k, p)| (k.as_str(), p.as_str()));
    let _ = write!(
        html,
        r#"<div class="row"><span>Signed in as <b>{}</b></span><form method="post" action="/ui/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Sign out</button></form></div>
<form class="card" method="get" action="/ui"><label for="kind">Project or group</label>
<div class="row"><select id="kind" name="kind" style="max-width:10rem"><option value="project"{}>Project</option><option value="group"{}>Group</option></select>
<input type="text" id="path" name="path" placeholder="acme/web" value="{}" required style="max-width:20rem"><button type="submit" style="margin-top:0">Open</button></div></form>"#,
        esc(&session.admin),
        if kind == "project" { " selected" } else { "" },
        if kind == "group" { " selected" } else { "" },
        esc(path),
    );
    if let Some(error) = error {
        let _ = write!(html, r#"<p class="error" role="alert">{}</p>"#, esc(error));
    }
    if let Some((record, secret)) = created {
        let _ = write!(
            html,
            r#"<section class="card" id="created"><h2>Your new deploy token</h2>
<label for="new-username">Username</label><input type="text" id="new-username" readonly value="{}"> <button type="button" data-copy="new-username">Copy username</button>
<label for="new-token">Token</label><input type="text" id="new-token" readonly value="{}"> <button type="button" data-copy="new-token">Copy token</button>
<p class="warning">{SAVE_WARNING}</p></section>"#,
            esc(&record.username),
            esc(secret.expose()),
        );
    }
    if let Some((kind, path)) = owner {
        let mut scopes = String::new();
        for scope in Scope::ALL {
            let _ = write!(
                scopes,
                r#"<label class="scope"><input type="checkbox" name="scopes" value="{0}"><span>{0}<small>{1}</small></span></label>"#,
                scope.as_str(),
                esc(scope.description()),
            );
        }
        let _ = write!(
            html,
            r#"<form class="card" method="post" action="/ui/tokens" id="create"><h2>New deploy token for {} {}</h2>
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="form" value="{}"><input type="hidden" name="kind" value="{}"><input type="hidden" name="path" value="{}">
<label for="name">Name</label><input type="text" id="name" name="name" required maxlength="255">
<label for="expires_at">Expiration date (optional)</label><input type="date" id="expires_at" name="expires_at">
<label for="username">Username (optional)</label><input type="text" id="username" name="username" maxlength="255" placeholder="tokengate+deploy-token-{{n}}">
<label>Scopes</label>{scopes}
<button type="submit">Create deploy token</button></form>"#,
            kind.as_str(),
            esc(path),
            new_form_id(),
            kind.as_str(),
            esc(path),
        );
        let listed = admin
            .tokens
            .list(ListFilter {
                owner: Some((*kind, path)),
                active_only: true,
            })
            .await;
        match listed {
            Ok(tokens) => active_tokens(&mut html, &tokens, *kind, path, &csrf),
            Err(e) => {
                tracing::warn!(error = %e, "web page: listing failed");
                html.push_str(r#"<p class="error">The token store is unavailable.</p>"#);
            }
        }
    }
    page(StatusCode::OK, &html)
}

fn active_tokens(
    html: &mut String,
    tokens: &[TokenRecord],
    kind: OwnerKind,
    path: &str,
    csrf: &str,
) {
    let _ = write!(html, "<h2>Active deploy tokens ({})</h2>", tokens.len());
    if tokens.is_empty() {
        html.push_str("<p>None.</p>");
        return;
    }
    html.push_str("<table id=\"tokens\"><thead><tr><th>Name</th><th>Username</th><th>Scopes</th><th>Created</th><th>Expires</th><th>Last used</th><th></th></tr></thead><tbody>");
    let date = |t: Option<DateTime<Utc>>, none: &str| {
        t.map_or(none.to_string(), |t| {
            t.format("%Y-%m-%d %H:%M UTC").to_string()
        })
    };
    for t in tokens {
        let _ = write!(
            html,
            r#"<tr data-id="{id}"><td data-label="Name">{}</td><td data-label="Username">{}</td><td data-label="Scopes">{}</td><td data-label="Created">{}</td><td data-label="Expires">{}</td><td data-label="Last used">{}</td>
<td><form class="revoke" method="post" action="/ui/tokens/{id}/revoke" data-name="{}"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="kind" value="{}"><input type="hidden" name="path" value="{}"><button type="submit">Revoke</button></form></td></tr>"#,
            esc(&t.name),
            esc(&t.username),
            t.scopes.names().join(", "),
            date(Some(t.created_at), "-"),
            date(t.expires_at, "Never"),
            date(t.last_used_at, "Never"),
            esc(&t.name),
            kind.as_str(),
            esc(path),
            id = t.id,
        );
    }
    html.push_str("</tbody></table>");
}

fn sign_in(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!(r#"<p class="error" role="alert">{}</p>"#, esc(e))
    });
    format!(
        r#"{error}<form class="card" method="post" action="/ui/login"><label for="token">Admin token</label>
<input type="password" id="token" name="token" required autocomplete="current-password"><button type="submit">Sign in</button></form>"#
    )
}

fn page(status: StatusCode, body: &str) -> AdminResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>tokengate deploy tokens</title><style>{STYLE}</style></head><body><h1>Deploy tokens</h1>{body}<script>{SCRIPT}</script></body></html>"
    );
    let mut response = Response::new(html.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Nothing from elsewhere, no framing, and only the page's own script (by hash).
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        use sha2::Digest;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
        HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ))
        .expect("a valid header value")
    })
}

fn redirect(to: &str) -> AdminResponse {
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Whether a browser says the request comes from another site's page:
/// `Sec-Fetch-Site` where it is sent (every current browser), else an
/// `Origin` other than the host asked. Clients that are not browsers send
/// neither.
fn sent_by_another_site(headers: &http::HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

fn set_cookie(response: &mut AdminResponse, value: &str, max_age: u64, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The chosen project or group of a form, when it is a valid path.
fn owner(form: &Params) -> Option<(OwnerKind, String)> {
    let kind = OwnerKind::parse(form.first("kind")?)?;
    let path = form.first("path")?.trim().trim_matches('/').to_string();
    crate::token::validate_namespace(&path).ok()?;
    Some((kind, path))
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ins_from_other_sites_are_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_static(value));
            }
            h
        };
        let host = ("host", "tokens.test:9090");
        for ours in [
            vec![],
            vec![host],
            vec![host, ("sec-fetch-site", "same-origin")],
            vec![host, ("sec-fetch-site", "none")],
            vec![host, ("origin", "http://tokens.test:9090")],
            vec![host, ("origin", "https://TOKENS.test:9090")],
        ] {
            assert!(!sent_by_another_site(&headers(&ours)), "{ours:?}");
        }
        for theirs in [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            // Sec-Fetch-Site decides where it is sent.
            vec![
                host,
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://tokens.test:9090"),
            ],
            vec![host, ("origin", "https://evil.test")],
            vec![host, ("origin", "null")],
            vec![("origin", "http://tokens.test:9090")],
        ] {
            assert!(sent_by_another_site(&headers(&theirs)), "{theirs:?}");
        }
    }

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[test]
    fn owners_come_from_the_form_or_not_at_all() {
        let f = Params::form("kind=group&path=acme%2Fplatform%2F");
        assert_eq!(owner(&f), Some((OwnerKind::Group, "acme/platform".into())));
        assert_eq!(owner(&Params::form("kind=team&path=acme")), None);
        assert_eq!(owner(&Params::form("kind=project&path=..%2Fx")), None);
    }
}
