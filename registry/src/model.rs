//! Eureka's data model: an instance (`InstanceInfo`), an application and the full listing
//! (`Applications`), with the field names and defaults Eureka uses.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// `dataCenterInfo` class of every data centre except Amazon.
pub const DEFAULT_DATA_CENTER_CLASS: &str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";
/// `dataCenterInfo` class of Amazon.
pub const AMAZON_DATA_CENTER_CLASS: &str = "com.netflix.appinfo.AmazonInfo";
/// Eureka's default renewal interval (`leaseInfo.renewalIntervalInSecs`).
pub const DEFAULT_RENEWAL_INTERVAL_SECS: u32 = 30;
/// Eureka's default lease duration (`leaseInfo.durationInSecs`).
pub const DEFAULT_LEASE_DURATION_SECS: u32 = 90;

/// The status of an instance, as Eureka spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceStatus {
    /// Ready to receive traffic.
    Up,
    /// Do not send traffic: the instance's health check failed.
    Down,
    /// Starting up: do not send traffic yet.
    Starting,
    /// Intentionally taken out of traffic (drain).
    OutOfService,
    /// Unknown (also the "no override" value of `overriddenStatus`).
    Unknown,
}

impl InstanceStatus {
    /// Every status, in Eureka's declaration order.
    pub const ALL: [InstanceStatus; 5] = [Self::Up, Self::Down, Self::Starting, Self::OutOfService, Self::Unknown];

    /// The wire name: `UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`, `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Starting => "STARTING",
            Self::OutOfService => "OUT_OF_SERVICE",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Eureka's lenient `InstanceStatus.toEnum`: case-insensitive, anything unrecognised
    /// (including an empty string) is `UNKNOWN`.
    pub fn from_lenient(s: &str) -> Self {
        s.parse().unwrap_or(Self::Unknown)
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of Eureka's instance statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance status {0:?} (expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN)")]
pub struct UnknownStatus(pub String);

impl FromStr for InstanceStatus {
    type Err = UnknownStatus;

    /// Strict, case-insensitive parse (used for `?value=` of a status change).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownStatus(s.into()))
    }
}

/// What happened to an instance, as reported in listings and deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionType {
    /// Registered (or re-registered).
    Added,
    /// Status or metadata changed.
    Modified,
    /// Cancelled or evicted.
    Deleted,
}

impl ActionType {
    /// The wire name: `ADDED`, `MODIFIED`, `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }

    /// Parses a wire name (case-insensitive); `None` when unrecognised.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Added, Self::Modified, Self::Deleted].into_iter().find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port and whether it is enabled (`"port":{"$":7443,"@enabled":"true"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// The port number.
    pub port: u16,
    /// Whether clients may use it.
    pub enabled: bool,
}

/// Where the instance runs (`dataCenterInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCenterInfo {
    /// The Java class Eureka names (`@class` in JSON, `class` attribute in XML).
    pub class: String,
    /// `MyOwn`, `Amazon` or `Netflix`; `None` when the registrant sent none (rejected at
    /// registration with "Missing dataCenterInfo Name").
    pub name: Option<String>,
    /// Amazon's metadata (e.g. `instance-id`, `availability-zone`); empty elsewhere.
    pub metadata: BTreeMap<String, String>,
}

impl DataCenterInfo {
    /// The usual non-cloud data centre: `MyOwn` with Eureka's default class.
    pub fn my_own() -> Self {
        Self { class: DEFAULT_DATA_CENTER_CLASS.into(), name: Some("MyOwn".into()), metadata: BTreeMap::new() }
    }
}

/// Lease settings and timestamps (`leaseInfo`). Timestamps are milliseconds since the Unix epoch;
/// the registry fills them in, a registrant sends zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    /// How often the instance renews, in seconds.
    pub renewal_interval_in_secs: u32,
    /// How long a lease lasts without renewal, in seconds (0 = the registry's default).
    pub duration_in_secs: u32,
    /// When the lease was (last) registered.
    pub registration_timestamp: u64,
    /// When the lease was last renewed.
    pub last_renewal_timestamp: u64,
    /// When the lease was cancelled or evicted (0 while alive).
    pub eviction_timestamp: u64,
    /// When the instance was first seen UP.
    pub service_up_timestamp: u64,
}

