//! Eureka's two wire formats: JSON (Jackson codec: `"port":{"$":7443,"@enabled":"true"}`,
//! `"@class"`, string timestamps) and XML (XStream: `<port enabled="true">7443</port>`,
//! `<dataCenterInfo class="...">`, `<metadata><k>v</k></metadata>`).
//!
//! Encoders write exactly Eureka's shapes. Decoders are lenient in the way Eureka's are: numbers
//! may come as strings and booleans as `"true"`, unknown fields are skipped, `overriddenStatus`
//! and the legacy `overriddenstatus` are both read, an unknown status reads as `UNKNOWN`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::model::{
    ActionType, Application, Applications, DataCenterInfo, InstanceInfo, InstanceStatus, LeaseInfo, PortInfo,
    DEFAULT_DATA_CENTER_CLASS,
};

/// `@class` Eureka writes for an empty metadata map.
pub const EMPTY_METADATA_CLASS: &str = "java.util.Collections$EmptyMap";
/// Maximum element nesting accepted in an XML body.
const MAX_XML_DEPTH: usize = 32;

/// A body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/xml`.
    Xml,
}

impl Format {
    /// The response format for an `Accept` header, as Eureka chooses it: JSON when the header
    /// mentions `json`, XML otherwise (also when there is no header).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("json") => Format::Json,
            _ => Format::Xml,
        }
    }

    /// The format of a request body: from its `Content-Type` when that names JSON or XML, else
    /// from the first non-space byte (`{` or `<`). `None` when neither tells.
    pub fn of_body(content_type: Option<&str>, body: &[u8]) -> Option<Format> {
        if let Some(ct) = content_type.map(str::to_ascii_lowercase) {
            if ct.contains("json") {
                return Some(Format::Json);
            }
            if ct.contains("xml") {
                return Some(Format::Xml);
            }
        }
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Some(Format::Json),
            Some(b'<') => Some(Format::Xml),
            _ => None,
        }
    }

    /// The `Content-Type` value for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
        }
    }
}

