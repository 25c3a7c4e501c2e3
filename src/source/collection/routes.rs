//! The collections' HTTP routes, thin over `store`: `/api/collections` (the backend's, behind the API key check)
//! and each collection's own `path` (the frontend's: `GET/POST /books`, `GET/PUT/PATCH/DELETE /books/{id}`,
//! `POST/DELETE /books/{id}/{array route}`), where the access rules decide.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::access::{Caller, Decision, owns};
use super::store::{Collection, Doc, StoreError, Written, etag, key_of_path, parse};
use super::{CompiledArray, Member};
use crate::api::{ApiError, ApiKey, Mounts};
use crate::auth::{AuthError, Identity};

/// Identifies an HTTP caller from its headers and query pairs (a token, or the handshake fields).
pub type Identify = dyn Fn(HeaderMap, Vec<(String, String)>) -> BoxFuture<'static, Result<Identity, AuthError>>
    + Send
    + Sync;

/// Default and largest page of `GET /api/collections/{name}`.
const PAGE: (usize, usize) = (100, 1000);

/// What every route shares.
#[derive(Clone)]
pub struct Shared {
    /// The accepted API keys (none: every request counts as keyed).
    pub api_keys: Vec<ApiKey>,
    /// How a frontend's request is identified.
    pub identify: Arc<Identify>,
    /// The query parameters identifying the caller (not filters).
    pub identity_params: Vec<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Api {
    all: Arc<Vec<Arc<Collection>>>,
    shared: Shared,
}

impl Api {
    fn find(&self, name: &str) -> Result<&Arc<Collection>, ApiError> {
        self.all.iter().find(|c| c.cfg.name == name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "collection_not_found",
                format!("no collection {name:?}"),
            )
        })
    }
}

#[derive(Clone)]
struct Mounted {
    c: Arc<Collection>,
    shared: Shared,
}

/// The routes of every collection.
pub(super) fn mounts(all: Arc<Vec<Arc<Collection>>>, shared: Shared) -> Mounts {
    let api_state = Api {
        all: all.clone(),
        shared: shared.clone(),
    };
    let api = Router::new()
        .route("/collections", get(api_names))
        .route("/collections/{name}", get(api_list).post(api_create))
        .route("/collections/{name}/import", post(api_import))
        .route(
            "/collections/{name}/{id}",
            get(api_get)
                .put(api_put)
                .patch(api_patch)
                .delete(api_delete),
        )
        .route(
            "/collections/{name}/{id}/{op}",
            post(api_member_add).delete(api_member_remove),
        )
        .with_state(api_state);
    let mut any_method = Router::new();
    for c in all.iter() {
        let Some(path) = c.cfg.path.clone() else {
            continue;
        };
        let state = Mounted {
            c: c.clone(),
            shared: shared.clone(),
        };
        let routes = Router::new()
            .route(&path, get(m_list).post(m_create))
            .route(
                &format!("{path}/{{id}}"),
                get(m_get).put(m_put).patch(m_patch).delete(m_delete),
            )
            .route(
                &format!("{path}/{{id}}/{{op}}"),
                post(m_member_add).delete(m_member_remove),
            )
            .with_state(state);
        any_method = any_method.merge(routes);
    }
    Mounts {
        api,
        any_method,
        ..Mounts::default()
    }
}

// --- answers ---

fn answer_doc(status: StatusCode, doc: &Doc) -> Response {
    let mut r = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.json.get().to_owned(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn written(w: Result<Written, StoreError>) -> Result<Response, ApiError> {
    let w = w.map_err(api_error)?;
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(answer_doc(status, &w.doc))
}

fn api_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(inv) => ApiError::field(inv.field, inv.message),
        StoreError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            format!("no document {id:?}"),
        ),
        e @ StoreError::Exists(_) => {
            ApiError::new(StatusCode::CONFLICT, "document_exists", e.to_string())
        }
        e @ StoreError::Stale { .. } => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            e.to_string(),
        ),
        StoreError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
        StoreError::Unidentified(m) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m),
        e @ StoreError::TooLarge { .. } => ApiError::too_large(e.to_string()),
        e @ StoreError::Full(_) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "collection_full",
            e.to_string(),
        ),
        StoreError::Engine(e) => ApiError::from(e),
    }
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
}

