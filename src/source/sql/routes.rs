//! The SQL sources' HTTP routes: `GET /api/sources` (list and status), `GET /api/sources/{id}`, and
//! `GET /api/sources/{id}/query?param=…`, which runs a source's one-shot `history_sql` with bound parameters;
//! the same query at a source's own `history_path`, in the body shape its frontend reads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::config::{HistoryBody, ResultShape};
use super::template::Params;
use super::{QueryError, SqlSources};
use crate::api::{ApiError, Mounts};

/// The routes of `sources`: `/api/sources…`, and each `history_path` behind the same key check.
pub(super) fn mounts(sources: Arc<SqlSources>) -> Mounts {
    let api = Router::new()
        .route("/sources", get(list))
        .route("/sources/{id}", get(get_one))
        .route("/sources/{id}/query", get(query));
    let mut keyed = Router::new();
    for (path, id, body) in sources.history_routes() {
        keyed = keyed.route(
            &path,
            get(move |State(s): State<Arc<SqlSources>>, query| async move {
                answer(&s, &id, query, body).await
            }),
        );
    }
    Mounts {
        api: api.with_state(sources.clone()),
        keyed: keyed.with_state(sources),
        ..Mounts::default()
    }
}

/// `GET /api/sources`.
async fn list(State(state): State<Arc<SqlSources>>) -> Json<Value> {
    Json(json!({ "sources": state.list() }))
}

/// `GET /api/sources/{id}`.
async fn get_one(
    State(state): State<Arc<SqlSources>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!(info)))
}

/// `GET /api/sources/{id}/query?name=value…`: `{"source","rows":[…]}`.
async fn query(
    State(state): State<Arc<SqlSources>>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    answer(&state, &id, query, HistoryBody::Wrapped).await
}

/// Source `id`'s one-shot query with the request's parameters, answered in `body`'s shape.
async fn answer(
    state: &SqlSources,
    id: &str,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: HistoryBody,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let params: Params = query.into_iter().collect();
    let shape = match body {
        HistoryBody::Object => ResultShape::Object,
        HistoryBody::Wrapped | HistoryBody::Rows => ResultShape::Array,
    };
    let rows = state
        .query_as(id, &params, shape)
        .await
        .map_err(|e| refused(id, e))?;
    // The rows are spliced in as stored JSON text: no re-parse, exact decimals.
    let text = match body {
        HistoryBody::Wrapped => {
            let id_json = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
            format!("{{\"source\":{id_json},\"rows\":{}}}", rows.get())
        }
        HistoryBody::Rows | HistoryBody::Object => rows.get().to_owned(),
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response())
}

fn refused(id: &str, e: QueryError) -> ApiError {
    match e {
        QueryError::UnknownSource(_) => unknown(id),
        QueryError::NoHistory(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "no_history_query", e.to_string())
        }
        QueryError::MissingParam(_) => ApiError::invalid(e.to_string()),
        QueryError::TooManyRows(_) | QueryError::NotOneRow(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_rows",
            e.to_string(),
        ),
        QueryError::Db(d) => {
            let status = match d {
                // The request's parameters made the statement fail: the caller's error, answered, not warned of
                // (a caller repeating it would flood the log).
                crate::source::sql::db::DbError::Query(_) => {
                    tracing::debug!(source = %id, error = %d, "one-shot query failed");
                    StatusCode::BAD_REQUEST
                }
                _ => {
                    tracing::warn!(source = %id, error = %d, "one-shot query failed");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            ApiError::new(status, "query_failed", d.to_string())
        }
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "source_not_found",
        format!("no SQL source {id:?}"),
    )
}
