//! Eureka REST conformance of the router, over real HTTP on loopback: formats, shapes, status
//! codes, overrides, cancel, delta, validation, both path prefixes.

mod support;

use serde_json::{json, Value};
use support::{get, get_json, http, serve_in_process};
use tether_registry::RegistrySettings;

const DC: &str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";

fn xml_instance(id: &str, app: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<instance>
  <instanceId>{id}</instanceId>
  <hostName>{id}.example</hostName>
  <app>{app}</app>
  <ipAddr>10.0.0.1</ipAddr>
  <status>UP</status>
  <overriddenstatus>UNKNOWN</overriddenstatus>
  <port enabled="true">7443</port>
  <securePort enabled="false">443</securePort>
  <countryId>1</countryId>
  <dataCenterInfo class="{DC}"><name>MyOwn</name></dataCenterInfo>
  <leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs><durationInSecs>90</durationInSecs></leaseInfo>
  <metadata><quic>{id}.example:4433</quic><zone>z1</zone></metadata>
  <vipAddress>tether</vipAddress>
  <secureVipAddress>tether-secure</secureVipAddress>
  <lastDirtyTimestamp>1700000000000</lastDirtyTimestamp>
</instance>"#
    )
}

fn json_instance(id: &str, app: &str) -> Value {
    json!({"instance": {
        "instanceId": id,
        "hostName": format!("{id}.example"),
        "app": app,
        "ipAddr": "10.0.0.2",
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": 7443, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": DC, "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"quic": format!("{id}.example:4433"), "sessions": "0"},
        "vipAddress": "tether",
        "secureVipAddress": "tether-secure",
        "lastDirtyTimestamp": "1700000000000",
        "isCoordinatingDiscoveryServer": "false"
    }})
}

async fn post_xml(base: &str, prefix: &str, app: &str, body: &str) -> support::Resp {
    http("POST", &format!("{base}{prefix}apps/{app}"), &[("content-type", "application/xml")], Some(body)).await
}

async fn post_json(base: &str, prefix: &str, app: &str, body: &Value) -> support::Resp {
    http("POST", &format!("{base}{prefix}apps/{app}"), &[("content-type", "application/json")], Some(&body.to_string()))
        .await
}

fn find_instance<'a>(apps: &'a Value, id: &str) -> Option<&'a Value> {
    apps["applications"]["application"]
        .as_array()?
        .iter()
        .flat_map(|a| a["instance"].as_array().into_iter().flatten())
        .find(|i| i["instanceId"] == id)
}