/// Who calls a frontend route: an accepted API key, else the identity of a token or the handshake fields.
async fn caller(
    shared: &Shared,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Caller, ApiError> {
    let presented = crate::auth::bearer_token(headers)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if shared.api_keys.is_empty() {
        // No keys: like the API, every request is the backend's — and may still say who it is.
        let identity = (shared.identify)(headers.clone(), query.to_vec())
            .await
            .ok();
        return Ok(Caller {
            key: true,
            identity: identity.filter(|i| !i.anonymous),
            backend: false,
        });
    }
    if presented.is_some_and(|p| shared.api_keys.iter().any(|k| k.key() == p)) {
        return Ok(Caller {
            key: true,
            identity: None,
            backend: false,
        });
    }
    match (shared.identify)(headers.clone(), query.to_vec()).await {
        Ok(id) => Ok(Caller {
            key: false,
            identity: (!id.anonymous).then_some(id),
            backend: false,
        }),
        Err(AuthError::MissingToken) => Ok(Caller::default()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            e.code(),
            e.to_string(),
        )),
    }
}

fn backend() -> Caller {
    Caller {
        key: true,
        identity: None,
        backend: true,
    }
}

// --- listing ---

/// The documents `caller` may list, filtered by the query's `FIELD=VALUE` pairs, after `after`, at most `limit`
/// (default: a page when `paged`, else all).
async fn list(
    c: &Collection,
    caller: &Caller,
    query: &[(String, String)],
    paged: bool,
    identity_params: &[String],
) -> Result<(Vec<Box<RawValue>>, Option<String>), ApiError> {
    let decision = c.cfg.access.list.decide(caller);
    if decision == Decision::Deny {
        return Err(api_error(if caller.identity.is_none() && !caller.key {
            StoreError::Unidentified("listing this collection needs an API key or a token".into())
        } else {
            StoreError::Forbidden("not allowed to list this collection".into())
        }));
    }
    let mut limit = usize::MAX;
    let mut after = None;
    let mut filters = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(0) | Err(_) => {
                        return Err(ApiError::field("limit", "must be a positive integer"));
                    }
                    Ok(n) => n.min(PAGE.1),
                }
            }
            "after" => after = Some(key_of_path(v).map_err(api_error)?),
            // The token's and the handshake fields' parameters say who asks; they are not filters.
            _ if identity_params.contains(k) => {}
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    if paged && limit == usize::MAX {
        limit = PAGE.0;
    }
    let all = c.all().await.map_err(api_error)?;
    let start = after.map_or(0, |a| all.partition_point(|e| e.key.as_str() <= a.as_str()));
    let mut out = Vec::new();
    let mut next = None;
    for e in &all[start..] {
        if decision == Decision::OwnOnly || !filters.is_empty() {
            let doc = parse(&e.value);
            if decision == Decision::OwnOnly && !owns(caller, &doc, c.cfg.owner_field.as_deref()) {
                continue;
            }
            if !filters.iter().all(|(k, v)| field_is(&doc, k, v)) {
                continue;
            }
        }
        if out.len() == limit {
            next = Some(e.key.clone());
            break;
        }
        out.push(e.value.clone());
    }
    // `next` is the last listed document's id, as a path segment.
    let next = next.and(out.last()).map(|last| {
        let doc = parse(last);
        match doc.get(&c.cfg.id_field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    });
    Ok((out, next))
}

/// Whether the document's field (a dotted path) reads as `value`.
fn field_is(doc: &Value, field: &str, value: &str) -> bool {
    let got = field.split('.').try_fold(doc, |v, k| v.get(k));
    match got {
        Some(Value::String(s)) => s == value,
        Some(Value::Null) | None => value == "null",
        Some(other) => *other == *value,
    }
}