/// A body that could not be read as an instance or a listing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Not well-formed XML (or not UTF-8).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// XML nested deeper than the decoder accepts.
    #[error("XML nested deeper than {MAX_XML_DEPTH} elements")]
    TooDeep,
    /// The document's root is not what was expected.
    #[error("expected a {expected} document, found {found}")]
    UnexpectedRoot {
        /// The expected root (`instance`, `application`, `applications`).
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A field has a value of the wrong kind.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Field name as on the wire.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Neither the content type nor the body tells JSON from XML.
    #[error("body is neither JSON nor XML (send Content-Type: application/json or application/xml)")]
    UnknownFormat,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField { field, reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Encodes one instance as Eureka does (`{"instance":{...}}` or `<instance>...</instance>`).
pub fn encode_instance(info: &InstanceInfo, format: Format) -> String {
    match format {
        Format::Json => json_string(&serde_json::json!({ "instance": JInstance::from(info) })),
        Format::Xml => {
            let mut out = String::new();
            xml_instance(&mut out, info);
            out
        }
    }
}

/// Encodes one application (`{"application":{"name":..,"instance":[..]}}` or `<application>`).
pub fn encode_application(app: &Application, format: Format) -> String {
    match format {
        Format::Json => json_string(&serde_json::json!({ "application": JApplication::from(app) })),
        Format::Xml => {
            let mut out = String::new();
            xml_application(&mut out, app);
            out
        }
    }
}

/// Encodes a listing (`{"applications":{"versions__delta":..,"apps__hashcode":..,"application":[..]}}`
/// or `<applications>`).
pub fn encode_applications(apps: &Applications, format: Format) -> String {
    match format {
        Format::Json => json_string(&serde_json::json!({ "applications": JApplications::from(apps) })),
        Format::Xml => {
            let mut out = String::from("<applications>");
            xml_elem(&mut out, "versions__delta", &apps.versions_delta.to_string());
            xml_elem(&mut out, "apps__hashcode", &apps.apps_hashcode);
            for app in &apps.applications {
                xml_application(&mut out, app);
            }
            out.push_str("</applications>");
            out
        }
    }
}

/// Decodes one instance (`{"instance":{...}}`, a bare instance object, or `<instance>`).
pub fn decode_instance(body: &[u8], format: Format) -> Result<InstanceInfo, DecodeError> {
    match format {
        Format::Json => {
            let v = parse_json(body)?;
            let obj = match v.get("instance") {
                Some(inner) if inner.is_object() => inner,
                _ => &v,
            };
            json_instance(obj)
        }
        Format::Xml => {
            let root = parse_xml(body)?;
            expect_root(&root, "instance")?;
            xml_read_instance(&root)
        }
    }
}

/// Decodes one application (`{"application":{...}}` or `<application>`).
pub fn decode_application(body: &[u8], format: Format) -> Result<Application, DecodeError> {
    match format {
        Format::Json => {
            let v = parse_json(body)?;
            let obj = v
                .get("application")
                .ok_or_else(|| DecodeError::UnexpectedRoot { expected: "application", found: json_keys(&v) })?;
            json_application(obj)
        }
        Format::Xml => {
            let root = parse_xml(body)?;
            expect_root(&root, "application")?;
            xml_read_application(&root)
        }
    }
}

/// Decodes a listing (`{"applications":{...}}` or `<applications>`).
pub fn decode_applications(body: &[u8], format: Format) -> Result<Applications, DecodeError> {
    match format {
        Format::Json => {
            let v = parse_json(body)?;
            let obj = v
                .get("applications")
                .ok_or_else(|| DecodeError::UnexpectedRoot { expected: "applications", found: json_keys(&v) })?;
            let mut apps = Applications {
                versions_delta: opt_i64(obj, "versions__delta")?.unwrap_or(-1),
                apps_hashcode: opt_str(obj, "apps__hashcode").unwrap_or_default(),
                applications: Vec::new(),
            };
            for a in one_or_many(obj.get("application")) {
                apps.applications.push(json_application(a)?);
            }
            Ok(apps)
        }
        Format::Xml => {
            let root = parse_xml(body)?;
            expect_root(&root, "applications")?;
            let mut apps = Applications { versions_delta: -1, ..Default::default() };
            for c in &root.children {
                match c.name.as_str() {
                    "versions__delta" => {
                        apps.versions_delta =
                            c.text.trim().parse().map_err(|_| invalid("versions__delta", c.text.clone()))?
                    }
                    "apps__hashcode" => apps.apps_hashcode = c.text.clone(),
                    "application" => apps.applications.push(xml_read_application(c)?),
                    _ => {}
                }
            }
            Ok(apps)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

fn json_string(v: &Value) -> String {
    // Serialising a `Value` cannot fail (all keys are strings).
    serde_json::to_string(v).unwrap_or_default()
}

fn parse_json(body: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
}

fn json_keys(v: &Value) -> String {
    match v.as_object() {
        Some(m) => format!("keys {:?}", m.keys().collect::<Vec<_>>()),
        None => "a non-object".into(),
    }
}

#[derive(Serialize)]
struct JPort {
    #[serde(rename = "$")]
    port: u16,
    #[serde(rename = "@enabled")]
    enabled: &'static str,
}

impl From<PortInfo> for JPort {
    fn from(p: PortInfo) -> Self {
        JPort { port: p.port, enabled: bool_str(p.enabled) }
    }
}

#[derive(Serialize)]
struct JDataCenter<'a> {
    #[serde(rename = "@class")]
    class: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JLease {
    renewal_interval_in_secs: u32,
    duration_in_secs: u32,
    registration_timestamp: u64,
    last_renewal_timestamp: u64,
    eviction_timestamp: u64,
    service_up_timestamp: u64,
}

impl From<LeaseInfo> for JLease {
    fn from(l: LeaseInfo) -> Self {
        JLease {
            renewal_interval_in_secs: l.renewal_interval_in_secs,
            duration_in_secs: l.duration_in_secs,
            registration_timestamp: l.registration_timestamp,
            last_renewal_timestamp: l.last_renewal_timestamp,
            eviction_timestamp: l.eviction_timestamp,
            service_up_timestamp: l.service_up_timestamp,
        }
    }
}

/// Field order follows Eureka's `InstanceInfoSerializer`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JInstance<'a> {
    instance_id: &'a str,
    host_name: &'a str,
    app: &'a str,
    ip_addr: &'a str,
    status: &'static str,
    overridden_status: &'static str,
    port: JPort,
    secure_port: JPort,
    country_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_center_info: Option<JDataCenter<'a>>,
    lease_info: JLease,
    metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_group_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    home_page_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_page_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure_health_check_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure_vip_address: Option<&'a str>,
    is_coordinating_discovery_server: &'static str,
    last_updated_timestamp: String,
    last_dirty_timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    asg_name: Option<&'a str>,
}

impl<'a> From<&'a InstanceInfo> for JInstance<'a> {
    fn from(i: &'a InstanceInfo) -> Self {
        let metadata = if i.metadata.is_empty() {
            serde_json::json!({ "@class": EMPTY_METADATA_CLASS })
        } else {
            Value::Object(i.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
        };
        JInstance {
            instance_id: &i.instance_id,
            host_name: &i.host_name,
            app: &i.app,
            ip_addr: &i.ip_addr,
            status: i.status.as_str(),
            overridden_status: i.overridden_status.as_str(),
            port: i.port.into(),
            secure_port: i.secure_port.into(),
            country_id: i.country_id,
            data_center_info: i.data_center_info.as_ref().map(|dc| JDataCenter {
                class: &dc.class,
                name: dc.name.as_deref(),
                metadata: &dc.metadata,
            }),
            lease_info: i.lease_info.into(),
            metadata,
            app_group_name: i.app_group_name.as_deref(),
            home_page_url: i.home_page_url.as_deref(),
            status_page_url: i.status_page_url.as_deref(),
            health_check_url: i.health_check_url.as_deref(),
            secure_health_check_url: i.secure_health_check_url.as_deref(),
            vip_address: i.vip_address.as_deref(),
            secure_vip_address: i.secure_vip_address.as_deref(),
            is_coordinating_discovery_server: bool_str(i.is_coordinating_discovery_server),
            last_updated_timestamp: i.last_updated_timestamp.to_string(),
            last_dirty_timestamp: i.last_dirty_timestamp.to_string(),
            action_type: i.action_type.map(ActionType::as_str),
            asg_name: i.asg_name.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct JApplication<'a> {
    name: &'a str,
    instance: Vec<JInstance<'a>>,
}

impl<'a> From<&'a Application> for JApplication<'a> {
    fn from(a: &'a Application) -> Self {
        JApplication { name: &a.name, instance: a.instances.iter().map(JInstance::from).collect() }
    }
}

#[derive(Serialize)]
struct JApplications<'a> {
    #[serde(rename = "versions__delta")]
    versions_delta: String,
    #[serde(rename = "apps__hashcode")]
    apps_hashcode: &'a str,
    application: Vec<JApplication<'a>>,
}

impl<'a> From<&'a Applications> for JApplications<'a> {
    fn from(a: &'a Applications) -> Self {
        JApplications {
            versions_delta: a.versions_delta.to_string(),
            apps_hashcode: &a.apps_hashcode,
            application: a.applications.iter().map(JApplication::from).collect(),
        }
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// A scalar as a string (numbers and booleans are accepted where Eureka sends strings).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn opt_str(obj: &Value, key: &str) -> Option<String> {
    obj.get(key).and_then(scalar_string)
}

fn opt_u64(obj: &Value, key: &'static str) -> Result<Option<u64>, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| invalid(key, format!("{n} is not a non-negative integer"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| invalid(key, format!("{s:?} is not a number")))
        }
        Some(other) => Err(invalid(key, format!("{other} is not a number"))),
    }
}

fn opt_i64(obj: &Value, key: &'static str) -> Result<Option<i64>, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => scalar_string(v)
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| invalid(key, format!("{v} is not a number"))),
    }
}