#[tokio::test]
async fn register_in_xml_and_json_and_list_in_both_formats() {
    let (base, _state) = serve_in_process(RegistrySettings::default()).await;
    let r = post_xml(&base, "/eureka/v2/", "tether", &xml_instance("gw-1", "tether")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = post_json(&base, "/eureka/", "TETHER", &json_instance("gw-2", "tether")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    // No Content-Type: the body is sniffed.
    let r = http("POST", &format!("{base}/eureka/apps/tether"), &[], Some(&xml_instance("gw-3", "TETHER"))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r =
        http("POST", &format!("{base}/eureka/apps/tether"), &[], Some(&json_instance("gw-4", "TETHER").to_string()))
            .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // XML without Accept (as py-eureka-client asks), on both prefixes.
    for prefix in ["/eureka/", "/eureka/v2/"] {
        let r = get(&format!("{base}{prefix}apps")).await;
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("application/xml"), "{}", r.content_type);
        let b = &r.body;
        assert!(
            b.starts_with("<applications><versions__delta>1</versions__delta><apps__hashcode>UP_4_</apps__hashcode><application><name>TETHER</name><instance>"),
            "{b}"
        );
        assert!(b.contains("<port enabled=\"true\">7443</port>"), "{b}");
        assert!(b.contains("<securePort enabled=\"false\">443</securePort>"), "{b}");
        assert!(b.contains(&format!("<dataCenterInfo class=\"{DC}\"><name>MyOwn</name></dataCenterInfo>")), "{b}");
        assert!(b.contains("<metadata><quic>gw-1.example:4433</quic><zone>z1</zone></metadata>"), "{b}");
        assert!(b.contains("<actionType>ADDED</actionType>"), "{b}");
        assert!(b.contains("<leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs><durationInSecs>90</durationInSecs><registrationTimestamp>"), "{b}");
    }
    // py-eureka-client asks for `apps/` with a trailing slash.
    assert_eq!(get(&format!("{base}/eureka/apps/")).await.status, 200);
    // `*/*` is not JSON either.
    let r = http("GET", &format!("{base}/eureka/apps"), &[("accept", "*/*")], None).await;
    assert!(r.content_type.starts_with("application/xml"));

    // JSON with Accept.
    let r = get_json(&format!("{base}/eureka/v2/apps")).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["applications"]["versions__delta"], "1");
    assert_eq!(v["applications"]["apps__hashcode"], "UP_4_");
    assert_eq!(v["applications"]["application"][0]["name"], "TETHER");
    assert_eq!(v["applications"]["application"][0]["instance"].as_array().map(Vec::len), Some(4));
    let i = find_instance(&v, "gw-2").expect("gw-2 listed");
    assert_eq!(i["port"], json!({"$": 7443, "@enabled": "true"}));
    assert_eq!(i["securePort"], json!({"$": 443, "@enabled": "false"}));
    assert_eq!(i["dataCenterInfo"], json!({"@class": DC, "name": "MyOwn"}));
    assert_eq!(i["metadata"], json!({"quic": "gw-2.example:4433", "sessions": "0"}));
    assert_eq!(i["app"], "TETHER");
    assert_eq!(i["status"], "UP");
    assert_eq!(i["overriddenStatus"], "UNKNOWN");
    assert_eq!(i["lastDirtyTimestamp"], "1700000000000");
    assert_eq!(i["isCoordinatingDiscoveryServer"], "false");
    assert_eq!(i["actionType"], "ADDED");
    assert!(i["leaseInfo"]["registrationTimestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(i["leaseInfo"]["durationInSecs"], 90);
    assert!(i["lastUpdatedTimestamp"].as_str().unwrap().parse::<u64>().is_ok());

    // One app, one instance, by id, by VIP / secure VIP.
    let v = get_json(&format!("{base}/eureka/apps/tether")).await.json();
    assert_eq!(v["application"]["name"], "TETHER");
    assert_eq!(v["application"]["instance"].as_array().map(Vec::len), Some(4));
    let r = get(&format!("{base}/eureka/v2/apps/TETHER")).await;
    assert!(r.body.starts_with("<application><name>TETHER</name><instance>"), "{}", r.body);
    let v = get_json(&format!("{base}/eureka/apps/TETHER/gw-1")).await.json();
    assert_eq!(v["instance"]["hostName"], "gw-1.example");
    let r = get(&format!("{base}/eureka/apps/TETHER/gw-1")).await;
    assert!(r.body.starts_with("<instance><instanceId>gw-1</instanceId>"), "{}", r.body);
    let v = get_json(&format!("{base}/eureka/v2/instances/gw-2")).await.json();
    assert_eq!(v["instance"]["ipAddr"], "10.0.0.2");
    let v = get_json(&format!("{base}/eureka/vips/tether")).await.json();
    assert_eq!(v["applications"]["apps__hashcode"], "UP_4_");
    let v = get_json(&format!("{base}/eureka/svips/tether-secure")).await.json();
    assert_eq!(v["applications"]["application"][0]["instance"].as_array().map(Vec::len), Some(4));
    let r = get(&format!("{base}/eureka/vips/nothing")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "<applications><versions__delta>1</versions__delta><apps__hashcode></apps__hashcode></applications>")
    );
    for missing in ["/eureka/apps/NOPE", "/eureka/apps/TETHER/nope", "/eureka/instances/nope", "/eureka/v2/apps/NOPE/x"]
    {
        assert_eq!(get(&format!("{base}{missing}")).await.status, 404, "{missing}");
    }
}

#[tokio::test]
async fn renew_status_override_cancel_and_delta() {
    let (base, _state) = serve_in_process(RegistrySettings::default()).await;
    for id in ["a", "b", "c"] {
        let r = post_json(&base, "/eureka/", "tether", &json_instance(id, "tether")).await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let url = |p: &str| format!("{base}{p}");

    // Renew: 200; unknown: 404 (so the client registers); a newer client copy: 404 too.
    assert_eq!(
        http("PUT", &url("/eureka/apps/TETHER/a?status=UP&lastDirtyTimestamp=1700000000000"), &[], None).await.status,
        200
    );
    assert_eq!(http("PUT", &url("/eureka/v2/apps/tether/a"), &[], None).await.status, 200);
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/zzz?status=UP"), &[], None).await.status, 404);
    assert_eq!(
        http("PUT", &url("/eureka/apps/TETHER/a?lastDirtyTimestamp=1800000000000"), &[], None).await.status,
        404
    );
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/a?lastDirtyTimestamp=abc"), &[], None).await.status, 400);

    // Status override: OUT_OF_SERVICE shows in listings and survives renewals and a re-registration.
    let r = http("PUT", &url("/eureka/apps/TETHER/b/status?value=OUT_OF_SERVICE"), &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..3 {
        assert_eq!(
            http("PUT", &url("/eureka/apps/TETHER/b?status=UP&lastDirtyTimestamp=1700000000000"), &[], None)
                .await
                .status,
            200
        );
    }
    let r = post_json(&base, "/eureka/v2/", "tether", &json_instance("b", "tether")).await;
    assert_eq!(r.status, 204);
    let v = get_json(&url("/eureka/apps")).await.json();
    let b = find_instance(&v, "b").unwrap();
    assert_eq!(
        (b["status"].as_str(), b["overriddenStatus"].as_str()),
        (Some("OUT_OF_SERVICE"), Some("OUT_OF_SERVICE"))
    );
    assert_eq!(v["applications"]["apps__hashcode"], "OUT_OF_SERVICE_1_UP_2_");
    let x = get(&url("/eureka/v2/apps/TETHER/b")).await.body;
    assert!(x.contains("<status>OUT_OF_SERVICE</status><overriddenstatus>OUT_OF_SERVICE</overriddenstatus>"), "{x}");
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/zzz/status?value=OUT_OF_SERVICE"), &[], None).await.status, 404);
    let r = http("PUT", &url("/eureka/apps/TETHER/b/status?value=SIDEWAYS"), &[], None).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("SIDEWAYS"), "{}", r.body);
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/b/status"), &[], None).await.status, 400);

    // Metadata update.
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/a/metadata?sessions=42&zone=z9"), &[], None).await.status, 200);
    let v = get_json(&url("/eureka/apps/TETHER/a")).await.json();
    assert_eq!(v["instance"]["metadata"]["sessions"], "42");
    assert_eq!(v["instance"]["metadata"]["zone"], "z9");
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/zzz/metadata?k=v"), &[], None).await.status, 404);
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/a/metadata?bad%20key=v"), &[], None).await.status, 400);

    // Cancel.
    assert_eq!(http("DELETE", &url("/eureka/v2/apps/TETHER/c"), &[], None).await.status, 200);
    assert_eq!(get(&url("/eureka/apps/TETHER/c")).await.status, 404);
    assert_eq!(http("DELETE", &url("/eureka/apps/TETHER/c"), &[], None).await.status, 404);

    // Delta, one entry per changed instance with its latest action: a MODIFIED (metadata), b ADDED
    // (re-registered after its status change, still OUT_OF_SERVICE), c DELETED.
    let v = get_json(&url("/eureka/apps/delta")).await.json();
    let action = |id: &str| find_instance(&v, id).map(|i| i["actionType"].as_str().unwrap_or_default().to_string());
    assert_eq!(action("a").as_deref(), Some("MODIFIED"));
    assert_eq!(action("b").as_deref(), Some("ADDED"));
    assert_eq!(find_instance(&v, "b").unwrap()["status"], "OUT_OF_SERVICE");
    assert_eq!(action("c").as_deref(), Some("DELETED"));
    assert_eq!(v["applications"]["apps__hashcode"], "OUT_OF_SERVICE_1_UP_1_");
    let version: u64 = v["applications"]["versions__delta"].as_str().unwrap().parse().unwrap();
    assert!(version >= 6, "{version}");
    let x = get(&url("/eureka/v2/apps/delta")).await.body;
    assert!(x.contains("<actionType>DELETED</actionType>") && x.contains("<actionType>MODIFIED</actionType>"), "{x}");
    // A fresh registration is ADDED in the delta.
    assert_eq!(post_json(&base, "/eureka/", "tether", &json_instance("d", "tether")).await.status, 204);
    let v = get_json(&url("/eureka/v2/apps/delta")).await.json();
    assert_eq!(find_instance(&v, "d").unwrap()["actionType"], "ADDED");

    // Removing the override: with ?value=UP the instance is UP at once.
    assert_eq!(http("DELETE", &url("/eureka/apps/TETHER/b/status?value=UP"), &[], None).await.status, 200);
    let v = get_json(&url("/eureka/apps/TETHER/b")).await.json();
    assert_eq!(
        (v["instance"]["status"].as_str(), v["instance"]["overriddenStatus"].as_str()),
        (Some("UP"), Some("UNKNOWN"))
    );
    // Without a value it is UNKNOWN and the next renewal asks for a registration (Eureka).
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/b/status?value=OUT_OF_SERVICE"), &[], None).await.status, 200);
    assert_eq!(http("DELETE", &url("/eureka/apps/TETHER/b/status"), &[], None).await.status, 200);
    assert_eq!(http("PUT", &url("/eureka/apps/TETHER/b?status=UP"), &[], None).await.status, 404);
    assert_eq!(post_json(&base, "/eureka/", "tether", &json_instance("b", "tether")).await.status, 204);
    let v = get_json(&url("/eureka/apps/TETHER/b")).await.json();
    assert_eq!(v["instance"]["status"], "UP");
    assert_eq!(http("DELETE", &url("/eureka/apps/TETHER/zzz/status"), &[], None).await.status, 404);
}

#[tokio::test]
async fn malformed_instances_get_400_with_eurekas_reason() {
    let (base, state) = serve_in_process(RegistrySettings::default()).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        ("TETHER", Box::new(|i| i["instance"]["ipAddr"] = json!("")), "Missing ip address"),
        (
            "TETHER",
            Box::new(|i| {
                i["instance"].as_object_mut().unwrap().remove("hostName");
            }),
            "Missing hostname",
        ),
        (
            "TETHER",
            Box::new(|i| {
                let o = i["instance"].as_object_mut().unwrap();
                o.remove("hostName");
                o.remove("instanceId");
            }),
            "Missing instanceId",
        ),
        (
            "TETHER",
            Box::new(|i| {
                i["instance"].as_object_mut().unwrap().remove("app");
            }),
            "Missing appName",
        ),
        ("OTHER", Box::new(|_| {}), "Mismatched appName, expecting OTHER but was TETHER"),
        (
            "TETHER",
            Box::new(|i| {
                i["instance"].as_object_mut().unwrap().remove("dataCenterInfo");
            }),
            "Missing dataCenterInfo",
        ),
        (
            "TETHER",
            Box::new(|i| i["instance"]["dataCenterInfo"] = json!({"@class": DC})),
            "Missing dataCenterInfo Name",
        ),
        (
            "TETHER",
            Box::new(|i| i["instance"]["port"] = json!({"$": 123456, "@enabled": "true"})),
            "Malformed instance: invalid port",
        ),
        ("TETHER", Box::new(|i| i["instance"]["metadata"] = json!({"no good": "x"})), "Invalid metadata key"),
    ];
    for (app, mutate, reason) in cases {
        let mut body = json_instance("m1", "tether");
        mutate(&mut body);
        let r = post_json(&base, "/eureka/", app, &body).await;
        assert_eq!(r.status, 400, "{reason}: {}", r.body);
        assert!(r.body.starts_with(reason), "expected {reason:?}, got {:?}", r.body);
        assert!(r.content_type.starts_with("text/plain"));
    }
    // Eureka's fallback: no instanceId but a hostName registers under the host name.
    let mut body = json_instance("m2", "tether");
    body["instance"].as_object_mut().unwrap().remove("instanceId");
    assert_eq!(post_json(&base, "/eureka/v2/", "tether", &body).await.status, 204);
    assert_eq!(get(&format!("{base}/eureka/apps/TETHER/m2.example")).await.status, 200);

    let r = post_json(&base, "/eureka/", "tether", &json!({"instance": 5})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http("POST", &format!("{base}/eureka/apps/tether"), &[("content-type", "application/json")], Some("{nope"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Malformed instance: malformed JSON"), "{}", r.body);
    let r = post_xml(&base, "/eureka/", "tether", "<instance><app>TETHER</app>").await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("Malformed instance: malformed XML"), "{}", r.body);
    let r = post_xml(&base, "/eureka/", "tether", "<application/>").await;
    assert_eq!(r.status, 400);
    let r = http("POST", &format!("{base}/eureka/apps/tether"), &[("content-type", "text/plain")], Some("hello")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("neither JSON nor XML"), "{}", r.body);
    // The request body limit (64 KiB by default).
    let mut big = json_instance("big", "tether");
    big["instance"]["metadata"]["pad"] = json!("x".repeat(70 * 1024));
    assert_eq!(post_json(&base, "/eureka/", "tether", &big).await.status, 413);
    // Nothing of that got in.
    assert_eq!(state.with_registry(|r| r.len()), 1);
}

#[tokio::test]
async fn health() {
    let (base, _state) = serve_in_process(RegistrySettings::default()).await;
    post_json(&base, "/eureka/", "tether", &json_instance("h1", "tether")).await;
    let r = get(&format!("{base}/health")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "UP");
    assert_eq!(r.json()["instances"], 1);
}
