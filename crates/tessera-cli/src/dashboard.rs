//! `tessera coordinator --dashboard ADDR`: one page (HTML, inline script,
//! inline SVG; nothing fetched from elsewhere) at `/`, refreshing every two
//! seconds from `/api/status` (and, with `--catalog FILE`, the feature
//! catalog at `/catalog` from `/api/catalog`: the file's document with each
//! feature's runs from the coordinator's database): the document of `tessera status --json`
//! (`status_json`), read on the federation's owner thread like every other
//! call, with a `live` section of what only the running coordinator knows
//! (each site's state and when it was last heard from, the plan's privacy
//! budget).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use tessera_coordinator::{Federation, Shared};

/// The page, served as it is.
const PAGE: &str = include_str!("dashboard.html");

/// A listener on `address` for the dashboard; a clear refusal when it cannot be had.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!(
            "--dashboard {address}: cannot listen there (give an address of this host that is free, \
             e.g. 127.0.0.1:7080)"
        )
    })
}

/// The catalog page, served as it is.
const CATALOG_PAGE: &str = include_str!("catalog.html");

/// Serves the dashboard on `listener` in the background (with the
/// federation's feature `catalog` at /catalog, where given); the bound
/// address.
pub fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    catalog: Option<Arc<Value>>,
) -> anyhow::Result<SocketAddr> {
    let bound = listener.local_addr().context("the dashboard's address")?;
    let for_catalog = Arc::clone(&shared);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { page(PAGE) }))
        .route(
            "/catalog",
            axum::routing::get(|| async { page(CATALOG_PAGE) }),
        )
        .route(
            "/api/status",
            axum::routing::get(move || {
                let shared = Arc::clone(&shared);
                async move {
                    match answer(shared.call(status).await) {
                        Ok(document) => reply(StatusCode::OK, &document),
                        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, &e),
                    }
                }
            }),
        )
        .route(
            "/api/catalog",
            axum::routing::get(move || {
                let shared = Arc::clone(&for_catalog);
                let catalog = catalog.clone();
                async move {
                    let Some(doc) = catalog else {
                        let e = json!({ "error": "no catalog: start the coordinator with \
                            --catalog FILE (written by `tessera catalog --json FILE`)" });
                        return reply(StatusCode::NOT_FOUND, &e);
                    };
                    // Only the run rows are read on the federation's
                    // thread; the merging is done off it.
                    let runs = shared
                        .call(|f: &mut Federation| -> anyhow::Result<_> { Ok(f.store().runs()?) });
                    let merged = match answer(runs.await) {
                        Ok(runs) => tokio::task::spawn_blocking(move || {
                            crate::catalog::with_usage(&doc, &runs)
                        })
                        .await
                        .map_err(|e| json!({ "error": e.to_string() })),
                        Err(e) => Err(e),
                    };
                    match merged {
                        Ok(document) => reply(StatusCode::OK, &document),
                        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, &e),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%e, "the dashboard stopped");
        }
    });
    Ok(bound)
}

/// A page, never cached.
fn page(html: &'static str) -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
}

/// A JSON reply, never cached.
fn reply(code: StatusCode, body: &Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// What the federation's thread answered, or why there is no answer.
fn answer<T>(r: Result<anyhow::Result<T>, tonic::Status>) -> Result<T, Value> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(json!({ "error": format!("{e:#}") })),
        Err(e) => Err(json!({ "error": e.message() })),
    }
}

/// The status document of the federation's run, with its `live` section.
fn status(f: &mut Federation) -> anyhow::Result<Value> {
    let store = f.store();
    let run = store
        .runs()?
        .into_iter()
        .find(|r| r.id == f.run_id())
        .with_context(|| format!("run {} is not in the database", f.run_id()))?;
    let mut document = crate::status_json::document(store, &run)?;
    let budget = tessera_engine::Plan::from_toml(&run.plan, &run.id)
        .ok()
        .and_then(|p| p.privacy.budgets().run);
    let sites: Vec<Value> = f
        .sites()
        .into_iter()
        .map(|s| {
            json!({
                "site": s.site,
                "state": s.state,
                "last_seen_unix_micros": s.last_seen_unix_micros,
            })
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    document["live"] = json!({
        "now_unix_micros": now,
        "liveness_seconds": f.liveness().as_secs_f64(),
        "sites": sites,
        "epsilon_budget": budget,
    });
    Ok(document)
}