fn opt_u32(obj: &Value, key: &'static str) -> Result<Option<u32>, DecodeError> {
    match opt_u64(obj, key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| invalid(key, format!("{n} is out of range"))),
    }
}

fn parse_bool(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("true")
}

fn opt_bool(obj: &Value, key: &str) -> Option<bool> {
    match obj.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(parse_bool(s)),
        _ => None,
    }
}

fn one_or_many(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => Vec::new(),
    }
}

fn port_from_u64(field: &'static str, n: u64) -> Result<u16, DecodeError> {
    u16::try_from(n).map_err(|_| invalid(field, format!("{n} is not a port")))
}

fn json_port(obj: &Value, key: &'static str, default: PortInfo) -> Result<PortInfo, DecodeError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(p @ Value::Object(_)) => {
            let port = match opt_u64(p, "$")? {
                Some(n) => port_from_u64(key, n)?,
                None => default.port,
            };
            let enabled = opt_bool(p, "@enabled").unwrap_or(default.enabled);
            Ok(PortInfo { port, enabled })
        }
        Some(_) => {
            let port = opt_u64(obj, key)?.map(|n| port_from_u64(key, n)).transpose()?.unwrap_or(default.port);
            Ok(PortInfo { port, enabled: default.enabled })
        }
    }
}