fn json_array(items: &[Box<RawValue>]) -> String {
    let mut s = String::with_capacity(2 + items.iter().map(|i| i.get().len() + 1).sum::<usize>());
    s.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item.get());
    }
    s.push(']');
    s
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn read_doc(c: &Collection, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    let doc = c.get(id).await.map_err(api_error)?;
    if !c
        .cfg
        .access
        .read
        .permits(caller, &parse(&doc.json), c.cfg.owner_field.as_deref())
    {
        return Err(api_error(StoreError::Forbidden(
            "not allowed to read this document".into(),
        )));
    }
    Ok(answer_doc(StatusCode::OK, &doc))
}

async fn body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    crate::api::read_json_value(headers, body, shared.max_body_bytes).await
}

/// An array operation: the member from the caller, the body or the query.
async fn member_op(
    c: &Collection,
    shared: &Shared,
    caller: &Caller,
    id: &str,
    op: &str,
    req: (HeaderMap, Vec<(String, String)>, Body),
    add: bool,
) -> Result<Response, ApiError> {
    let (headers, query, raw) = req;
    let Some(array): Option<&CompiledArray> = c.cfg.arrays.iter().find(|a| a.route == op) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no operation {op:?} on this collection"),
        ));
    };
    let member = match &array.member {
        Member::Sub => match caller.user() {
            Some(u) => Value::String(u.to_owned()),
            None => {
                return Err(api_error(StoreError::Unidentified(
                    "this operation adds the caller's user id: present a token (or the handshake fields)".into(),
                )));
            }
        },
        Member::Query(f) => match query.iter().find(|(k, _)| k == f) {
            Some((_, v)) => Value::String(v.clone()),
            None => {
                return Err(ApiError::field(
                    f.clone(),
                    "is required (a query parameter)",
                ));
            }
        },
        Member::Body(f) => {
            let b = body(shared, &headers, raw).await?;
            match b.get(f) {
                Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
                _ => {
                    return Err(ApiError::field(
                        f.clone(),
                        "is required (a string or a number)",
                    ));
                }
            }
        }
    };
    written(
        c.member(
            caller,
            id,
            &array.field,
            member,
            add,
            if_match(&headers).as_deref(),
        )
        .await,
    )
}

// --- the frontend's routes ---

/// Who calls a frontend route, and the query it came with (handshake fields, filters, an array member).
struct Front {
    caller: Caller,
    query: Vec<(String, String)>,
}

impl FromRequestParts<Mounted> for Front {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, m: &Mounted) -> Result<Self, ApiError> {
        let query = pairs(parts.uri.query());
        let caller = caller(&m.shared, &parts.headers, &query).await?;
        Ok(Self { caller, query })
    }
}

async fn m_list(State(m): State<Mounted>, f: Front) -> Result<Response, ApiError> {
    let (docs, _) = list(&m.c, &f.caller, &f.query, false, &m.shared.identity_params).await?;
    Ok(json_response(StatusCode::OK, json_array(&docs)))
}

async fn m_create(
    State(m): State<Mounted>,
    f: Front,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let b = body(&m.shared, &headers, raw).await?;
    written(m.c.create(&f.caller, b).await)
}

async fn m_get(
    State(m): State<Mounted>,
    Path(id): Path<String>,
    f: Front,
) -> Result<Response, ApiError> {
    read_doc(&m.c, &f.caller, &id).await
}

async fn m_put(
    State(m): State<Mounted>,
    Path(id): Path<String>,
    f: Front,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let b = body(&m.shared, &headers, raw).await?;
    written(
        m.c.replace(&f.caller, &id, b, if_match(&headers).as_deref())
            .await,
    )
}

async fn m_patch(
    State(m): State<Mounted>,
    Path(id): Path<String>,
    f: Front,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let b = body(&m.shared, &headers, raw).await?;
    written(
        m.c.patch(&f.caller, &id, b, if_match(&headers).as_deref())
            .await,
    )
}

async fn m_delete(
    State(m): State<Mounted>,
    Path(id): Path<String>,
    f: Front,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    written(
        m.c.delete(&f.caller, &id, if_match(&headers).as_deref())
            .await,
    )
}

async fn m_member_add(
    State(m): State<Mounted>,
    Path((id, op)): Path<(String, String)>,
    f: Front,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let req = (headers, f.query, raw);
    member_op(&m.c, &m.shared, &f.caller, &id, &op, req, true).await
}

