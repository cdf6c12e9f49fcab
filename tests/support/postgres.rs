//! The PostgreSQL the store and replica tests run against: the throwaway
//! cluster `.ci/run` starts and names in `PORTCULLIS_TEST_POSTGRES`, with a
//! database of its own for every test, so tests never see each other's
//! rows. Without the cluster a test is skipped with a note, except under
//! `CI=true`, where it fails.

use sqlx::Connection as _;

/// A new, empty database on the test cluster, as a `postgres://` URL;
/// `None` (skip) when there is no cluster outside CI.
pub async fn database() -> Option<String> {
    let Ok(admin) = std::env::var("PORTCULLIS_TEST_POSTGRES") else {
        let note = "PostgreSQL tests need a cluster named in PORTCULLIS_TEST_POSTGRES (.ci/run starts one)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {note}");
        }
        eprintln!("SKIPPED: {note}");
        return None;
    };
    let name = format!("portcullis_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("the test cluster at {admin} does not answer: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create a test database");
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}