fn json_string_map(v: Option<&Value>, field: &'static str) -> Result<BTreeMap<String, String>, DecodeError> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                if k == "@class" {
                    continue;
                }
                match val {
                    Value::Null => {}
                    other => {
                        let s = scalar_string(other)
                            .ok_or_else(|| invalid(field, format!("value of {k:?} is not a string")))?;
                        out.insert(k.clone(), s);
                    }
                }
            }
        }
        Some(other) => return Err(invalid(field, format!("{other} is not an object"))),
    }
    Ok(out)
}

fn json_instance(obj: &Value) -> Result<InstanceInfo, DecodeError> {
    if !obj.is_object() {
        return Err(DecodeError::UnexpectedRoot { expected: "instance", found: "a non-object".into() });
    }
    let status = opt_str(obj, "status").map(|s| InstanceStatus::from_lenient(&s)).unwrap_or(InstanceStatus::Up);
    let overridden = opt_str(obj, "overriddenStatus")
        .or_else(|| opt_str(obj, "overriddenstatus"))
        .map(|s| InstanceStatus::from_lenient(&s))
        .unwrap_or(InstanceStatus::Unknown);
    let data_center_info = match obj.get("dataCenterInfo") {
        None | Some(Value::Null) => None,
        Some(dc @ Value::Object(_)) => Some(DataCenterInfo {
            class: opt_str(dc, "@class").unwrap_or_else(|| DEFAULT_DATA_CENTER_CLASS.into()),
            name: opt_str(dc, "name"),
            metadata: json_string_map(dc.get("metadata"), "dataCenterInfo.metadata")?,
        }),
        Some(other) => return Err(invalid("dataCenterInfo", format!("{other} is not an object"))),
    };
    let mut lease_info = LeaseInfo::default();
    if let Some(l) = obj.get("leaseInfo").filter(|l| l.is_object()) {
        let d = LeaseInfo::default();
        lease_info = LeaseInfo {
            renewal_interval_in_secs: opt_u32(l, "renewalIntervalInSecs")?.unwrap_or(d.renewal_interval_in_secs),
            duration_in_secs: opt_u32(l, "durationInSecs")?.unwrap_or(d.duration_in_secs),
            registration_timestamp: opt_u64(l, "registrationTimestamp")?.unwrap_or(0),
            last_renewal_timestamp: opt_u64(l, "lastRenewalTimestamp")?.unwrap_or(0),
            eviction_timestamp: opt_u64(l, "evictionTimestamp")?.unwrap_or(0),
            service_up_timestamp: opt_u64(l, "serviceUpTimestamp")?.unwrap_or(0),
        };
    }
    Ok(InstanceInfo {
        instance_id: opt_str(obj, "instanceId").unwrap_or_default(),
        app: opt_str(obj, "app").map(|s| s.to_uppercase()).unwrap_or_default(),
        app_group_name: opt_str(obj, "appGroupName"),
        host_name: opt_str(obj, "hostName").unwrap_or_default(),
        ip_addr: opt_str(obj, "ipAddr").unwrap_or_default(),
        vip_address: opt_str(obj, "vipAddress"),
        secure_vip_address: opt_str(obj, "secureVipAddress"),
        status,
        overridden_status: overridden,
        port: json_port(obj, "port", PortInfo { port: 7001, enabled: true })?,
        secure_port: json_port(obj, "securePort", PortInfo { port: 7002, enabled: false })?,
        country_id: opt_u32(obj, "countryId")?.unwrap_or(1),
        data_center_info,
        lease_info,
        metadata: json_string_map(obj.get("metadata"), "metadata")?,
        home_page_url: opt_str(obj, "homePageUrl"),
        status_page_url: opt_str(obj, "statusPageUrl"),
        health_check_url: opt_str(obj, "healthCheckUrl"),
        secure_health_check_url: opt_str(obj, "secureHealthCheckUrl"),
        is_coordinating_discovery_server: opt_bool(obj, "isCoordinatingDiscoveryServer").unwrap_or(false),
        last_updated_timestamp: opt_u64(obj, "lastUpdatedTimestamp")?.unwrap_or(0),
        last_dirty_timestamp: opt_u64(obj, "lastDirtyTimestamp")?.unwrap_or(0),
        action_type: opt_str(obj, "actionType").and_then(|s| ActionType::parse(&s)),
        asg_name: opt_str(obj, "asgName"),
    })
}

