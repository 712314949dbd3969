//! Several `tether-registry` processes peered with each other: changes made on one are
//! replicated to the others, a registry started later copies the full state from a peer, and
//! a peer that lost an instance gets it back through the next renewal.

mod support;

use std::time::Duration;

use support::{eventually, free_port, get_json, http, RegistryProcess};
use tether_registry::{EurekaClient, InstanceInfo, InstanceStatus};

const WAIT: Duration = Duration::from_secs(15);

async fn instance_on(reg: &RegistryProcess, id: &str) -> Option<InstanceInfo> {
    let client = EurekaClient::new([reg.eureka()]).ok()?;
    client.instance("TETHER", id).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peered_registries_converge() {
    let (pa, pb) = (free_port(), free_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}/eureka/");
    // The same peer list for both: each skips its own URL.
    let peers = format!("{},{}", url(pa), url(pb));
    let a = RegistryProcess::start(pa, &["--peers", &peers]);
    let b = RegistryProcess::start(pb, &["--peers", &peers]);
    let on_a = EurekaClient::new([a.eureka()]).unwrap();
    let on_b = EurekaClient::new([b.eureka()]).unwrap();

    // Register on A: visible on B, with its metadata and status.
    let mut gw1 = support::instance("tether", "gw-1", 8080);
    gw1.metadata.insert("quic".into(), "gw-1.test:4433".into());
    gw1.last_dirty_timestamp = 1_700_000_000_000;
    on_a.register(&gw1).await.unwrap();
    let seen = eventually("gw-1 on B", WAIT, || instance_on(&b, "gw-1")).await;
    assert_eq!(seen.metadata.get("quic").map(String::as_str), Some("gw-1.test:4433"));
    assert_eq!(seen.status, InstanceStatus::Up);

    // Status change on B: visible on A (status and override).
    on_b.set_status("TETHER", "gw-1", InstanceStatus::OutOfService).await.unwrap();
    eventually("gw-1 OUT_OF_SERVICE on A", WAIT, || async {
        let i = instance_on(&a, "gw-1").await?;
        (i.status == InstanceStatus::OutOfService && i.overridden_status == InstanceStatus::OutOfService).then_some(())
    })
    .await;
    // Renewals on A keep it OUT_OF_SERVICE everywhere.
    on_a.renew(&gw1).await.unwrap();

    // Metadata on A: visible on B.
    on_a.update_metadata("TETHER", "gw-1", [("sessions", "9")]).await.unwrap();
    eventually("gw-1 sessions on B", WAIT, || async {
        let i = instance_on(&b, "gw-1").await?;
        (i.metadata.get("sessions").map(String::as_str) == Some("9") && i.status == InstanceStatus::OutOfService)
            .then_some(())
    })
    .await;

    // Two more instances, one registered on each side.
    let gw2 = support::instance("tether", "gw-2", 8081);
    on_b.register(&gw2).await.unwrap();
    let gw3 = support::instance("tether", "gw-3", 8082);
    on_a.register(&gw3).await.unwrap();
    eventually("gw-2 on A", WAIT, || instance_on(&a, "gw-2")).await;
    eventually("gw-3 on B", WAIT, || instance_on(&b, "gw-3")).await;

    // Cancel on A: gone on B.
    on_a.cancel("TETHER", "gw-3").await.unwrap();
    eventually("gw-3 gone from B", WAIT, || async { instance_on(&b, "gw-3").await.is_none().then_some(()) }).await;

    // A third registry started later copies the full state from a peer before it is ready.
    let pc = free_port();
    let c = RegistryProcess::start(pc, &["--peers", &format!("{},{}", url(pa), url(pb))]);
    let listing = get_json(&format!("{}/eureka/apps", c.base)).await.json();
    assert_eq!(listing["applications"]["apps__hashcode"], "OUT_OF_SERVICE_1_UP_1_", "{listing}");
    let copied = instance_on(&c, "gw-1").await.expect("gw-1 copied to C");
    assert_eq!((copied.status, copied.overridden_status), (InstanceStatus::OutOfService, InstanceStatus::OutOfService));
    assert_eq!(copied.metadata.get("sessions").map(String::as_str), Some("9"));
    assert!(instance_on(&c, "gw-2").await.is_some());
    assert!(instance_on(&c, "gw-3").await.is_none());
    // The override came along: the instance re-registering on C with UP stays OUT_OF_SERVICE.
    let on_c = EurekaClient::new([c.eureka()]).unwrap();
    let mut again = gw1.clone();
    again.last_dirty_timestamp += 1;
    on_c.register(&again).await.unwrap();
    assert_eq!(instance_on(&c, "gw-1").await.unwrap().status, InstanceStatus::OutOfService);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lost_an_instance_gets_it_back_on_the_next_renewal() {
    let (pa, pb) = (free_port(), free_port());
    let url = |p: u16| format!("http://127.0.0.1:{p}/eureka/");
    let a = RegistryProcess::start(pa, &["--peers", &url(pb)]);
    let b = RegistryProcess::start(pb, &["--peers", &url(pa)]);
    let on_a = EurekaClient::new([a.eureka()]).unwrap();
    let on_b = EurekaClient::new([b.eureka()]).unwrap();
    let gw = support::instance("tether", "gw-9", 8080);
    on_a.register(&gw).await.unwrap();
    eventually("gw-9 on B", WAIT, || instance_on(&b, "gw-9")).await;

    // B drops it through a *replicated* cancel, which B must not pass back to A.
    let r = http(
        "DELETE",
        &format!("{}/eureka/apps/TETHER/gw-9", b.base),
        &[("x-netflix-discovery-replication", "true")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(instance_on(&b, "gw-9").await.is_none());
    // A marker registered on B afterwards reaches A; B's queue to A is in order, so had the
    // cancel been replicated it would have arrived first.
    on_b.register(&support::instance("tether", "marker", 1)).await.unwrap();
    eventually("marker on A", WAIT, || instance_on(&a, "marker")).await;
    assert!(instance_on(&a, "gw-9").await.is_some(), "a replicated cancel was replicated again");

    // The instance renews on A; B answers the replicated renewal with 404; A then replicates
    // the registration and B has the instance again.
    assert_eq!(on_a.renew(&gw).await.unwrap(), tether_registry::Renewal::Renewed);
    let back = eventually("gw-9 back on B", WAIT, || instance_on(&b, "gw-9")).await;
    assert_eq!(back.metadata.get("node_id").map(String::as_str), Some("gw-9"));
    assert!(a.log_text().contains("peer lacks the instance"), "{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_to_a_peer_that_is_down_is_retried_without_blocking_the_client() {
    let (pa, pb) = (free_port(), free_port());
    let a = RegistryProcess::start(pa, &["--peers", &format!("http://127.0.0.1:{pb}/eureka/")]);
    let on_a = EurekaClient::new([a.eureka()]).unwrap();
    // B is not running: the client's registration is answered at once all the same.
    let started = std::time::Instant::now();
    on_a.register(&support::instance("tether", "gw-r", 8080)).await.unwrap();
    on_a.set_status("TETHER", "gw-r", InstanceStatus::OutOfService).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    eventually("a failed replication attempt", WAIT, || async {
        a.log_text().contains("replication failed, will retry").then_some(())
    })
    .await;
    // B comes up without peers (so it copies nothing at start): only A's retries can bring
    // the instance and its status over.
    let b = RegistryProcess::start(pb, &[]);
    let got = eventually("gw-r delivered to B by a retry", WAIT, || async {
        let i = instance_on(&b, "gw-r").await?;
        (i.status == InstanceStatus::OutOfService).then_some(i)
    })
    .await;
    assert_eq!(got.overridden_status, InstanceStatus::OutOfService);
}
