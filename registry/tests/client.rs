//! `EurekaClient` and `Heartbeat` against a registry served on loopback: failover, re-register
//! on 404, status, metadata, discovery, cancel on shutdown.

mod support;

use std::time::Duration;

use support::{eventually, free_port, http, serve_in_process};
use tether_registry::tether::{gateway_nodes, sessions_update, GatewayRegistration, APP};
use tether_registry::{
    ClientError, EurekaClient, Heartbeat, HeartbeatConfig, InstanceStatus, RegistrySettings, Renewal,
};

#[tokio::test]
async fn client_operations_with_failover() {
    let (base, state) = serve_in_process(RegistrySettings::default()).await;
    // The first URL has nothing listening: every call fails over to the second.
    let dead = format!("http://127.0.0.1:{}/eureka/", free_port());
    let client =
        EurekaClient::with_timeout([dead.as_str(), &format!("{base}/eureka/")], Duration::from_secs(2)).unwrap();
    let mut info = support::instance("tether", "gw-1", 8080);
    info.last_dirty_timestamp = 1_700_000_000_000;
    client.register(&info).await.unwrap();
    assert_eq!(client.renew(&info).await.unwrap(), Renewal::Renewed);

    client.set_status(APP, "gw-1", InstanceStatus::OutOfService).await.unwrap();
    let got = client.instance(APP, "gw-1").await.unwrap().unwrap();
    assert_eq!((got.status, got.overridden_status), (InstanceStatus::OutOfService, InstanceStatus::OutOfService));
    client.delete_status_override(APP, "gw-1", Some(InstanceStatus::Up)).await.unwrap();
    assert_eq!(client.instance(APP, "gw-1").await.unwrap().unwrap().status, InstanceStatus::Up);

    client.update_metadata(APP, "gw-1", [("sessions", "7")]).await.unwrap();
    let app = client.app("tether").await.unwrap().unwrap();
    assert_eq!(app.instances[0].metadata.get("sessions").map(String::as_str), Some("7"));
    assert_eq!(client.apps().await.unwrap().apps_hashcode, "UP_1_");
    assert_eq!(client.vip("tether").await.unwrap().instances().count(), 1);
    assert!(client.delta().await.unwrap().instances().any(|i| i.instance_id == "gw-1"));
    assert!(client.app("nope").await.unwrap().is_none());

    // The registry forgets the instance: renew registers it again.
    state.with_registry(|r| r.cancel(APP, "gw-1", 1)).unwrap();
    assert_eq!(client.renew(&info).await.unwrap(), Renewal::Reregistered);
    assert!(client.instance(APP, "gw-1").await.unwrap().is_some());

    client.cancel(APP, "gw-1").await.unwrap();
    assert!(matches!(client.cancel(APP, "gw-1").await, Err(ClientError::NotRegistered { .. })));
    assert!(matches!(client.set_status(APP, "gw-1", InstanceStatus::Up).await, Err(ClientError::NotRegistered { .. })));

    // A refused registration carries the registry's reason.
    let mut bad = info.clone();
    bad.ip_addr.clear();
    match client.register(&bad).await {
        Err(ClientError::Status { status: 400, body, .. }) => assert_eq!(body, "Missing ip address"),
        other => panic!("{other:?}"),
    }

    // Nothing answers at all.
    let nobody = EurekaClient::with_timeout([dead.as_str()], Duration::from_secs(2)).unwrap();
    assert!(matches!(nobody.apps().await, Err(ClientError::Unreachable { .. })));
    assert!(matches!(EurekaClient::new(Vec::<String>::new()), Err(ClientError::NoUrls)));
    assert!(matches!(EurekaClient::new(["https://x/eureka/"]), Err(ClientError::InvalidUrl(_))));
}

#[tokio::test]
async fn heartbeat_registers_renews_drains_and_cancels() {
    let (base, state) = serve_in_process(RegistrySettings::default()).await;
    let client = EurekaClient::new([format!("{base}/eureka/")]).unwrap();
    let reg = GatewayRegistration {
        node_id: "gw-7".into(),
        host_name: "gw7.test".into(),
        ip_addr: "127.0.0.1".into(),
        quic: "gw7.test:4433".into(),
        zone: "z1".into(),
        http_port: 8080,
    };
    let hb = Heartbeat::start(
        client.clone(),
        reg.instance(),
        HeartbeatConfig { renewal_interval: Duration::from_millis(100) },
    );
    let registered_at = eventually("registration", Duration::from_secs(10), || async {
        state.with_registry(|r| r.instance(APP, "gw-7")).map(|i| i.lease_info.last_renewal_timestamp)
    })
    .await;
    eventually("two renewals", Duration::from_secs(10), || async {
        let i = state.with_registry(|r| r.instance(APP, "gw-7"))?;
        (i.lease_info.last_renewal_timestamp > registered_at + 150).then_some(())
    })
    .await;
    assert!(hb.is_registered());

    hb.update_metadata(sessions_update(12)).await.unwrap();
    hb.set_status(InstanceStatus::OutOfService).await.unwrap();
    let nodes = gateway_nodes(&client.app(APP).await.unwrap().unwrap());
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].status, nodes[0].sessions, nodes[0].quic.as_str()),
        (InstanceStatus::OutOfService, Some(12), "gw7.test:4433")
    );

    // The registry loses its state: the heartbeat registers again (with the new metadata) and
    // re-applies OUT_OF_SERVICE.
    state.with_registry(|r| r.cancel(APP, "gw-7", 1)).unwrap();
    eventually("re-registered out of service", Duration::from_secs(10), || async {
        let i = state.with_registry(|r| r.instance(APP, "gw-7"))?;
        (i.status == InstanceStatus::OutOfService && i.metadata.get("sessions").map(String::as_str) == Some("12"))
            .then_some(())
    })
    .await;

    hb.clear_status().await.unwrap();
    assert_eq!(state.with_registry(|r| r.instance(APP, "gw-7")).unwrap().status, InstanceStatus::Up);
    hb.shutdown().await.unwrap();
    assert!(state.with_registry(|r| r.instance(APP, "gw-7")).is_none());
    let r = http("GET", &format!("{base}/eureka/apps/TETHER/gw-7"), &[], None).await;
    assert_eq!(r.status, 404);
}
