//! Discovery starts and stops cleanly on a machine without Bluetooth (no adapter, no
//! bluetoothd, possibly no system bus): the node runs on, with one warning. Uses only the
//! loopback interface (which beacons skip), so nothing is sent anywhere.

use std::time::Duration;

use mule_contacts::beacon::HoldingsDigest;
use mule_contacts::{Discovery, DiscoveryConfig, NodeIdentity};

#[tokio::test]
async fn starts_without_bluetooth_and_stops_on_shutdown() {
    let cfg = DiscoveryConfig {
        interfaces: vec!["lo".into()],
        mdns: false,
        bluetooth: true,
        ..DiscoveryConfig::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(HoldingsDigest::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let me = NodeIdentity::from_secret([5; 32]);
    let (disc, mut events) = Discovery::start(cfg, me.clone(), rx, async {
        let _ = stop_rx.await;
    })
    .await
    .expect("discovery starts even without a Bluetooth adapter");
    assert_eq!(disc.node(), me.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events.try_recv().is_err(), "no neighbours on loopback");
    let c = disc.counters();
    assert_eq!(c.beacons_sent, 0, "loopback is never used for beacons");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), disc.stopped())
        .await
        .expect("stops after shutdown");
}
