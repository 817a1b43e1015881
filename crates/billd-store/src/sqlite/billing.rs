//! [`BillingStore`](crate::BillingStore) on SQLite: the shared body
//! (`crate::billing_sql`), whose writes run on the single writer connection
//! inside `BEGIN IMMEDIATE`.

crate::billing_sql::billing_store!(super::SqliteStore);

/// A round's writes: row by row, each statement a call into the writer
/// connection's thread rather than a round trip to a server.
async fn write_round(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
    finishes: &[crate::EventFinish],
    now: i64,
) -> StoreResult<Vec<CommitReceipt>> {
    write_round_each(conn, commits, finishes, now).await
}