fn json_application(obj: &Value) -> Result<Application, DecodeError> {
    let mut app = Application { name: opt_str(obj, "name").unwrap_or_default(), instances: Vec::new() };
    for i in one_or_many(obj.get("instance")) {
        app.instances.push(json_instance(i)?);
    }
    Ok(app)
}

// ---------------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------------

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

fn xml_elem(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&esc(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn xml_opt(out: &mut String, name: &str, text: Option<&str>) {
    if let Some(t) = text {
        xml_elem(out, name, t);
    }
}

fn xml_write_port(out: &mut String, name: &str, p: PortInfo) {
    out.push_str(&format!("<{name} enabled=\"{}\">{}</{name}>", bool_str(p.enabled), p.port));
}

fn xml_map(out: &mut String, map: &BTreeMap<String, String>) {
    for (k, v) in map {
        // Keys are checked at registration; a key that still is no XML name is skipped rather
        // than producing a document no client can parse.
        if crate::model::is_xml_name(k) {
            xml_elem(out, k, v);
        }
    }
}

/// Element order follows Eureka's XStream `InstanceInfoConverter`.
fn xml_instance(out: &mut String, i: &InstanceInfo) {
    out.push_str("<instance>");
    xml_elem(out, "instanceId", &i.instance_id);
    xml_elem(out, "hostName", &i.host_name);
    xml_elem(out, "app", &i.app);
    xml_elem(out, "ipAddr", &i.ip_addr);
    xml_elem(out, "status", i.status.as_str());
    xml_elem(out, "overriddenstatus", i.overridden_status.as_str());
    xml_write_port(out, "port", i.port);
    xml_write_port(out, "securePort", i.secure_port);
    xml_elem(out, "countryId", &i.country_id.to_string());
    if let Some(dc) = &i.data_center_info {
        out.push_str(&format!("<dataCenterInfo class=\"{}\">", esc(&dc.class)));
        xml_opt(out, "name", dc.name.as_deref());
        if !dc.metadata.is_empty() {
            out.push_str("<metadata>");
            xml_map(out, &dc.metadata);
            out.push_str("</metadata>");
        }
        out.push_str("</dataCenterInfo>");
    }
    let l = &i.lease_info;
    out.push_str("<leaseInfo>");
    xml_elem(out, "renewalIntervalInSecs", &l.renewal_interval_in_secs.to_string());
    xml_elem(out, "durationInSecs", &l.duration_in_secs.to_string());
    xml_elem(out, "registrationTimestamp", &l.registration_timestamp.to_string());
    xml_elem(out, "lastRenewalTimestamp", &l.last_renewal_timestamp.to_string());
    xml_elem(out, "evictionTimestamp", &l.eviction_timestamp.to_string());
    xml_elem(out, "serviceUpTimestamp", &l.service_up_timestamp.to_string());
    out.push_str("</leaseInfo>");
    if i.metadata.is_empty() {
        out.push_str(&format!("<metadata class=\"{}\"/>", esc(EMPTY_METADATA_CLASS)));
    } else {
        out.push_str("<metadata>");
        xml_map(out, &i.metadata);
        out.push_str("</metadata>");
    }
    xml_opt(out, "appGroupName", i.app_group_name.as_deref());
    xml_opt(out, "homePageUrl", i.home_page_url.as_deref());
    xml_opt(out, "statusPageUrl", i.status_page_url.as_deref());
    xml_opt(out, "healthCheckUrl", i.health_check_url.as_deref());
    xml_opt(out, "secureHealthCheckUrl", i.secure_health_check_url.as_deref());
    xml_opt(out, "vipAddress", i.vip_address.as_deref());
    xml_opt(out, "secureVipAddress", i.secure_vip_address.as_deref());
    xml_elem(out, "isCoordinatingDiscoveryServer", bool_str(i.is_coordinating_discovery_server));
    xml_elem(out, "lastUpdatedTimestamp", &i.last_updated_timestamp.to_string());
    xml_elem(out, "lastDirtyTimestamp", &i.last_dirty_timestamp.to_string());
    xml_opt(out, "actionType", i.action_type.map(ActionType::as_str));
    xml_opt(out, "asgName", i.asg_name.as_deref());
    out.push_str("</instance>");
}

fn xml_application(out: &mut String, a: &Application) {
    out.push_str("<application>");
    xml_elem(out, "name", &a.name);
    for i in &a.instances {
        xml_instance(out, i);
    }
    out.push_str("</application>");
}

/// A parsed XML element: name, attributes, concatenated text and child elements.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.clone())
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn parse_xml(body: &[u8]) -> Result<Element, DecodeError> {
    use quick_xml::events::Event;

    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Xml("body is not UTF-8".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let xml_err = |e: quick_xml::Error| DecodeError::Xml(e.to_string());
    let start = |e: &quick_xml::events::BytesStart<'_>| -> Result<Element, DecodeError> {
        let name = e.name().as_ref().to_string();
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|e| DecodeError::Xml(e.to_string()))?;
            let key = a.key.as_ref().to_string();
            let value = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(xml_err)?.into_owned();
            attrs.push((key, value));
        }
        Ok(Element { name, attrs, ..Default::default() })
    };
    loop {
        match reader.read_event().map_err(xml_err)? {
            Event::Start(e) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                if root.is_some() {
                    return Err(DecodeError::Xml("content after the root element".into()));
                }
                stack.push(start(&e)?);
            }
            Event::Empty(e) => {
                let el = start(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(DecodeError::Xml("content after the root element".into())),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| DecodeError::Xml("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(xml_err)?
                } else {
                    match r.xml10_content().as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        other => return Err(DecodeError::Xml(format!("unknown entity &{other};"))),
                    }
                };
                if let (Some(c), Some(cur)) = (resolved, stack.last_mut()) {
                    cur.text.push(c);
                }
            }
            Event::DocType(_) => return Err(DecodeError::Xml("DOCTYPE is not accepted".into())),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(DecodeError::Xml("unexpected end of document".into()));
    }
    root.ok_or_else(|| DecodeError::Xml("empty document".into()))
}

