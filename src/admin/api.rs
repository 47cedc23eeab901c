//! GitLab's deploy-token REST API, so scripts and API client libraries
//! written for GitLab work unchanged against tokengate:
//!
//! - `GET /api/v4/deploy_tokens[?active=true]`
//! - `GET|POST /api/v4/(projects|groups)/:id/deploy_tokens`
//! - `GET|DELETE /api/v4/(projects|groups)/:id/deploy_tokens/:token_id`
//!
//! `:id` is the URL-encoded full path (`acme%2Fweb`). Parameters come as
//! JSON, a form or the query string; `scopes` as an array (`scopes[]=`) or
//! comma-separated. Lists are paginated with GitLab's headers.

use chrono::Utc;
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::{json, message, Admin, AdminRequest, AdminResponse, Params};
use crate::route::normalize::form_decode;
use crate::store::ListFilter;
use crate::token::{OwnerKind, TokenRecord};
use crate::tokens::{CreateRequest, ManageError};

const DEFAULT_PER_PAGE: usize = 20;
const MAX_PER_PAGE: usize = 100;

pub(super) async fn handle(admin: &Admin, actor: &str, req: &AdminRequest) -> AdminResponse {
    let segments: Vec<&str> = req.path["/api/v4/".len()..].split('/').collect();
    // A request that makes a token (a create, a rotation) needs a project
    // inside a group; reads and deletes take any namespace, so that tokens
    // made before that was checked stay listable and deletable.
    let makes_token = req.method == Method::POST;
    let owner = |kind: &str, id: &str| -> Result<(OwnerKind, String), &'static str> {
        let (kind, not_found) = match kind {
            "projects" => (OwnerKind::Project, "404 Project Not Found"),
            _ => (OwnerKind::Group, "404 Group Not Found"),
        };
        let valid = |p: &String| match makes_token {
            true => crate::token::validate_owner(kind, p).is_ok(),
            false => crate::token::validate_namespace(p).is_ok(),
        };
        let path = form_decode(id).filter(valid).ok_or(not_found)?;
        Ok((kind, path))
    };
    let result = match (segments.as_slice(), &req.method) {
        (["deploy_tokens"], &Method::GET) => list(admin, req, None).await,
        ([kind @ ("projects" | "groups"), id, "deploy_tokens"], method) => {
            match (owner(kind, id), method) {
                (Err(why), _) => return message(StatusCode::NOT_FOUND, why),
                (Ok((kind, path)), &Method::GET) => list(admin, req, Some((kind, &path))).await,
                (Ok((kind, path)), &Method::POST) => create(admin, actor, req, kind, path).await,
                _ => return method_not_allowed(),
            }
        }
        ([kind @ ("projects" | "groups"), id, "deploy_tokens", token_id], method) => {
            let (kind, path) = match owner(kind, id) {
                Ok(owner) => owner,
                Err(why) => return message(StatusCode::NOT_FOUND, why),
            };
            let Ok(token_id) = token_id.parse::<i64>() else {
                return not_found();
            };
            match *method {
                Method::GET => show(admin, kind, &path, token_id).await,
                Method::DELETE => delete(admin, actor, kind, &path, token_id).await,
                _ => return method_not_allowed(),
            }
        }
        ([kind @ ("projects" | "groups"), id, "deploy_tokens", token_id, "rotate"], method) => {
            let (kind, path) = match owner(kind, id) {
                Ok(owner) => owner,
                Err(why) => return message(StatusCode::NOT_FOUND, why),
            };
            let Ok(token_id) = token_id.parse::<i64>() else {
                return not_found();
            };
            if *method != Method::POST {
                return method_not_allowed();
            }
            rotate(admin, actor, req, kind, &path, token_id).await
        }
        (["deploy_tokens"], _) => return method_not_allowed(),
        _ => return message(StatusCode::NOT_FOUND, "404 Not Found"),
    };
    result.unwrap_or_else(|e| match e {
        ManageError::Invalid(e) => message(StatusCode::BAD_REQUEST, &e.to_string()),
        ManageError::Store(e) => {
            tracing::warn!(error = %e, "admin API: token store failed");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Token store unavailable",
            )
        }
    })
}