impl Default for LeaseInfo {
    fn default() -> Self {
        Self {
            renewal_interval_in_secs: DEFAULT_RENEWAL_INTERVAL_SECS,
            duration_in_secs: DEFAULT_LEASE_DURATION_SECS,
            registration_timestamp: 0,
            last_renewal_timestamp: 0,
            eviction_timestamp: 0,
            service_up_timestamp: 0,
        }
    }
}

/// One registered instance: Eureka's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Unique id of the instance (see [`InstanceInfo::id`] for Eureka's fallback).
    pub instance_id: String,
    /// Application name; Eureka upper-cases it.
    pub app: String,
    /// Application group, if any.
    pub app_group_name: Option<String>,
    /// Host name.
    pub host_name: String,
    /// IP address.
    pub ip_addr: String,
    /// Virtual (non-secure) address(es), comma-separated.
    pub vip_address: Option<String>,
    /// Secure virtual address(es), comma-separated.
    pub secure_vip_address: Option<String>,
    /// Effective status (after the registry applied overrides).
    pub status: InstanceStatus,
    /// Status override set through the status API (`UNKNOWN` = none).
    pub overridden_status: InstanceStatus,
    /// Plain port.
    pub port: PortInfo,
    /// Secure port.
    pub secure_port: PortInfo,
    /// Deprecated country id (1 = US), kept for compatibility.
    pub country_id: u32,
    /// Data centre; `None` only on a registration that lacks it.
    pub data_center_info: Option<DataCenterInfo>,
    /// Lease settings and timestamps.
    pub lease_info: LeaseInfo,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
    /// Home page URL.
    pub home_page_url: Option<String>,
    /// Status page URL.
    pub status_page_url: Option<String>,
    /// Health check URL.
    pub health_check_url: Option<String>,
    /// Secure health check URL.
    pub secure_health_check_url: Option<String>,
    /// Whether this instance is itself a discovery server.
    pub is_coordinating_discovery_server: bool,
    /// When the registry last changed this record (ms since epoch).
    pub last_updated_timestamp: u64,
    /// When the instance last changed its own record (ms since epoch); the newer copy wins.
    pub last_dirty_timestamp: u64,
    /// Last action on this record.
    pub action_type: Option<ActionType>,
    /// AWS auto-scaling group name, if any.
    pub asg_name: Option<String>,
}

impl InstanceInfo {
    /// A minimal UP instance of `app` with Eureka's defaults: `MyOwn` data centre, plain `port`
    /// enabled, secure port 7002 disabled, VIP addresses = the lower-cased app name, default lease.
    pub fn new(app: &str, instance_id: &str, host_name: &str, ip_addr: &str, port: u16) -> Self {
        let vip = app.to_lowercase();
        Self {
            instance_id: instance_id.into(),
            app: app.to_uppercase(),
            app_group_name: None,
            host_name: host_name.into(),
            ip_addr: ip_addr.into(),
            vip_address: Some(vip.clone()),
            secure_vip_address: Some(vip),
            status: InstanceStatus::Up,
            overridden_status: InstanceStatus::Unknown,
            port: PortInfo { port, enabled: true },
            secure_port: PortInfo { port: 7002, enabled: false },
            country_id: 1,
            data_center_info: Some(DataCenterInfo::my_own()),
            lease_info: LeaseInfo::default(),
            metadata: BTreeMap::new(),
            home_page_url: None,
            status_page_url: None,
            health_check_url: None,
            secure_health_check_url: None,
            is_coordinating_discovery_server: false,
            last_updated_timestamp: 0,
            last_dirty_timestamp: 0,
            action_type: None,
            asg_name: None,
        }
    }

    /// The key of the instance, as Eureka's `InstanceInfo.getId()`: `instanceId` when set,
    /// else an Amazon data centre's `instance-id`, else `hostName`.
    pub fn id(&self) -> &str {
        if !self.instance_id.is_empty() {
            return &self.instance_id;
        }
        if let Some(dc) = &self.data_center_info {
            if dc.name.as_deref() == Some("Amazon") {
                if let Some(id) = dc.metadata.get("instance-id").filter(|s| !s.is_empty()) {
                    return id;
                }
            }
        }
        &self.host_name
    }