fn expect_root(root: &Element, expected: &'static str) -> Result<(), DecodeError> {
    if root.name == expected {
        Ok(())
    } else {
        Err(DecodeError::UnexpectedRoot { expected, found: format!("<{}>", root.name) })
    }
}

fn xml_u64(el: &Element, name: &'static str) -> Result<Option<u64>, DecodeError> {
    match el.child(name) {
        None => Ok(None),
        Some(c) if c.text.trim().is_empty() => Ok(None),
        Some(c) => c.text.trim().parse().map(Some).map_err(|_| invalid(name, format!("{:?} is not a number", c.text))),
    }
}

fn xml_u32(el: &Element, name: &'static str) -> Result<Option<u32>, DecodeError> {
    match xml_u64(el, name)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| invalid(name, format!("{n} is out of range"))),
    }
}

fn xml_port(el: &Element, name: &'static str, default: PortInfo) -> Result<PortInfo, DecodeError> {
    let Some(p) = el.child(name) else { return Ok(default) };
    let port = if p.text.trim().is_empty() {
        default.port
    } else {
        let n: u64 = p.text.trim().parse().map_err(|_| invalid(name, format!("{:?} is not a number", p.text)))?;
        port_from_u64(name, n)?
    };
    let enabled = p.attr("enabled").map(parse_bool).unwrap_or(default.enabled);
    Ok(PortInfo { port, enabled })
}

fn xml_map_of(el: Option<&Element>) -> BTreeMap<String, String> {
    el.map(|m| m.children.iter().map(|c| (c.name.clone(), c.text.clone())).collect()).unwrap_or_default()
}