fn not_found() -> AdminResponse {
    message(StatusCode::NOT_FOUND, "404 Deploy Token Not Found")
}

fn method_not_allowed() -> AdminResponse {
    message(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed")
}

async fn list(
    admin: &Admin,
    req: &AdminRequest,
    owner: Option<(OwnerKind, &str)>,
) -> Result<AdminResponse, ManageError> {
    let params = query_params(req);
    // Grape's Boolean: `true`, `True` (Python's requests), `1`.
    let active_only = params
        .first("active")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t" | "yes"));
    let tokens = admin.tokens.list(ListFilter { owner, active_only }).await?;
    let page = params
        .first("page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    let per_page = params
        .first("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .map_or(DEFAULT_PER_PAGE, |p| p.min(MAX_PER_PAGE));
    let now = Utc::now();
    let shown: Vec<Value> = tokens
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|t| t.to_gitlab_json(now, None))
        .collect();
    let mut response = json(StatusCode::OK, &Value::from(shown));
    let origin = admin.origin(req);
    paginate(&mut response, req, &origin, page, per_page, tokens.len());
    Ok(response)
}

/// GitLab's pagination headers: `X-Page`, `X-Per-Page`, `X-Total`,
/// `X-Total-Pages`, `X-Next-Page`, `X-Prev-Page` and `Link`.
fn paginate(
    response: &mut AdminResponse,
    req: &AdminRequest,
    origin: &str,
    page: usize,
    per_page: usize,
    total: usize,
) {
    let pages = total.div_ceil(per_page).max(1);
    let next = (page < pages).then_some(page + 1);
    let prev = (page > 1).then(|| (page - 1).min(pages));
    let kept: Vec<&str> = req
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page=") && !p.starts_with("per_page="))
        .collect();
    let link = |page: usize, rel: &str| {
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        format!(
            "<{origin}{}?{query}page={page}&per_page={per_page}>; rel=\"{rel}\"",
            req.path
        )
    };
    let mut links = Vec::new();
    if let Some(prev) = prev {
        links.push(link(prev, "prev"));
    }
    if let Some(next) = next {
        links.push(link(next, "next"));
    }
    links.push(link(1, "first"));
    links.push(link(pages, "last"));
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set("x-total", total.to_string());
    set("x-total-pages", pages.to_string());
    set("x-next-page", next.map_or(String::new(), |p| p.to_string()));
    set("x-prev-page", prev.map_or(String::new(), |p| p.to_string()));
    set("link", links.join(", "));
}

async fn create(
    admin: &Admin,
    actor: &str,
    req: &AdminRequest,
    owner_kind: OwnerKind,
    owner_path: String,
) -> Result<AdminResponse, ManageError> {
    let params = match params_with_body(req) {
        Ok(params) => params,
        Err(why) => return Ok(message(StatusCode::BAD_REQUEST, &why)),
    };
    let name = params.first("name").map(str::to_string);
    let scopes = params.all("scopes");
    let missing: Vec<&str> = [
        ("name", name.as_deref().unwrap_or("").is_empty()),
        ("scopes", scopes.is_empty()),
    ]
    .iter()
    .filter(|(_, missing)| *missing)
    .map(|(key, _)| *key)
    .collect();
    if !missing.is_empty() {
        let what: Vec<String> = missing.iter().map(|k| format!("{k} is missing")).collect();
        return Ok(message(StatusCode::BAD_REQUEST, &what.join(", ")));
    }
    let request = CreateRequest {
        owner_kind,
        owner_path,
        name: name.unwrap_or_default(),
        scopes,
        username: params
            .first("username")
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        expires_at: params
            .first("expires_at")
            .filter(|e| !e.is_empty())
            .map(str::to_string),
    };
    let (record, secret) = admin.tokens.create(actor, request).await?;
    Ok(json(
        StatusCode::CREATED,
        &record.to_gitlab_json(Utc::now(), Some(&secret)),
    ))
}

/// The token `id` of this owner; tokens of other owners are not found here.
async fn owned(
    admin: &Admin,
    kind: OwnerKind,
    path: &str,
    id: i64,
) -> Result<Option<TokenRecord>, ManageError> {
    Ok(admin
        .tokens
        .get(id)
        .await?
        .filter(|t| t.owner_kind == kind && t.owner_path == path))
}

async fn show(
    admin: &Admin,
    kind: OwnerKind,
    path: &str,
    id: i64,
) -> Result<AdminResponse, ManageError> {
    Ok(match owned(admin, kind, path, id).await? {
        Some(token) => json(StatusCode::OK, &token.to_gitlab_json(Utc::now(), None)),
        None => not_found(),
    })
}

/// GitLab deletes; tokengate revokes (the record stays, for the audit
/// trail) and answers as GitLab does: 204, then 404 for a second delete.
async fn delete(
    admin: &Admin,
    actor: &str,
    kind: OwnerKind,
    path: &str,
    id: i64,
) -> Result<AdminResponse, ManageError> {
    match owned(admin, kind, path, id).await? {
        Some(token) if !token.revoked => {
            admin.tokens.revoke(actor, id).await?;
            let mut response = AdminResponse::default();
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        _ => Ok(not_found()),
    }
}

/// Beyond GitLab (its issue 463775): a new secret for the same token, the
/// old one valid for `grace` (`90s`, `10m`, `2h`, `1d`; default 0).
async fn rotate(
    admin: &Admin,
    actor: &str,
    req: &AdminRequest,
    kind: OwnerKind,
    path: &str,
    id: i64,
) -> Result<AdminResponse, ManageError> {
    let params = match params_with_body(req) {
        Ok(params) => params,
        Err(why) => return Ok(message(StatusCode::BAD_REQUEST, &why)),
    };
    let grace = crate::token::parse_duration(params.first("grace").unwrap_or("0"))?;
    if owned(admin, kind, path, id).await?.is_none() {
        return Ok(not_found());
    }
    Ok(match admin.tokens.rotate(actor, id, grace).await? {
        Some((record, secret)) => json(
            StatusCode::CREATED,
            &record.to_gitlab_json(Utc::now(), Some(&secret)),
        ),
        None => not_found(),
    })
}

/// The query string's parameters.
fn query_params(req: &AdminRequest) -> Params {
    Params::form(req.query.as_deref().unwrap_or(""))
}

/// The query string's parameters and, for writes, those of a JSON or form
/// body. JSON arrays give one pair per element.
fn params_with_body(req: &AdminRequest) -> Result<Params, String> {
    let mut params = query_params(req);
    if req.body.is_empty() {
        return Ok(params);
    }
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        let body: serde_json::Map<String, Value> = serde_json::from_slice(&req.body)
            .map_err(|_| "the body is not a JSON object".to_string())?;
        for (key, value) in body {
            match value {
                Value::Array(items) => {
                    for item in items {
                        params.push(key.clone(), scalar(&item));
                    }
                }
                Value::Null => {}
                other => params.push(key, scalar(&other)),
            }
        }
    } else {
        let text =
            std::str::from_utf8(&req.body).map_err(|_| "the body is not UTF-8".to_string())?;
        params.extend(Params::form(text));
    }
    Ok(params)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_arrays_and_comma_lists_give_the_same_scopes() {
        let p = Params::form(
            "name=ci&scopes%5B%5D=read_registry&scopes[]=write_registry&scopes=read_repository,read_package_registry",
        );
        assert_eq!(p.first("name"), Some("ci"));
        assert_eq!(
            p.all("scopes"),
            [
                "read_registry",
                "write_registry",
                "read_repository",
                "read_package_registry"
            ]
        );
    }
}
