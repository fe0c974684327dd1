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
        .route(
            "/catalog",
            axum::routing::get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    CATALOG_PAGE,
                )
            }),
        )
        .route(
            "/api/catalog",
            axum::routing::get(move || {
                let shared = Arc::clone(&for_catalog);
                let catalog = catalog.clone();
                async move {
                    let (code, body) = match catalog {
                        None => (
                            StatusCode::NOT_FOUND,
                            json!({ "error": "no catalog: start the coordinator with --catalog FILE \
                                   (written by `tessera catalog --json FILE`)" }),
                        ),
                        // Only the run rows are read on the federation's
                        // thread; the merging is done off it.
                        Some(doc) => match shared
                            .call(|f: &mut Federation| -> anyhow::Result<_> {
                                Ok(f.store().runs()?)
                            })
                            .await
                        {
                            Ok(Ok(runs)) => match tokio::task::spawn_blocking(move || {
                                crate::catalog::with_usage(&doc, &runs)
                            })
                            .await
                            {
                                Ok(document) => (StatusCode::OK, document),
                                Err(e) => (
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    json!({ "error": e.to_string() }),
                                ),
                            },
                            Ok(Err(e)) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                json!({ "error": format!("{e:#}") }),
                            ),
                            Err(e) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                json!({ "error": e.message() }),
                            ),
                        },
                    };
                    (
                        code,
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        body.to_string(),
                    )
                }
            }),
        )
        .route(
            "/",
            axum::routing::get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    PAGE,
                )
            }),
        )
        .route(
            "/api/status",
            axum::routing::get(move || {
                let shared = Arc::clone(&shared);
                async move {
                    let (code, body) = match shared.call(status).await {
                        Ok(Ok(document)) => (StatusCode::OK, document),
                        Ok(Err(e)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({ "error": format!("{e:#}") }),
                        ),
                        Err(e) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            json!({ "error": e.message() }),
                        ),
                    };
                    (
                        code,
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        body.to_string(),
                    )
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