fn xml_read_instance(el: &Element) -> Result<InstanceInfo, DecodeError> {
    let status = el.child_text("status").map(|s| InstanceStatus::from_lenient(&s)).unwrap_or(InstanceStatus::Up);
    let overridden = el
        .child_text("overriddenstatus")
        .or_else(|| el.child_text("overriddenStatus"))
        .map(|s| InstanceStatus::from_lenient(&s))
        .unwrap_or(InstanceStatus::Unknown);
    let data_center_info = el.child("dataCenterInfo").map(|dc| DataCenterInfo {
        class: dc.attr("class").unwrap_or(DEFAULT_DATA_CENTER_CLASS).to_string(),
        name: dc.child_text("name"),
        metadata: xml_map_of(dc.child("metadata")),
    });
    let mut lease_info = LeaseInfo::default();
    if let Some(l) = el.child("leaseInfo") {
        let d = LeaseInfo::default();
        lease_info = LeaseInfo {
            renewal_interval_in_secs: xml_u32(l, "renewalIntervalInSecs")?.unwrap_or(d.renewal_interval_in_secs),
            duration_in_secs: xml_u32(l, "durationInSecs")?.unwrap_or(d.duration_in_secs),
            registration_timestamp: xml_u64(l, "registrationTimestamp")?.unwrap_or(0),
            last_renewal_timestamp: xml_u64(l, "lastRenewalTimestamp")?.unwrap_or(0),
            eviction_timestamp: xml_u64(l, "evictionTimestamp")?.unwrap_or(0),
            service_up_timestamp: xml_u64(l, "serviceUpTimestamp")?.unwrap_or(0),
        };
    }
    Ok(InstanceInfo {
        instance_id: el.child_text("instanceId").unwrap_or_default(),
        app: el.child_text("app").map(|s| s.to_uppercase()).unwrap_or_default(),
        app_group_name: el.child_text("appGroupName"),
        host_name: el.child_text("hostName").unwrap_or_default(),
        ip_addr: el.child_text("ipAddr").unwrap_or_default(),
        vip_address: el.child_text("vipAddress"),
        secure_vip_address: el.child_text("secureVipAddress"),
        status,
        overridden_status: overridden,
        port: xml_port(el, "port", PortInfo { port: 7001, enabled: true })?,
        secure_port: xml_port(el, "securePort", PortInfo { port: 7002, enabled: false })?,
        country_id: xml_u32(el, "countryId")?.unwrap_or(1),
        data_center_info,
        lease_info,
        metadata: xml_map_of(el.child("metadata")),
        home_page_url: el.child_text("homePageUrl"),
        status_page_url: el.child_text("statusPageUrl"),
        health_check_url: el.child_text("healthCheckUrl"),
        secure_health_check_url: el.child_text("secureHealthCheckUrl"),
        is_coordinating_discovery_server: el
            .child_text("isCoordinatingDiscoveryServer")
            .map(|s| parse_bool(&s))
            .unwrap_or(false),
        last_updated_timestamp: xml_u64(el, "lastUpdatedTimestamp")?.unwrap_or(0),
        last_dirty_timestamp: xml_u64(el, "lastDirtyTimestamp")?.unwrap_or(0),
        action_type: el.child_text("actionType").and_then(|s| ActionType::parse(&s)),
        asg_name: el.child_text("asgName"),
    })
}

