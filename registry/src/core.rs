//! The registry itself, sans I/O: no tokio, no clock. Every operation takes `now_ms`
//! (milliseconds since the Unix epoch, as in Eureka's timestamps), so tests drive leases,
//! expiry and delta retention with an injected clock.
//!
//! Semantics follow Eureka's `AbstractInstanceRegistry`:
//! - instances are keyed by application (upper-cased) and [`InstanceInfo::id`];
//! - a registration whose `lastDirtyTimestamp` is older than the stored copy's keeps the stored
//!   copy (the newer record wins), and always starts a new lease;
//! - status overrides (`PUT .../status`) live in a map keyed by instance id that survives
//!   re-registration and is dropped by cancel/eviction; the effective status follows Eureka's
//!   rules (a client's DOWN/STARTING is believed; an override wins; otherwise a client's
//!   non-replicated re-registration keeps an existing UP/OUT_OF_SERVICE);
//! - a renewal of an unknown instance, of one whose status became UNKNOWN (override deleted), or
//!   with a client `lastDirtyTimestamp` newer than ours fails, telling the client to re-register;
//! - a lease expires when `now_ms >= lastRenewalTimestamp + duration` (duration from the
//!   instance's `leaseInfo.durationInSecs`, else the configured default). Eureka's own `Lease`
//!   adds the duration twice (a known Eureka bug); this registry does not.
//! - changes (ADDED / MODIFIED / DELETED) are kept for the delta retention window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use crate::model::{
    apps_hashcode, ActionType, Application, Applications, InstanceInfo, InstanceStatus, ValidationError,
    DEFAULT_RENEWAL_INTERVAL_SECS,
};

/// At most this many change records are kept, whatever the retention window.
const MAX_CHANGES: usize = 100_000;

/// Settings of the core registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Lease duration for instances whose `leaseInfo.durationInSecs` is 0 or absent (ms).
    pub default_lease_duration_ms: u64,
    /// How long changes stay in the delta (ms). Eureka's default: 180 s.
    pub delta_retention_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self { default_lease_duration_ms: 90_000, delta_retention_ms: 180_000 }
    }
}

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such instance (HTTP 404).
    #[error("instance {app}/{id} is not registered")]
    NotFound {
        /// Application (upper-cased).
        app: String,
        /// Instance id.
        id: String,
    },
    /// The instance is known but the caller must register it again (HTTP 404 on renew).
    #[error("instance {app}/{id} must re-register: {reason}")]
    ReRegister {
        /// Application (upper-cased).
        app: String,
        /// Instance id.
        id: String,
        /// Why.
        reason: ReRegisterReason,
    },
    /// The registration is malformed (HTTP 400).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Why a renewal asks the client to register again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReRegisterReason {
    /// The effective status is UNKNOWN (its override was deleted without a new status).
    StatusUnknown,
    /// The client's `lastDirtyTimestamp` is newer than the registry's copy.
    ClientCopyNewer {
        /// Our `lastDirtyTimestamp`.
        ours: u64,
        /// The client's.
        theirs: u64,
    },
}

impl fmt::Display for ReRegisterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StatusUnknown => f.write_str("status is UNKNOWN (override removed)"),
            Self::ClientCopyNewer { ours, theirs } => {
                write!(f, "client's lastDirtyTimestamp {theirs} is newer than the registry's {ours}")
            }
        }
    }
}

/// Parameters of a renewal (`PUT apps/{app}/{id}?status=..&lastDirtyTimestamp=..&overriddenstatus=..`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenewRequest {
    /// The client's `lastDirtyTimestamp`, if sent.
    pub last_dirty_timestamp: Option<u64>,
    /// The `overriddenstatus` a replicating peer sent, if any.
    pub overridden_status: Option<InstanceStatus>,
    /// Whether this renewal was replicated from a peer.
    pub is_replication: bool,
}

/// A successful renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Lease renewed.
    Renewed,
    /// Lease renewed, and a replicating peer sent an older copy: here is ours, for the peer to
    /// take (Eureka answers 200 with the instance in this case).
    OurCopyNewer(Box<InstanceInfo>),
}

#[derive(Debug, Clone)]
struct Entry {
    info: InstanceInfo,
    lease_ms: u64,
}

#[derive(Debug, Clone)]
struct Change {
    at_ms: u64,
    app: String,
    id: String,
    snapshot: InstanceInfo,
}

/// The in-memory registry. See the module documentation for its semantics.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    settings: RegistrySettings,
    apps: BTreeMap<String, BTreeMap<String, Entry>>,
    overrides: HashMap<String, InstanceStatus>,
    changes: VecDeque<Change>,
    version: u64,
}

