//! TEMPORARY stub until the metrics module lands.
#![allow(missing_docs, dead_code)]
use std::sync::Arc;
#[derive(Clone, Copy, Debug)] pub enum Transport { Tcp, Bluetooth }
#[derive(Clone, Copy, Debug)] pub enum RejectReason { Invalid, UnknownBundle, StoreFull, StoreError, Duplicate }
#[derive(Clone, Copy, Debug)] pub enum ManifestReject { Invalid, Untrusted, Expired, StoreError }
#[derive(Clone, Copy, Debug)] pub enum SessionFailure { Connect, Handshake, Protocol, Timeout, Penalised }
pub struct BeaconCounts { pub sent: u64, pub accepted: u64, pub dropped: Vec<(&'static str, u64)> }
#[derive(Default)] pub struct Metrics;
impl Metrics {
    pub fn new() -> Self { Metrics }
    pub fn set_store_quota_bytes(&self, _: u64) {}
    pub fn set_beacon_source(&self, _: Box<dyn Fn() -> BeaconCounts + Send + Sync>) {}
    pub fn inc_contacts(&self) {}
    pub fn set_neighbours(&self, _: u64) {}
    pub fn inc_session_failed(&self, _: SessionFailure) {}
    pub fn set_sessions_active(&self, _: u64) {}
    pub fn inc_sessions_opened(&self) {}
    pub fn add_bytes_sent(&self, _: Transport, _: u64) {}
    pub fn add_bytes_received(&self, _: Transport, _: u64) {}
    pub fn inc_pieces_received(&self, _: Transport) {}
    pub fn inc_pieces_sent(&self, _: Transport) {}
    pub fn inc_manifests_received(&self) {}
    pub fn inc_manifest_rejected(&self, _: ManifestReject) {}
    pub fn inc_piece_rejected(&self, _: RejectReason) {}
    pub fn set_bundle_states(&self, _: &[mule_bundle::store::BundleInfo]) {}
}
pub async fn serve(_: tokio::net::TcpListener, _: Arc<Metrics>, _: impl std::future::Future<Output = ()>) {}