fn xml_read_application(el: &Element) -> Result<Application, DecodeError> {
    let mut app = Application { name: el.child_text("name").unwrap_or_default(), instances: Vec::new() };
    for c in el.children.iter().filter(|c| c.name == "instance") {
        app.instances.push(xml_read_instance(c)?);
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstanceInfo {
        let mut i = InstanceInfo::new("tether", "node-1", "gw1.example", "10.0.0.7", 7443);
        i.metadata.insert("quic".into(), "gw1.example:4433".into());
        i.metadata.insert("zone".into(), "eu-1 & <b>".into());
        i.home_page_url = Some("http://gw1.example:7443/".into());
        i.last_dirty_timestamp = 1_700_000_000_123;
        i.last_updated_timestamp = 1_700_000_000_456;
        i.action_type = Some(ActionType::Added);
        i.lease_info.registration_timestamp = 5;
        i
    }

    #[test]
    fn json_shapes_are_eurekas() {
        let s = encode_instance(&sample(), Format::Json);
        let v: Value = serde_json::from_str(&s).unwrap();
        let i = &v["instance"];
        assert_eq!(i["port"], serde_json::json!({"$": 7443, "@enabled": "true"}));
        assert_eq!(i["securePort"], serde_json::json!({"$": 7002, "@enabled": "false"}));
        assert_eq!(
            i["dataCenterInfo"],
            serde_json::json!({"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"})
        );
        assert_eq!(i["metadata"]["quic"], "gw1.example:4433");
        assert_eq!(i["lastDirtyTimestamp"], "1700000000123");
        assert_eq!(i["isCoordinatingDiscoveryServer"], "false");
        assert_eq!(i["overriddenStatus"], "UNKNOWN");
        assert_eq!(i["leaseInfo"]["registrationTimestamp"], 5);
        assert_eq!(i["actionType"], "ADDED");
    }

    #[test]
    fn xml_shapes_are_eurekas() {
        let s = encode_instance(&sample(), Format::Xml);
        assert!(s.starts_with("<instance><instanceId>node-1</instanceId>"), "{s}");
        assert!(s.contains("<port enabled=\"true\">7443</port>"), "{s}");
        assert!(s.contains("<securePort enabled=\"false\">7002</securePort>"), "{s}");
        assert!(
            s.contains("<dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\"><name>MyOwn</name></dataCenterInfo>"),
            "{s}"
        );
        assert!(
            s.contains("<metadata><quic>gw1.example:4433</quic><zone>eu-1 &amp; &lt;b&gt;</zone></metadata>"),
            "{s}"
        );
        assert!(s.contains("<overriddenstatus>UNKNOWN</overriddenstatus>"), "{s}");
        let mut empty = sample();
        empty.metadata.clear();
        assert!(encode_instance(&empty, Format::Xml).contains("<metadata class=\"java.util.Collections$EmptyMap\"/>"));
    }

    #[test]
    fn round_trips_both_formats() {
        for f in [Format::Json, Format::Xml] {
            let i = sample();
            let back = decode_instance(encode_instance(&i, f).as_bytes(), f).unwrap();
            assert_eq!(back, i, "{f:?}");
            let apps = Applications {
                versions_delta: 7,
                apps_hashcode: "UP_1_".into(),
                applications: vec![Application { name: "TETHER".into(), instances: vec![i.clone()] }],
            };
            let back = decode_applications(encode_applications(&apps, f).as_bytes(), f).unwrap();
            assert_eq!(back, apps, "{f:?}");
            let app = &apps.applications[0];
            assert_eq!(&decode_application(encode_application(app, f).as_bytes(), f).unwrap(), app);
        }
    }

    #[test]
    fn lenient_json_input() {
        let body = br#"{"instance":{"instanceId":"a","hostName":"h","app":"svc","ipAddr":"1.1.1.1",
            "status":"","overriddenstatus":"","port":{"$":"8080","@enabled":true},
            "countryId":"1","dataCenterInfo":{"@class":"x","name":"MyOwn"},
            "metadata":{"@class":"java.util.Collections$EmptyMap","n":5},
            "lastDirtyTimestamp":"12","leaseInfo":{"durationInSecs":"3"}}}"#;
        let i = decode_instance(body, Format::Json).unwrap();
        assert_eq!(i.app, "SVC");
        assert_eq!(i.status, InstanceStatus::Unknown);
        assert_eq!(i.port, PortInfo { port: 8080, enabled: true });
        assert_eq!(i.metadata.get("n").map(String::as_str), Some("5"));
        assert!(!i.metadata.contains_key("@class"));
        assert_eq!(i.last_dirty_timestamp, 12);
        assert_eq!(i.lease_info.duration_in_secs, 3);
        assert_eq!(i.lease_info.renewal_interval_in_secs, 30);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(matches!(decode_instance(b"{", Format::Json), Err(DecodeError::Json(_))));
        assert!(matches!(decode_instance(b"<instance><a></instance>", Format::Xml), Err(DecodeError::Xml(_))));
        assert!(matches!(decode_instance(b"<other/>", Format::Xml), Err(DecodeError::UnexpectedRoot { .. })));
        assert!(matches!(
            decode_instance(br#"{"instance":{"port":{"$":70000}}}"#, Format::Json),
            Err(DecodeError::InvalidField { field: "port", .. })
        ));
        let deep = "<instance>".to_string() + &"<a>".repeat(40) + &"</a>".repeat(40) + "</instance>";
        assert_eq!(decode_instance(deep.as_bytes(), Format::Xml), Err(DecodeError::TooDeep));
        assert!(matches!(
            decode_instance(b"<!DOCTYPE x [<!ENTITY e \"boom\">]><instance>&e;</instance>", Format::Xml),
            Err(DecodeError::Xml(_))
        ));
        assert!(decode_instance(&[0xff, 0xfe], Format::Xml).is_err());
    }

    #[test]
    fn format_selection() {
        assert_eq!(Format::from_accept(None), Format::Xml);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Xml);
        assert_eq!(Format::from_accept(Some("application/json")), Format::Json);
        assert_eq!(Format::of_body(Some("application/json; charset=utf-8"), b"<x/>"), Some(Format::Json));
        assert_eq!(Format::of_body(Some("text/xml"), b"{}"), Some(Format::Xml));
        assert_eq!(Format::of_body(None, b"  \n{\"a\":1}"), Some(Format::Json));
        assert_eq!(Format::of_body(Some("application/octet-stream"), b" <instance/>"), Some(Format::Xml));
        assert_eq!(Format::of_body(None, b"hello"), None);
    }
}