    /// Eureka's registration checks (`ApplicationResource.addInstance`), in Eureka's order and
    /// with its messages. `path_app` is the application named in the URL.
    pub fn validate_registration(&self, path_app: &str) -> Result<(), ValidationError> {
        let path_app = path_app.to_uppercase();
        if self.id().is_empty() {
            return Err(ValidationError::MissingInstanceId);
        }
        if self.host_name.is_empty() {
            return Err(ValidationError::MissingHostName);
        }
        if self.ip_addr.is_empty() {
            return Err(ValidationError::MissingIpAddr);
        }
        if self.app.is_empty() {
            return Err(ValidationError::MissingAppName);
        }
        let body_app = self.app.to_uppercase();
        if body_app != path_app {
            return Err(ValidationError::MismatchedAppName { expected: path_app, actual: body_app });
        }
        match &self.data_center_info {
            None => return Err(ValidationError::MissingDataCenterInfo),
            Some(dc) if dc.name.as_deref().is_none_or(str::is_empty) => {
                return Err(ValidationError::MissingDataCenterInfoName)
            }
            Some(_) => {}
        }
        if let Some(key) = self.metadata.keys().find(|k| !is_xml_name(k)) {
            return Err(ValidationError::InvalidMetadataKey(key.clone()));
        }
        Ok(())
    }
}

/// Why a registration was refused (answered with 400 and this text, as Eureka does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Neither `instanceId` nor a fallback (`hostName`) is set.
    #[error("Missing instanceId")]
    MissingInstanceId,
    /// `hostName` is empty.
    #[error("Missing hostname")]
    MissingHostName,
    /// `ipAddr` is empty.
    #[error("Missing ip address")]
    MissingIpAddr,
    /// `app` is empty.
    #[error("Missing appName")]
    MissingAppName,
    /// The body's `app` differs from the application in the URL.
    #[error("Mismatched appName, expecting {expected} but was {actual}")]
    MismatchedAppName {
        /// Application named in the URL (upper-cased).
        expected: String,
        /// Application named in the body (upper-cased).
        actual: String,
    },
    /// No `dataCenterInfo`.
    #[error("Missing dataCenterInfo")]
    MissingDataCenterInfo,
    /// `dataCenterInfo` without a `name`.
    #[error("Missing dataCenterInfo Name")]
    MissingDataCenterInfoName,
    /// A metadata key that cannot be an XML element name (metadata is served as `<key>value</key>`).
    #[error("Invalid metadata key {0:?}: metadata keys must be XML names")]
    InvalidMetadataKey(String),
}

/// Whether `s` can be an XML element name (so metadata `<key>value</key>` stays well-formed).
/// ASCII letters, digits, `_`, `-`, `.` and `:` plus any non-ASCII character; not starting with a
/// digit, `-` or `.`; not starting with `xml` in any case.
pub fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    if !(first.is_ascii_alphabetic() || first == '_' || first == ':' || !first.is_ascii()) {
        return false;
    }
    if s.len() >= 3 && s[..3].eq_ignore_ascii_case("xml") {
        return false;
    }
    chars.all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') || (!c.is_ascii() && !c.is_whitespace())
    })
}

/// One application and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Application {
    /// Application name (upper-case).
    pub name: String,
    /// Its instances.
    pub instances: Vec<InstanceInfo>,
}

/// A listing (`<applications>`): the full registry, a delta, or the instances behind a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applications {
    /// `versions__delta`: 1 for full listings (as Eureka), the change counter for deltas.
    pub versions_delta: i64,
    /// `apps__hashcode`: see [`apps_hashcode`].
    pub apps_hashcode: String,
    /// The applications.
    pub applications: Vec<Application>,
}

impl Applications {
    /// The application named `name` (case-insensitive).
    pub fn application(&self, name: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// Every instance of every application.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceInfo> {
        self.applications.iter().flat_map(|a| a.instances.iter())
    }

    /// The reconcile hash code of these applications (see [`apps_hashcode`]).
    pub fn reconcile_hashcode(&self) -> String {
        apps_hashcode(self.instances().map(|i| i.status))
    }
}

