//! Maintenance `Snapshot`: etcd's snapshot file of this member's store, streamed in chunks.
//!
//! The file is written on the blocking pool straight into the response stream (two passes over
//! one point of the store, [`crate::etcd_snapshot::stream`]), never whole in memory or on disk:
//! a bounded channel of a few chunks sits between the writer and gRPC. Each chunk must be taken
//! within the api budget; a reader that stalls longer (or leaves) ends the stream, which frees
//! the hold the snapshot keeps on compaction. Writes go on meanwhile.

use std::pin::Pin;
use std::sync::Arc;

use deadline::{Deadline, Layer};
use mvcc::Backend;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::error::ApiError;
use crate::etcd_snapshot::{self, ClusterState, SnapshotMember};
use crate::pb::etcdserverpb::SnapshotResponse;
use crate::service::{client_deadline, Shared};

/// etcd's chunk size.
const CHUNK: usize = 32 * 1024;
/// Chunks waiting for the client: the memory a snapshot holds beyond one page.
const QUEUED: usize = 4;

/// The response stream of a snapshot.
pub(crate) type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

/// Starts a snapshot; the stream of its chunks. The start (a permit among the long reads) is
/// bounded by the request's deadline; the chunks each by the api budget.
pub(crate) async fn start<B: Backend>(
    shared: &Shared<B>,
    request: &tonic::Request<crate::pb::etcdserverpb::SnapshotRequest>,
) -> Result<SnapshotStream, ApiError> {
    let deadline = shared.deadline(request);
    let client = client_deadline(request);
    let permit = deadline::within(
        Layer::Api,
        deadline,
        Arc::clone(&shared.scans).acquire_owned(),
    )
    .await
    .map_err(|_| {
        if client.is_expired() {
            ApiError::DeadlineExceeded
        } else {
            ApiError::Timeout
        }
    })?
    .map_err(|_| ApiError::Stopped)?;
    let per_chunk = shared.config.budgets.get(Layer::Api);
    let node = shared.node.clone();
    let (tx, rx) = mpsc::channel::<Result<SnapshotResponse, Status>>(QUEUED);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let store = node.store().clone();
        let result = (|| -> Result<u64, etcd_snapshot::SnapshotError> {
            let mut export = store.export()?;
            // The auth state recorded with the store at the export's point, not a later one.
            let auth = consensus::applied_auth(export.info().applied.as_deref())
                .map_err(etcd_snapshot::SnapshotError::Layout)?;
            let status = node.status();
            let cluster = ClusterState {
                auth,
                consistent_index: status.applied_index,
                members: status
                    .members
                    .into_iter()
                    .map(|(id, m, voter)| SnapshotMember {
                        id,
                        name: m.name,
                        peer_urls: m.peer_urls,
                        client_urls: m.client_urls,
                        is_learner: !voter,
                    })
                    .collect(),
                alarms: node
                    .alarms()
                    .into_iter()
                    .map(|a| (a.member_id, a.alarm))
                    .collect(),
            };
            let remaining = std::cell::Cell::new(0u64);
            let mut send = |blob: Vec<u8>| -> std::io::Result<()> {
                remaining.set(remaining.get().saturating_sub(blob.len() as u64));
                let chunk = SnapshotResponse {
                    header: None,
                    remaining_bytes: remaining.get(),
                    version: String::new(),
                    blob,
                };
                let sent = runtime.block_on(deadline::within(
                    Layer::Api,
                    Deadline::after(per_chunk),
                    tx.send(Ok(chunk)),
                ));
                match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
                    Err(_) => Err(std::io::Error::other(format!(
                        "the client took no chunk for {per_chunk:?}"
                    ))),
                }
            };
            etcd_snapshot::stream(
                &mut export,
                &cluster,
                CHUNK,
                &mut |total| remaining.set(total),
                &mut send,
                &|| tx.is_closed(),
            )
        })();
        match result {
            Ok(size) => tracing::info!(size, "snapshot sent"),
            Err(e) => {
                tracing::warn!(cause = %e, "snapshot failed");
                // Told to the client when it is still there to hear it.
                let _ = tx.try_send(Err(Status::internal(e.to_string())));
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