fn app_key(app: &str) -> String {
    app.to_uppercase()
}

impl Registry {
    /// An empty registry.
    pub fn new(settings: RegistrySettings) -> Self {
        Self { settings, ..Default::default() }
    }

    /// The settings this registry runs with.
    pub fn settings(&self) -> RegistrySettings {
        self.settings
    }

    /// Number of registered instances.
    pub fn len(&self) -> usize {
        self.apps.values().map(BTreeMap::len).sum()
    }

    /// Whether no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of changes so far (`versions__delta` of the delta listing).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn entry_mut(&mut self, app: &str, id: &str) -> Result<&mut Entry, RegistryError> {
        let app = app_key(app);
        match self.apps.get_mut(&app).and_then(|m| m.get_mut(id)) {
            Some(e) => Ok(e),
            None => Err(RegistryError::NotFound { app, id: id.into() }),
        }
    }

    fn record(&mut self, info: &InstanceInfo, now_ms: u64) {
        self.version += 1;
        self.changes.push_back(Change {
            at_ms: now_ms,
            app: info.app.clone(),
            id: info.instance_id.clone(),
            snapshot: info.clone(),
        });
        while self.changes.len() > MAX_CHANGES {
            self.changes.pop_front();
        }
        self.prune(now_ms);
    }

    /// Drops change records older than the retention window.
    fn prune(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.settings.delta_retention_ms);
        while self.changes.front().is_some_and(|c| c.at_ms < cutoff) {
            self.changes.pop_front();
        }
    }

    /// Eureka's status rules (`DownOrStartingRule`, `OverrideExistsRule`, `LeaseExistsRule`,
    /// then the instance's own status).
    fn effective_status(
        &self,
        info: &InstanceInfo,
        existing: Option<&InstanceInfo>,
        is_replication: bool,
    ) -> InstanceStatus {
        if !matches!(info.status, InstanceStatus::Up | InstanceStatus::OutOfService) {
            return info.status;
        }
        if let Some(o) = self.overrides.get(info.id()) {
            return *o;
        }
        if !is_replication {
            if let Some(ex) = existing {
                if matches!(ex.status, InstanceStatus::Up | InstanceStatus::OutOfService) {
                    return ex.status;
                }
            }
        }
        info.status
    }

    /// Registers (or re-registers) an instance; returns the stored record.
    ///
    /// `is_replication` is true for a registration replicated from a peer (it changes only the
    /// status rules, as in Eureka).
    pub fn register(
        &mut self,
        mut info: InstanceInfo,
        is_replication: bool,
        now_ms: u64,
    ) -> Result<InstanceInfo, RegistryError> {
        let app = app_key(&info.app);
        info.app = app.clone();
        info.validate_registration(&app)?;
        let id = info.id().to_string();
        info.instance_id = id.clone();
        if info.last_dirty_timestamp == 0 {
            info.last_dirty_timestamp = now_ms;
        }
        let existing = self.apps.get(&app).and_then(|m| m.get(&id)).map(|e| e.info.clone());
        if let Some(ex) = &existing {
            if ex.last_dirty_timestamp > info.last_dirty_timestamp {
                // The stored copy is newer: keep it (but still start a new lease), as Eureka does.
                info = ex.clone();
            }
        }
        if info.lease_info.renewal_interval_in_secs == 0 {
            info.lease_info.renewal_interval_in_secs = DEFAULT_RENEWAL_INTERVAL_SECS;
        }
        let lease_ms = if info.lease_info.duration_in_secs > 0 {
            u64::from(info.lease_info.duration_in_secs) * 1000
        } else {
            info.lease_info.duration_in_secs =
                u32::try_from(self.settings.default_lease_duration_ms.div_ceil(1000)).unwrap_or(u32::MAX);
            self.settings.default_lease_duration_ms
        };
        info.lease_info.registration_timestamp = now_ms;
        info.lease_info.last_renewal_timestamp = now_ms;
        info.lease_info.eviction_timestamp = 0;
        info.lease_info.service_up_timestamp = existing.as_ref().map_or(0, |e| e.lease_info.service_up_timestamp);

        // Initial transfer of an override (a peer's registration carries it).
        if info.overridden_status != InstanceStatus::Unknown {
            self.overrides.entry(id.clone()).or_insert(info.overridden_status);
        }
        if let Some(o) = self.overrides.get(&id) {
            info.overridden_status = *o;
        }
        info.status = self.effective_status(&info, existing.as_ref(), is_replication);
        if info.status == InstanceStatus::Up && info.lease_info.service_up_timestamp == 0 {
            info.lease_info.service_up_timestamp = now_ms;
        }
        info.action_type = Some(ActionType::Added);
        info.last_updated_timestamp = now_ms;
        self.apps.entry(app).or_default().insert(id, Entry { info: info.clone(), lease_ms });
        self.record(&info, now_ms);
        Ok(info)
    }

    /// Renews a lease (a heartbeat).
    pub fn renew(&mut self, app: &str, id: &str, req: RenewRequest, now_ms: u64) -> Result<Renewed, RegistryError> {
        let app = app_key(app);
        let Some(current) = self.apps.get(&app).and_then(|m| m.get(id)).map(|e| e.info.clone()) else {
            return Err(RegistryError::NotFound { app, id: id.into() });
        };
        let status = self.effective_status(&current, Some(&current), req.is_replication);
        if status == InstanceStatus::Unknown {
            return Err(RegistryError::ReRegister { app, id: id.into(), reason: ReRegisterReason::StatusUnknown });
        }
        let entry = self.entry_mut(&app, id)?;
        entry.info.lease_info.last_renewal_timestamp = now_ms;
        if entry.info.status != status {
            entry.info.status = status;
            entry.info.action_type = Some(ActionType::Modified);
            entry.info.last_updated_timestamp = now_ms;
            let snapshot = entry.info.clone();
            self.record(&snapshot, now_ms);
        }
        let ours = current.last_dirty_timestamp;
        match req.last_dirty_timestamp {
            Some(theirs) if theirs > ours => {
                if req.is_replication {
                    if let Some(o) = req.overridden_status.filter(|o| *o != InstanceStatus::Unknown) {
                        self.store_override(&app, id, o);
                    }
                }
                Err(RegistryError::ReRegister {
                    app,
                    id: id.into(),
                    reason: ReRegisterReason::ClientCopyNewer { ours, theirs },
                })
            }
            Some(theirs) if theirs < ours && req.is_replication => {
                Ok(Renewed::OurCopyNewer(Box::new(self.entry_mut(&app, id)?.info.clone())))
            }
            _ => Ok(Renewed::Renewed),
        }
    }

    /// Cancels a lease (the instance leaves); returns the removed record. Also drops its status
    /// override, as Eureka does.
    pub fn cancel(&mut self, app: &str, id: &str, now_ms: u64) -> Result<InstanceInfo, RegistryError> {
        let app = app_key(app);
        self.overrides.remove(id);
        let removed = self.apps.get_mut(&app).and_then(|m| m.remove(id));
        if self.apps.get(&app).is_some_and(BTreeMap::is_empty) {
            self.apps.remove(&app);
        }
        let Some(mut entry) = removed else {
            return Err(RegistryError::NotFound { app, id: id.into() });
        };
        entry.info.action_type = Some(ActionType::Deleted);
        entry.info.last_updated_timestamp = now_ms;
        entry.info.lease_info.eviction_timestamp = now_ms;
        self.record(&entry.info, now_ms);
        Ok(entry.info)
    }

    /// Sets a status override (`PUT .../status?value=OUT_OF_SERVICE`), renewing the lease. As in
    /// Eureka, nothing changes when the instance already has that status.
    pub fn set_status_override(
        &mut self,
        app: &str,
        id: &str,
        status: InstanceStatus,
        last_dirty_timestamp: Option<u64>,
        now_ms: u64,
    ) -> Result<InstanceInfo, RegistryError> {
        let entry = self.entry_mut(app, id)?;
        entry.info.lease_info.last_renewal_timestamp = now_ms;
        if entry.info.status == status {
            return Ok(entry.info.clone());
        }
        if status == InstanceStatus::Up && entry.info.lease_info.service_up_timestamp == 0 {
            entry.info.lease_info.service_up_timestamp = now_ms;
        }
        entry.info.overridden_status = status;
        entry.info.status = status;
        if let Some(d) = last_dirty_timestamp {
            entry.info.last_dirty_timestamp = entry.info.last_dirty_timestamp.max(d);
        }
        entry.info.action_type = Some(ActionType::Modified);
        entry.info.last_updated_timestamp = now_ms;
        let snapshot = entry.info.clone();
        self.overrides.insert(id.to_string(), status);
        self.record(&snapshot, now_ms);
        Ok(snapshot)
    }

    /// Removes a status override (`DELETE .../status[?value=..]`), renewing the lease. The status
    /// becomes `new_status` (UNKNOWN when not given, so the next renewal asks the instance to
    /// re-register with its own status, as in Eureka).
    pub fn delete_status_override(
        &mut self,
        app: &str,
        id: &str,
        new_status: Option<InstanceStatus>,
        last_dirty_timestamp: Option<u64>,
        now_ms: u64,
    ) -> Result<InstanceInfo, RegistryError> {
        let had_override = self.overrides.contains_key(id);
        let entry = self.entry_mut(app, id)?;
        entry.info.lease_info.last_renewal_timestamp = now_ms;
        if !had_override {
            return Ok(entry.info.clone());
        }
        entry.info.overridden_status = InstanceStatus::Unknown;
        entry.info.status = new_status.unwrap_or(InstanceStatus::Unknown);
        if let Some(d) = last_dirty_timestamp {
            entry.info.last_dirty_timestamp = entry.info.last_dirty_timestamp.max(d);
        }
        entry.info.action_type = Some(ActionType::Modified);
        entry.info.last_updated_timestamp = now_ms;
        let snapshot = entry.info.clone();
        self.overrides.remove(id);
        self.record(&snapshot, now_ms);
        Ok(snapshot)
    }

    /// Stores a status override for an instance (used when a peer's copy carries one).
    pub fn store_override(&mut self, app: &str, id: &str, status: InstanceStatus) {
        self.overrides.insert(id.to_string(), status);
        if let Ok(e) = self.entry_mut(app, id) {
            e.info.overridden_status = status;
        }
    }

    /// Adds or replaces metadata entries (`PUT .../metadata?k=v`); returns the updated record.
    pub fn update_metadata(
        &mut self,
        app: &str,
        id: &str,
        entries: impl IntoIterator<Item = (String, String)>,
        now_ms: u64,
    ) -> Result<InstanceInfo, RegistryError> {
        let entries: Vec<(String, String)> = entries.into_iter().collect();
        if let Some((k, _)) = entries.iter().find(|(k, _)| !crate::model::is_xml_name(k)) {
            return Err(ValidationError::InvalidMetadataKey(k.clone()).into());
        }
        let entry = self.entry_mut(app, id)?;
        entry.info.metadata.extend(entries);
        entry.info.action_type = Some(ActionType::Modified);
        entry.info.last_updated_timestamp = now_ms;
        let snapshot = entry.info.clone();
        self.record(&snapshot, now_ms);
        Ok(snapshot)
    }

    /// Evicts every instance whose lease has expired (`now_ms >= lastRenewal + duration`) and
    /// returns them. Their overrides are dropped, and each gets a DELETED delta entry.
    pub fn evict_expired(&mut self, now_ms: u64) -> Vec<InstanceInfo> {
        let expired: Vec<(String, String)> = self
            .apps
            .iter()
            .flat_map(|(app, m)| {
                m.iter()
                    .filter(|(_, e)| now_ms >= e.info.lease_info.last_renewal_timestamp.saturating_add(e.lease_ms))
                    .map(|(id, _)| (app.clone(), id.clone()))
            })
            .collect();
        let evicted: Vec<InstanceInfo> =
            expired.into_iter().filter_map(|(app, id)| self.cancel(&app, &id, now_ms).ok()).collect();
        self.prune(now_ms);
        evicted
    }

    /// When the next lease expires (ms since epoch), if any instance is registered.
    pub fn next_expiry(&self) -> Option<u64> {
        self.apps
            .values()
            .flat_map(BTreeMap::values)
            .map(|e| e.info.lease_info.last_renewal_timestamp.saturating_add(e.lease_ms))
            .min()
    }

    /// The reconcile hash code of the whole registry.
    pub fn apps_hashcode(&self) -> String {
        apps_hashcode(self.apps.values().flat_map(BTreeMap::values).map(|e| e.info.status))
    }

    fn listing<'a>(&self, instances: impl Iterator<Item = &'a InstanceInfo>, versions_delta: i64) -> Applications {
        let mut by_app: BTreeMap<String, Vec<InstanceInfo>> = BTreeMap::new();
        for i in instances {
            by_app.entry(i.app.clone()).or_default().push(i.clone());
        }
        let applications: Vec<Application> =
            by_app.into_iter().map(|(name, instances)| Application { name, instances }).collect();
        let mut apps = Applications { versions_delta, apps_hashcode: String::new(), applications };
        apps.apps_hashcode = apps.reconcile_hashcode();
        apps
    }

    /// The full listing (`GET apps`): `versions__delta` 1, as Eureka.
    pub fn applications(&self) -> Applications {
        self.listing(self.apps.values().flat_map(BTreeMap::values).map(|e| &e.info), 1)
    }

    /// The changes of the last retention window (`GET apps/delta`): one entry per changed
    /// instance carrying its latest action (ADDED / MODIFIED with the current record, DELETED
    /// with the record as removed); `versions__delta` is the change counter and `apps__hashcode`
    /// that of the whole registry, so a client can check its merged copy.
    pub fn delta(&self, now_ms: u64) -> Applications {
        let cutoff = now_ms.saturating_sub(self.settings.delta_retention_ms);
        let mut latest: BTreeMap<(&str, &str), &Change> = BTreeMap::new();
        for c in self.changes.iter().filter(|c| c.at_ms >= cutoff) {
            latest.insert((c.app.as_str(), c.id.as_str()), c);
        }
        let infos: Vec<InstanceInfo> = latest
            .values()
            .map(|c| match self.apps.get(&c.app).and_then(|m| m.get(&c.id)) {
                Some(e) if c.snapshot.action_type != Some(ActionType::Deleted) => e.info.clone(),
                _ => c.snapshot.clone(),
            })
            .collect();
        let mut apps = self.listing(infos.iter(), i64::try_from(self.version).unwrap_or(i64::MAX));
        apps.apps_hashcode = self.apps_hashcode();
        apps
    }

    /// One application (`GET apps/{app}`), if it has instances.
    pub fn application(&self, app: &str) -> Option<Application> {
        let name = app_key(app);
        let m = self.apps.get(&name).filter(|m| !m.is_empty())?;
        Some(Application { name, instances: m.values().map(|e| e.info.clone()).collect() })
    }

    /// One instance (`GET apps/{app}/{id}`).
    pub fn instance(&self, app: &str, id: &str) -> Option<InstanceInfo> {
        self.apps.get(&app_key(app)).and_then(|m| m.get(id)).map(|e| e.info.clone())
    }

    /// An instance by id in any application (`GET instances/{id}`).
    pub fn instance_by_id(&self, id: &str) -> Option<InstanceInfo> {
        self.apps.values().find_map(|m| m.get(id)).map(|e| e.info.clone())
    }

    fn by_address(&self, address: &str, pick: impl Fn(&InstanceInfo) -> Option<&str>) -> Applications {
        let matches = |i: &&InstanceInfo| pick(i).is_some_and(|v| v.split(',').any(|a| a == address));
        self.listing(self.apps.values().flat_map(BTreeMap::values).map(|e| &e.info).filter(matches), 1)
    }

    /// Instances whose `vipAddress` (a comma-separated list) contains `vip` (`GET vips/{vip}`).
    pub fn by_vip(&self, vip: &str) -> Applications {
        self.by_address(vip, |i| i.vip_address.as_deref())
    }

    /// Instances whose `secureVipAddress` contains `svip` (`GET svips/{svip}`).
    pub fn by_svip(&self, svip: &str) -> Applications {
        self.by_address(svip, |i| i.secure_vip_address.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceStatus::*;

    const T0: u64 = 1_700_000_000_000;

    fn reg() -> Registry {
        Registry::new(RegistrySettings::default())
    }

    fn inst(id: &str) -> InstanceInfo {
        let mut i = InstanceInfo::new("tether", id, &format!("{id}.example"), "10.0.0.1", 7443);
        i.last_dirty_timestamp = T0;
        i
    }

    fn status_of(r: &Registry, id: &str) -> InstanceStatus {
        r.instance("TETHER", id).map(|i| i.status).unwrap_or(Unknown)
    }

    #[test]
    fn register_fills_lease_and_lists() {
        let mut r = reg();
        let mut i = inst("n1");
        i.app = "tether".into();
        let stored = r.register(i, false, T0 + 5).unwrap();
        assert_eq!(stored.app, "TETHER");
        assert_eq!(stored.action_type, Some(ActionType::Added));
        assert_eq!(stored.lease_info.registration_timestamp, T0 + 5);
        assert_eq!(stored.lease_info.last_renewal_timestamp, T0 + 5);
        assert_eq!(stored.lease_info.service_up_timestamp, T0 + 5);
        assert_eq!(stored.last_updated_timestamp, T0 + 5);
        let apps = r.applications();
        assert_eq!(apps.versions_delta, 1);
        assert_eq!(apps.apps_hashcode, "UP_1_");
        assert_eq!(apps.application("tether").map(|a| a.instances.len()), Some(1));
        assert_eq!(r.instance("tether", "n1").map(|i| i.instance_id), Some("n1".into()));
        assert_eq!(r.instance_by_id("n1").map(|i| i.app), Some("TETHER".into()));
    }

    #[test]
    fn register_rejects_invalid() {
        let mut r = reg();
        let mut i = inst("n1");
        i.ip_addr.clear();
        assert_eq!(r.register(i, false, T0), Err(RegistryError::Invalid(ValidationError::MissingIpAddr)));
        assert!(r.is_empty());
    }

    #[test]
    fn missing_instance_id_falls_back_to_host_name() {
        let mut r = reg();
        let mut i = inst("");
        i.host_name = "gw7.example".into();
        let stored = r.register(i, false, T0).unwrap();
        assert_eq!(stored.instance_id, "gw7.example");
        assert!(r.instance("TETHER", "gw7.example").is_some());
    }

    #[test]
    fn renew_moves_last_renewal_and_unknown_is_not_found() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        assert_eq!(r.renew("tether", "n1", RenewRequest::default(), T0 + 30_000), Ok(Renewed::Renewed));
        let i = r.instance("TETHER", "n1").unwrap();
        assert_eq!(i.lease_info.last_renewal_timestamp, T0 + 30_000);
        assert_eq!(i.lease_info.registration_timestamp, T0);
        assert_eq!(
            r.renew("TETHER", "nope", RenewRequest::default(), T0),
            Err(RegistryError::NotFound { app: "TETHER".into(), id: "nope".into() })
        );
        assert_eq!(
            r.renew("OTHER", "n1", RenewRequest::default(), T0),
            Err(RegistryError::NotFound { app: "OTHER".into(), id: "n1".into() })
        );
    }

    #[test]
    fn renew_with_newer_client_copy_asks_for_re_registration() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let req = RenewRequest { last_dirty_timestamp: Some(T0 + 1), ..Default::default() };
        assert!(matches!(
            r.renew("TETHER", "n1", req, T0 + 10),
            Err(RegistryError::ReRegister { reason: ReRegisterReason::ClientCopyNewer { .. }, .. })
        ));
        // The lease was renewed all the same (Eureka renews before checking).
        assert_eq!(r.instance("TETHER", "n1").unwrap().lease_info.last_renewal_timestamp, T0 + 10);
        let same = RenewRequest { last_dirty_timestamp: Some(T0), ..Default::default() };
        assert_eq!(r.renew("TETHER", "n1", same, T0 + 20), Ok(Renewed::Renewed));
        // An older copy from a client: fine. From a peer: here is ours.
        let older = RenewRequest { last_dirty_timestamp: Some(T0 - 1), ..Default::default() };
        assert_eq!(r.renew("TETHER", "n1", older, T0 + 30), Ok(Renewed::Renewed));
        let older_peer = RenewRequest { is_replication: true, ..older };
        assert!(matches!(r.renew("TETHER", "n1", older_peer, T0 + 40), Ok(Renewed::OurCopyNewer(_))));
    }

    #[test]
    fn lease_expires_at_exactly_its_duration() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        assert!(r.evict_expired(T0 + 89_999).is_empty());
        assert_eq!(r.next_expiry(), Some(T0 + 90_000));
        let evicted = r.evict_expired(T0 + 90_000);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].action_type, Some(ActionType::Deleted));
        assert_eq!(evicted[0].lease_info.eviction_timestamp, T0 + 90_000);
        assert!(r.is_empty());
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn renewal_extends_the_lease() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        r.renew("TETHER", "n1", RenewRequest::default(), T0 + 60_000).unwrap();
        assert!(r.evict_expired(T0 + 149_999).is_empty());
        assert_eq!(r.evict_expired(T0 + 150_000).len(), 1);
    }

    #[test]
    fn lease_duration_comes_from_lease_info_or_the_configured_default() {
        let mut r = Registry::new(RegistrySettings { default_lease_duration_ms: 5_000, ..Default::default() });
        let mut short = inst("short");
        short.lease_info.duration_in_secs = 3;
        r.register(short, false, T0).unwrap();
        let mut dflt = inst("dflt");
        dflt.lease_info.duration_in_secs = 0;
        let stored = r.register(dflt, false, T0).unwrap();
        assert_eq!(stored.lease_info.duration_in_secs, 5);
        assert!(r.evict_expired(T0 + 2_999).is_empty());
        assert_eq!(r.evict_expired(T0 + 3_000).iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), ["short"]);
        assert!(r.evict_expired(T0 + 4_999).is_empty());
        assert_eq!(r.evict_expired(T0 + 5_000).len(), 1);
    }

    #[test]
    fn cancel_removes_and_reports_deleted() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let gone = r.cancel("tether", "n1", T0 + 1).unwrap();
        assert_eq!(gone.action_type, Some(ActionType::Deleted));
        assert!(r.instance("TETHER", "n1").is_none());
        assert!(r.application("TETHER").is_none());
        assert_eq!(r.applications().applications.len(), 0);
        assert_eq!(r.apps_hashcode(), "");
        assert!(matches!(r.cancel("TETHER", "n1", T0 + 2), Err(RegistryError::NotFound { .. })));
        let d = r.delta(T0 + 3);
        let entry = d.instances().find(|i| i.instance_id == "n1").unwrap();
        assert_eq!(entry.action_type, Some(ActionType::Deleted));
    }

    #[test]
    fn delta_keeps_changes_for_the_retention_window() {
        let mut r = Registry::new(RegistrySettings { delta_retention_ms: 180_000, ..Default::default() });
        r.register(inst("a"), false, T0).unwrap();
        r.register(inst("b"), false, T0 + 10_000).unwrap();
        r.set_status_override("TETHER", "b", OutOfService, None, T0 + 20_000).unwrap();
        r.register(inst("c"), false, T0 + 30_000).unwrap();
        r.cancel("TETHER", "c", T0 + 40_000).unwrap();
        let d = r.delta(T0 + 40_000);
        let actions: BTreeMap<String, ActionType> =
            d.instances().map(|i| (i.instance_id.clone(), i.action_type.unwrap())).collect();
        assert_eq!(
            actions,
            BTreeMap::from([
                ("a".into(), ActionType::Added),
                ("b".into(), ActionType::Modified),
                ("c".into(), ActionType::Deleted)
            ])
        );
        assert_eq!(d.versions_delta, 5);
        assert_eq!(d.apps_hashcode, "OUT_OF_SERVICE_1_UP_1_");
        // "a" was registered at T0: still in the delta at exactly T0 + retention, gone 1 ms later.
        assert!(r.delta(T0 + 180_000).instances().any(|i| i.instance_id == "a"));
        assert!(!r.delta(T0 + 180_001).instances().any(|i| i.instance_id == "a"));
        assert!(r.delta(T0 + 180_001).instances().any(|i| i.instance_id == "b"));
        assert_eq!(r.delta(T0 + 220_001).applications.len(), 0);
        // An empty delta still carries the whole registry's hash code and the version.
        assert_eq!(r.delta(T0 + 220_001).apps_hashcode, "OUT_OF_SERVICE_1_UP_1_");
        assert_eq!(r.delta(T0 + 220_001).versions_delta, 5);
    }

    #[test]
    fn hashcode_counts_statuses_sorted_by_name() {
        let mut r = reg();
        r.register(inst("a"), false, T0).unwrap();
        r.register(inst("b"), false, T0).unwrap();
        let mut down = inst("c");
        down.status = Down;
        down.app = "other".into();
        r.register(down, false, T0).unwrap();
        assert_eq!(r.apps_hashcode(), "DOWN_1_UP_2_");
        assert_eq!(r.applications().apps_hashcode, "DOWN_1_UP_2_");
        assert_eq!(r.delta(T0).apps_hashcode, "DOWN_1_UP_2_");
    }

    #[test]
    fn override_survives_renewals_and_re_registration_but_not_cancel() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let s = r.set_status_override("TETHER", "n1", OutOfService, None, T0 + 1).unwrap();
        assert_eq!((s.status, s.overridden_status), (OutOfService, OutOfService));
        r.renew("TETHER", "n1", RenewRequest::default(), T0 + 2).unwrap();
        assert_eq!(status_of(&r, "n1"), OutOfService);
        // The client restarts and registers UP: the override wins.
        let mut again = inst("n1");
        again.last_dirty_timestamp = T0 + 3;
        let s = r.register(again, false, T0 + 3).unwrap();
        assert_eq!((s.status, s.overridden_status), (OutOfService, OutOfService));
        // A client reporting DOWN is believed even with an override.
        let mut down = inst("n1");
        down.status = Down;
        down.last_dirty_timestamp = T0 + 4;
        assert_eq!(r.register(down, false, T0 + 4).unwrap().status, Down);
        // Cancel drops the override: a fresh registration is UP again.
        r.cancel("TETHER", "n1", T0 + 5).unwrap();
        assert_eq!(r.register(inst("n1"), false, T0 + 6).unwrap().status, Up);
    }

    #[test]
    fn deleting_the_override_makes_the_next_renewal_ask_for_re_registration() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        r.set_status_override("TETHER", "n1", OutOfService, None, T0 + 1).unwrap();
        let s = r.delete_status_override("TETHER", "n1", None, None, T0 + 2).unwrap();
        assert_eq!((s.status, s.overridden_status), (Unknown, Unknown));
        assert!(matches!(
            r.renew("TETHER", "n1", RenewRequest::default(), T0 + 3),
            Err(RegistryError::ReRegister { reason: ReRegisterReason::StatusUnknown, .. })
        ));
        let mut again = inst("n1");
        again.last_dirty_timestamp = T0 + 4;
        assert_eq!(r.register(again, false, T0 + 4).unwrap().status, Up);
        // With ?value=UP the status is set directly.
        r.set_status_override("TETHER", "n1", OutOfService, None, T0 + 5).unwrap();
        assert_eq!(r.delete_status_override("TETHER", "n1", Some(Up), None, T0 + 6).unwrap().status, Up);
        assert_eq!(r.renew("TETHER", "n1", RenewRequest::default(), T0 + 7), Ok(Renewed::Renewed));
    }

    #[test]
    fn a_client_cannot_take_itself_out_of_service_by_re_registering() {
        // Eureka's LeaseExistsRule: a non-replicated re-registration keeps an existing UP.
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let mut oos = inst("n1");
        oos.status = OutOfService;
        oos.last_dirty_timestamp = T0 + 1;
        assert_eq!(r.register(oos.clone(), false, T0 + 1).unwrap().status, Up);
        // A peer's replicated copy is taken as is.
        oos.last_dirty_timestamp = T0 + 2;
        assert_eq!(r.register(oos, true, T0 + 2).unwrap().status, OutOfService);
    }

    #[test]
    fn replicated_registration_transfers_the_override() {
        let mut r = reg();
        let mut i = inst("n1");
        i.status = OutOfService;
        i.overridden_status = OutOfService;
        r.register(i, true, T0).unwrap();
        // The client itself then registers UP: the transferred override wins.
        let mut up = inst("n1");
        up.last_dirty_timestamp = T0 + 1;
        let s = r.register(up, false, T0 + 1).unwrap();
        assert_eq!((s.status, s.overridden_status), (OutOfService, OutOfService));
    }

    #[test]
    fn older_registration_keeps_the_newer_stored_copy_but_starts_a_new_lease() {
        let mut r = reg();
        let mut newer = inst("n1");
        newer.last_dirty_timestamp = T0 + 100;
        newer.metadata.insert("v".into(), "2".into());
        r.register(newer, false, T0).unwrap();
        let mut older = inst("n1");
        older.last_dirty_timestamp = T0 + 50;
        older.metadata.insert("v".into(), "1".into());
        let s = r.register(older, false, T0 + 1000).unwrap();
        assert_eq!(s.metadata.get("v").map(String::as_str), Some("2"));
        assert_eq!(s.lease_info.registration_timestamp, T0 + 1000);
        assert_eq!(s.lease_info.service_up_timestamp, T0);
    }

    #[test]
    fn metadata_update_is_a_modification() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let v = r.version();
        let s = r.update_metadata("TETHER", "n1", [("sessions".to_string(), "42".to_string())], T0 + 1).unwrap();
        assert_eq!(s.metadata.get("sessions").map(String::as_str), Some("42"));
        assert_eq!(s.action_type, Some(ActionType::Modified));
        assert_eq!(r.version(), v + 1);
        assert!(matches!(
            r.update_metadata("TETHER", "n1", [("bad key".to_string(), "x".to_string())], T0 + 2),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(r.update_metadata("TETHER", "zz", [], T0), Err(RegistryError::NotFound { .. })));
    }

    #[test]
    fn vip_lookup_matches_any_address_in_the_list() {
        let mut r = reg();
        let mut a = inst("a");
        a.vip_address = Some("tether,gateway".into());
        a.secure_vip_address = Some("tether-secure".into());
        r.register(a, false, T0).unwrap();
        let mut b = inst("b");
        b.vip_address = Some("other".into());
        r.register(b, false, T0).unwrap();
        let by = |apps: Applications| apps.instances().map(|i| i.instance_id.clone()).collect::<Vec<_>>();
        assert_eq!(by(r.by_vip("gateway")), ["a"]);
        assert_eq!(by(r.by_vip("tether")), ["a"]);
        assert_eq!(by(r.by_svip("tether-secure")), ["a"]);
        assert!(by(r.by_vip("teth")).is_empty());
        assert_eq!(r.by_vip("other").apps_hashcode, "UP_1_");
    }

    #[test]
    fn status_change_on_the_same_status_is_a_no_op() {
        let mut r = reg();
        r.register(inst("n1"), false, T0).unwrap();
        let v = r.version();
        let s = r.set_status_override("TETHER", "n1", Up, None, T0 + 1).unwrap();
        assert_eq!(s.overridden_status, Unknown);
        assert_eq!(r.version(), v);
        assert!(matches!(r.set_status_override("TETHER", "x", Up, None, T0), Err(RegistryError::NotFound { .. })));
        assert!(matches!(r.delete_status_override("TETHER", "x", None, None, T0), Err(RegistryError::NotFound { .. })));
    }
}