/// Eureka's `apps__hashcode` (`Applications.getReconcileHashCode`): for each status that occurs,
/// sorted by status name, `NAME_count_`; e.g. `DOWN_1_UP_2_`. Empty registry: empty string.
pub fn apps_hashcode(statuses: impl IntoIterator<Item = InstanceStatus>) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    let mut out = String::new();
    for (name, n) in counts {
        out.push_str(name);
        out.push('_');
        out.push_str(&n.to_string());
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        assert_eq!("out_of_service".parse::<InstanceStatus>(), Ok(InstanceStatus::OutOfService));
        assert!("bogus".parse::<InstanceStatus>().is_err());
        assert_eq!(InstanceStatus::from_lenient(""), InstanceStatus::Unknown);
        assert_eq!(InstanceStatus::from_lenient("Up"), InstanceStatus::Up);
    }

    #[test]
    fn id_falls_back_like_eureka() {
        let mut i = InstanceInfo::new("x", "", "host-1", "10.0.0.1", 80);
        assert_eq!(i.id(), "host-1");
        i.data_center_info = Some(DataCenterInfo {
            class: AMAZON_DATA_CENTER_CLASS.into(),
            name: Some("Amazon".into()),
            metadata: [("instance-id".to_string(), "i-123".to_string())].into(),
        });
        assert_eq!(i.id(), "i-123");
        i.instance_id = "explicit".into();
        assert_eq!(i.id(), "explicit");
    }

    #[test]
    fn validation_messages_and_order() {
        let ok = InstanceInfo::new("tether", "n1", "h", "1.2.3.4", 1);
        assert_eq!(ok.validate_registration("TETHER"), Ok(()));
        let mut i = ok.clone();
        i.instance_id.clear();
        i.host_name.clear();
        assert_eq!(i.validate_registration("TETHER").map_err(|e| e.to_string()), Err("Missing instanceId".into()));
        let mut i = ok.clone();
        i.host_name.clear();
        assert_eq!(i.validate_registration("TETHER").map_err(|e| e.to_string()), Err("Missing hostname".into()));
        let mut i = ok.clone();
        i.ip_addr.clear();
        assert_eq!(i.validate_registration("TETHER").map_err(|e| e.to_string()), Err("Missing ip address".into()));
        let mut i = ok.clone();
        i.app.clear();
        assert_eq!(i.validate_registration("TETHER").map_err(|e| e.to_string()), Err("Missing appName".into()));
        assert_eq!(
            ok.validate_registration("other").map_err(|e| e.to_string()),
            Err("Mismatched appName, expecting OTHER but was TETHER".into())
        );
        let mut i = ok.clone();
        i.data_center_info = None;
        assert_eq!(i.validate_registration("tether").map_err(|e| e.to_string()), Err("Missing dataCenterInfo".into()));
        let mut i = ok.clone();
        i.data_center_info = Some(DataCenterInfo { name: None, ..DataCenterInfo::my_own() });
        assert_eq!(
            i.validate_registration("tether").map_err(|e| e.to_string()),
            Err("Missing dataCenterInfo Name".into())
        );
        let mut i = ok;
        i.metadata.insert("1bad".into(), "v".into());
        assert!(matches!(i.validate_registration("tether"), Err(ValidationError::InvalidMetadataKey(_))));
    }

    #[test]
    fn xml_names() {
        for good in ["quic", "management.port", "node_id", "a-b", "zone", "_x", "k:v"] {
            assert!(is_xml_name(good), "{good}");
        }
        for bad in ["", "1a", "-a", ".a", "a b", "a<b", "xmlfoo", "a&b", "a\"b"] {
            assert!(!is_xml_name(bad), "{bad}");
        }
    }

    #[test]
    fn hashcode_sorted_by_status_name() {
        use InstanceStatus::*;
        assert_eq!(apps_hashcode([Up, Down, Up]), "DOWN_1_UP_2_");
        assert_eq!(apps_hashcode([Up, OutOfService, Starting, Unknown]), "OUT_OF_SERVICE_1_STARTING_1_UNKNOWN_1_UP_1_");
        assert_eq!(apps_hashcode([]), "");
    }
}