async fn m_member_remove(
    State(m): State<Mounted>,
    Path((id, op)): Path<(String, String)>,
    f: Front,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let req = (headers, f.query, raw);
    member_op(&m.c, &m.shared, &f.caller, &id, &op, req, false).await
}

// --- the backend's routes (`/api/collections`, behind the key check) ---

fn may_write(key: &crate::api::Caller, c: &Collection) -> Result<(), ApiError> {
    if key.may_publish(c.channel().as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key may not publish to {:?}", c.channel().as_str()),
        ))
    }
}

async fn api_names(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for c in api.all.iter() {
        let all = c.all().await.map_err(api_error)?;
        out.push(json!({
            "name": c.cfg.name,
            "channel": c.channel().as_str(),
            "path": c.cfg.path,
            "id_field": c.cfg.id_field,
            "documents": all.len(),
        }));
    }
    Ok(axum::Json(json!({ "collections": out })).into_response())
}

async fn api_list(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    let query = pairs(q.as_deref());
    let (docs, next) = list(c, &backend(), &query, true, &api.shared.identity_params).await?;
    let next = crate::json::text(&next);
    // Each document's version (its ETag), in the same order: what a write's `If-Match` would send.
    let versions: Vec<String> = docs.iter().map(|d| etag(d.get())).collect();
    let versions = crate::json::text(&versions);
    Ok(json_response(
        StatusCode::OK,
        format!(
            "{{\"documents\":{},\"versions\":{versions},\"next\":{next}}}",
            json_array(&docs)
        ),
    ))
}

async fn api_create(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let b = body(&api.shared, &headers, raw).await?;
    written(c.create(&backend(), b).await)
}

async fn api_import(
    State(api): State<Api>,
    Path(name): Path<String>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let Value::Array(docs) = body(&api.shared, &headers, raw).await? else {
        return Err(ApiError::field(
            "",
            "an import is a JSON array of documents",
        ));
    };
    let (created, replaced) = c.import(docs).await.map_err(api_error)?;
    Ok(axum::Json(json!({"created": created, "replaced": replaced})).into_response())
}

async fn api_get(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    read_doc(c, &backend(), &id).await
}

async fn api_put(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let b = body(&api.shared, &headers, raw).await?;
    written(
        c.replace(&backend(), &id, b, if_match(&headers).as_deref())
            .await,
    )
}

async fn api_patch(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let b = body(&api.shared, &headers, raw).await?;
    written(
        c.patch(&backend(), &id, b, if_match(&headers).as_deref())
            .await,
    )
}

async fn api_delete(
    State(api): State<Api>,
    Path((name, id)): Path<(String, String)>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    written(
        c.delete(&backend(), &id, if_match(&headers).as_deref())
            .await,
    )
}

async fn api_member_add(
    State(api): State<Api>,
    Path((name, id, op)): Path<(String, String, String)>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let query = pairs(q.as_deref());
    let caller = api_member_caller(&api.shared, &headers, &query).await?;
    member_op(
        c,
        &api.shared,
        &caller,
        &id,
        &op,
        (headers, query, raw),
        true,
    )
    .await
}

async fn api_member_remove(
    State(api): State<Api>,
    Path((name, id, op)): Path<(String, String, String)>,
    Extension(key): Extension<crate::api::Caller>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    raw: Body,
) -> Result<Response, ApiError> {
    let c = api.find(&name)?;
    may_write(&key, c)?;
    let query = pairs(q.as_deref());
    let caller = api_member_caller(&api.shared, &headers, &query).await?;
    member_op(
        c,
        &api.shared,
        &caller,
        &id,
        &op,
        (headers, query, raw),
        false,
    )
    .await
}

/// The backend acting for a user named by the query's handshake fields, if any (its key already passed).
async fn api_member_caller(
    shared: &Shared,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Caller, ApiError> {
    let mut headers = headers.clone();
    // The API key is not a token.
    headers.remove(header::AUTHORIZATION);
    let identity = (shared.identify)(headers, query.to_vec()).await.ok();
    Ok(Caller {
        key: true,
        identity: identity.filter(|i| !i.anonymous),
        backend: true,
    })
}
